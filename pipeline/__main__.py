"""Command line: ``python -m pipeline <stage> [options]`` (also installed as ``pipeline``)."""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from pathlib import Path

# stage name -> (module, one-line help)
STAGES = {
    "mnist": ("pipeline.mnist", "export the MNIST reference dataset to PNG folders"),
    "prepare": ("pipeline.prepare", "ingest, audit, preprocess and split a labeled image collection"),
    "train": ("pipeline.train", "train the model bundle (resumes after an interruption)"),
    "evaluate": ("pipeline.evaluate", "metrics and report.html on the test split"),
    "report": ("pipeline.report", "(re)write report.html for an evaluated run"),
    "compare": ("pipeline.compare", "side-by-side table of several runs"),
    "preview": ("pipeline.preview", "PNG grid per class: original -> preprocessed -> augmented"),
    "predict": ("pipeline.predict", "batch-predict a folder of images (or one image, or a pixel CSV) to a CSV"),
    "serve": ("pipeline.serve", "a local web page and JSON API to try a model (draw or drop images)"),
    "export": ("pipeline.export", "export a model bundle as .keras, SavedModel or TFLite (optionally quantised)"),
}

log = logging.getLogger("pipeline")


def _setup_logging(stage: str, run: str | None, verbose: bool) -> None:
    """Console logging, plus ``<run>/logs/<stage>.log`` when the stage has a run folder."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(console)
    if run:
        logs = Path(run) / "logs"
        try:
            logs.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(logs / f"{stage}.log", encoding="utf-8")
        except OSError as exc:
            log.warning("cannot write log file in %s: %s", logs, exc)
        else:
            handler.setFormatter(fmt)
            root.addHandler(handler)


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system error: what happened, to which path, what to do."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device{where}; free some space and re-run (finished artifacts are intact)"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write or read{where}: {exc.strerror}; choose a writable folder (RUN=..., --out ...)"
    return f"file system error{where}: {exc.strerror or exc}"


def main(argv: list[str] | None = None) -> int:
    """Parse the stage and its options, run it, and map known errors to one clear line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (module, help_text) in STAGES.items():
        mod = importlib.import_module(module)
        mod.build_parser(sub.add_parser(name, help=help_text, description=mod.__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    mod = importlib.import_module(STAGES[args.stage][0])
    if hasattr(mod, "resolve_args"):
        mod.resolve_args(args)
    _setup_logging(getattr(args, "log_name", args.stage), getattr(args, "run", None), args.verbose)

    from .artifacts import StageError
    from .mnist import MnistError
    try:
        return mod.main(args)
    except (StageError, MnistError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:  # a full disk, a read-only or unreadable folder: say which, no traceback
        log.debug("details", exc_info=True)
        log.error("%s", describe_os_error(exc))
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; finished artifacts are intact, re-run to continue")
        return 130


if __name__ == "__main__":
    sys.exit(main())
