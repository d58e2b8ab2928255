"""Shared: params, the run-folder and bundle catalog (with the novelty spec), artifacts, errors, running
a command, compat shims, env, plots. Imports no other layer and names no stage."""
