"""Running a stage from the command line: options, logging, and what an error looks like.

``python -m pipeline <stage>`` (also installed as ``pipeline``) and ``python -m
pipeline.<layer>.<stage>`` both come here. A :class:`~pipeline.shared.errors.UserError` (bad input,
params or data) and a file-system error (full disk, read-only folder) are one line
and exit code 2; anything else is a bug: its traceback is shown (in full with
``-v``) and the exit code is 1.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import traceback
from pathlib import Path

# stage name -> (module, one-line help)
STAGES = {
    "mnist": ("pipeline.data.mnist", "export the MNIST reference dataset to PNG folders"),
    "prepare": ("pipeline.stages.prepare", "ingest, audit, preprocess and split a labeled image collection"),
    "train": ("pipeline.stages.train", "train the model bundle (resumes after an interruption)"),
    "evaluate": ("pipeline.stages.evaluate", "metrics and report.html on the test split"),
    "report": ("pipeline.stages.report", "(re)write report.html for an evaluated run"),
    "suspects": ("pipeline.stages.suspects",
                 "find images whose label is probably wrong (cross-validation + confident learning)"),
    "compare": ("pipeline.stages.compare", "side-by-side table of several runs"),
    "preview": ("pipeline.stages.preview", "PNG grid per class: original -> preprocessed -> augmented"),
    "predict": ("pipeline.stages.predict", "batch-predict a folder of images (or one image, or a pixel CSV) to a CSV"),
    "serve": ("pipeline.faces.serve", "a local web page and JSON API to try a model (draw or drop images)"),
    "export": ("pipeline.stages.export", "export a model bundle as .keras, SavedModel, TFLite or ONNX"),
    "explain": ("pipeline.stages.explain",
                "why this label: the image as the model saw it with a saliency map, and the top-k"),
}

log = logging.getLogger("pipeline")


def _setup_logging(stage: str, run: str | None, verbose: bool) -> None:
    """Console logging, plus ``<run>/logs/<stage>.log`` when the stage has a run folder."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for old in [h for h in root.handlers if getattr(h, "_pipeline", False)]:  # an earlier main() in this process
        root.removeHandler(old)
        old.close()
    console = logging.StreamHandler(sys.stderr)
    console._pipeline = True  # type: ignore[attr-defined]
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
            handler._pipeline = True  # type: ignore[attr-defined]
            root.addHandler(handler)


def describe_os_error(exc: OSError) -> str:
    """One line for a file-system error: what happened, to which path, what to do."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device{where}; free some space and re-run (finished artifacts are intact)"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write or read{where}: {exc.strerror}; choose a writable folder (RUN=..., --out ...)"
    return f"file system error{where}: {exc.strerror or exc}"


def result(text: object) -> None:
    """A stage's final result (a table, a summary, the path it wrote) on stdout, for the user and for
    scripts that capture it. Progress, warnings and errors go to logging (stderr): this is the one
    place the package prints."""
    print(text, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """The ``pipeline`` parser with one sub-command per stage."""
    parser = argparse.ArgumentParser(prog="pipeline", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; full tracebacks")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (module, help_text) in STAGES.items():
        mod = importlib.import_module(module)
        mod.build_parser(sub.add_parser(name, help=help_text, description=mod.__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def _bug(exc: BaseException, verbose: bool) -> int:
    """Report an unexpected exception: the whole traceback with -v, else its last frames."""
    frames = traceback.format_exception(exc, limit=None if verbose else -3)
    sys.stderr.write("".join(frames))
    log.error("internal error (%s); this is a bug in the pipeline or a library%s", type(exc).__name__,
              "" if verbose else ": re-run with -v for the full traceback")
    return 1


def main(argv: list[str] | None = None) -> int:
    """Parse the stage and its options, run it, and map errors to exit codes (2: yours, 1: a bug)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out
    args = build_parser().parse_args(argv)
    mod = importlib.import_module(STAGES[args.stage][0])
    if hasattr(mod, "resolve_args"):
        mod.resolve_args(args)
    _setup_logging(getattr(args, "log_name", args.stage), getattr(args, "run", None), args.verbose)

    from pipeline.shared.errors import UserError
    try:
        return mod.main(args)
    except UserError as exc:
        log.debug("details", exc_info=True)
        log.error("%s", exc)
        return 2
    except OSError as exc:  # a full disk, a read-only or unreadable folder: say which, no traceback
        log.debug("details", exc_info=True)
        log.error("%s", describe_os_error(exc))
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; finished artifacts are intact, re-run to continue")
        return 130
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: show where it happened
        return _bug(exc, args.verbose)


def run_module(stage: str) -> int:
    """``python -m pipeline.<layer>.<stage> ARGS`` runs like ``python -m pipeline <stage> ARGS``."""
    return main([stage, *sys.argv[1:]])
