"""Third-party chatter that tells a user nothing, kept off the console where it starts.

- TensorFlow's C++ start-up lines (absl's "All log messages before absl::InitializeLog()", the
  oneDNN and CPU-feature notices), printed to the process's stderr while ``tensorflow`` is imported:
  that import runs with stderr captured, and every other line it printed is passed on.
- TensorFlow's "triggered tf.function retracing" warnings (each new model traces its own graph, as
  ``suspects`` does once per fold) and its "Assets written to" lines: dropped from its logger.
- tf2onnx's progress lines ("Using opset", "Optimizing ONNX model") and its and its dependencies'
  ``FutureWarning``/``DeprecationWarning`` about their own internals.
- python-multipart's warning about a malformed upload (serve answers it with a 400 that says why).

:func:`install` is called once by the command runner; nothing here changes what any library computes.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
import warnings
from types import ModuleType
from typing import Any

NOISE = re.compile(r"absl::InitializeLog|oneDNN custom operations|cpu_feature_guard|rebuild TensorFlow with the "
                   r"appropriate compiler flags|To enable the following instructions")


class _Chatter(logging.Filter):
    """TensorFlow's retracing warnings, and the "Assets written to" line of a SavedModel it writes (a
    temporary folder's name: the command says where its output went)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "retracing" not in message and not message.startswith("Assets written to")


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader with the process's stderr (file descriptor 2) captured."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # resources, get_data, ...: the wrapped loader's own
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with tempfile.TemporaryFile() as captured:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(captured.fileno(), 2)
            try:
                self.loader.exec_module(module)
            finally:
                _imported()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                kept = [line for line in captured.read().decode("utf-8", "replace").splitlines()
                        if line.strip() and not NOISE.search(line)]
                if kept:
                    sys.stderr.write("\n".join(kept) + "\n")


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` like the other finders do, and wraps its loader. It stays until the import
    itself has run: a check whether TensorFlow is installed (``importlib.util.find_spec``) also asks it,
    and the import that follows must be quieted too."""

    def __init__(self) -> None:
        self._asking = False

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow" or self._asking:
            return None
        from importlib.util import find_spec

        self._asking = True  # the other finders answer the question asked here
        try:
            spec = find_spec(name)
        finally:
            self._asking = False
        if spec is not None and spec.loader is not None and not isinstance(spec.loader, _QuietLoader):
            spec.loader = _QuietLoader(spec.loader)
        return spec


def _imported() -> None:
    """TensorFlow is imported: the finder has done its job."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietFinder)]


def install() -> None:
    """Silence the chatter above for the rest of the process (idempotent)."""
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())
    tf_log = logging.getLogger("tensorflow")
    if not any(isinstance(f, _Chatter) for f in tf_log.filters):
        tf_log.addFilter(_Chatter())
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    # the multipart parser logs each malformed upload it raises on; serve answers it with a 400 saying why
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    for module in ("tf2onnx", "onnx", "keras", "tensorflow", "google.protobuf"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="tf2onnx")
    # a label in a script the figures' font lacks (CJK): drawn as boxes, and said in the report, not on the console
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
