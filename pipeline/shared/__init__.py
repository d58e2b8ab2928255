"""Shared: params, artifacts, the bundle, the run-folder catalog, errors, the CLI, compat shims,
plots. Imports no other layer."""
