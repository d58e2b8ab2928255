"""The command line: ``pipeline <command> [options]`` (also ``python -m pipeline``), the registry of
commands. Each command is a module with ``build_parser(parser)``, ``main(args)`` and optionally
``resolve_args(args)`` (defaults that need the other options, e.g. the run folder);
:func:`pipeline.shared.cli.run` runs it with logging and maps its errors to exit codes.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from pipeline.shared import cli

# command -> (module, one-line help)
COMMANDS = {
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
    "review": ("pipeline.faces.review", "a local page to review and fix the run's data (and label new images)"),
    "export": ("pipeline.stages.export", "export a model bundle as .keras, SavedModel, TFLite or ONNX"),
    "explain": ("pipeline.stages.explain",
                "why this label: the image as the model saw it with a saliency map, and the top-k"),
}
# `pipeline evaluate` and `pipeline suspects` also (re)write the report when its inputs changed
FOLLOW_UP = {"evaluate": "report", "suspects": "report"}


def _command_in(argv: list[str]) -> str | None:
    """The command ``argv`` names (its first word that is not an option), if it is one."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``pipeline`` parser with one sub-command per command; only ``command``'s module is imported to
    build its options (every command's module when None): ``pipeline predict`` does not load the modules
    of training, the report or review, and starts faster."""
    parser = argparse.ArgumentParser(prog="pipeline", description="Train and apply an image classifier on your "
                                     "own labeled images.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name, help=help_text)  # listed in --help; not the one being parsed
            continue
        mod = importlib.import_module(module)
        mod.build_parser(sub.add_parser(name, help=help_text, description=mod.__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command and its options and run it (exit code 2: your input, 1: a bug)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ start-up chatter out
    argv = sys.argv[1:] if argv is None else argv
    command = _command_in(argv)
    args = build_parser(command or "").parse_args(argv)
    mod = importlib.import_module(COMMANDS[args.command][0])
    code = cli.run(mod.main, args, args.command, getattr(mod, "resolve_args", None))
    then = FOLLOW_UP.get(args.command)
    if code == 0 and then:
        follow = importlib.import_module(COMMANDS[then][0])
        code = cli.run(follow.main, argparse.Namespace(run=args.run, verbose=args.verbose, force=False,
                                                       follow_up=True), then)
    return code
