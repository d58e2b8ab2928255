"""Running a command: logging, what an error looks like, and the one place the package prints.

The command registry (``pipeline <command>``) lives in the faces layer; it parses the
options and hands the command's ``main`` to :func:`run`. A :class:`~pipeline.shared.errors.UserError`
(bad input, params or data) and a file-system error (full disk, read-only folder) are one line and
exit code 2; anything else is a bug: its traceback is shown (in full with ``-v``) and the exit
code is 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import shutil
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from pipeline.shared import bundle
from pipeline.shared import params as params_mod
from pipeline.shared import quiet, runfolder
from pipeline.shared.errors import Interrupted, UserError
from pipeline.shared.params import ENGINES, RUNTIMES, ClusterParams, PredictParams

log = logging.getLogger("pipeline")

# The training stack: what the light install (pip install '.[runtime]') leaves out. A command that needs one
# of them says so (exit code 2) instead of a traceback.
FULL_STACK = ("tensorflow", "keras", "sklearn", "scipy", "matplotlib", "tensorboard", "tf2onnx", "onnx")


def _console_logging(verbose: bool) -> None:
    """Console logging (stderr), replacing what an earlier command in this process set up."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for old in [h for h in root.handlers if getattr(h, "_pipeline", False)]:
        root.removeHandler(old)
        old.close()
    console = logging.StreamHandler(sys.stderr)
    console._pipeline = True  # type: ignore[attr-defined]
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(console)


def file_logging(stage: str, run: str | None) -> None:
    """Also log to ``<run>/logs/<stage>.log`` when the command has a run folder (appending)."""
    if not run:
        return
    logs = Path(run) / runfolder.LOGS
    try:
        logs.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(logs / f"{stage}.log", encoding="utf-8")
    except OSError as exc:
        log.warning("cannot write log file in %s: %s", logs, exc)
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler._pipeline = True  # type: ignore[attr-defined]
    logging.getLogger().addHandler(handler)


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


def _bug(exc: BaseException, verbose: bool) -> int:
    """Report an unexpected exception: the whole traceback with -v, else its last frames."""
    frames = traceback.format_exception(exc, limit=None if verbose else -3)
    sys.stderr.write("".join(frames))
    log.error("internal error (%s); this is a bug in the pipeline or a library%s", type(exc).__name__,
              "" if verbose else ": re-run with -v for the full traceback")
    return 1


def run(main: Callable[[argparse.Namespace], int], args: argparse.Namespace, log_name: str,
        resolve: Callable[[argparse.Namespace], None] | None = None) -> int:
    """Run a command: ``resolve`` fills in defaults (the run folder), then ``main`` runs with logging
    (also to ``<run>/logs/<log_name>.log`` when it has a run folder); errors become exit codes
    (2: yours, 1: a bug)."""
    _console_logging(args.verbose)
    quiet.install()
    _default_params(args)
    made = None  # a run folder this command made (for its log): gone again if the command fails on input
    try:
        if resolve is not None:
            resolve(args)
        run_folder = getattr(args, "run", None)
        made = Path(run_folder) if run_folder and not Path(run_folder).exists() else None
        file_logging(getattr(args, "log_name", None) or log_name, run_folder)
        code = main(args)
        made = None
        return code
    except UserError as exc:
        log.debug("details", exc_info=True)
        log.error("%s", exc)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in FULL_STACK:
            return _bug(exc, args.verbose)
        log.debug("details", exc_info=True)
        log.error("`pipeline %s` needs the full install (%s is not installed): %s; the light install "
                  "(pip install '.[runtime]') runs predict and serve", log_name, exc.name, bundle.FULL_INSTALL)
        return 2
    except OSError as exc:  # a full disk, a read-only or unreadable folder: say which, no traceback
        log.debug("details", exc_info=True)
        log.error("%s", describe_os_error(exc))
        return 2
    except KeyboardInterrupt as exc:
        if not isinstance(exc, Interrupted):  # else the stage said what is kept and how to go on
            log.error("interrupted; finished artifacts are intact, re-run to continue")
        return 130
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: show where it happened
        return _bug(exc, args.verbose)
    finally:
        if made is not None:
            _remove_if_only_logs(made)


def _remove_if_only_logs(run: Path) -> None:
    """A run folder that holds nothing but the failed command's log (a mistyped DATA=, data with one label):
    removed, so runs/ does not fill with dead runs; anything else in it stays."""
    if not run.is_dir() or any(p.name != runfolder.LOGS for p in run.iterdir()):
        return
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_pipeline", False)]:
        root.removeHandler(handler)
        handler.close()
    shutil.rmtree(run, ignore_errors=True)


# ---------------------------------------------------------------- the params file
def add_params_option(parser: argparse.ArgumentParser, what: str = "") -> None:
    """``--params``: the params file a command reads (``what``: the sections it reads, for the help)."""
    parser.add_argument("--params", default=params_mod.FILE,
                        help=f"params file{what} (default: {params_mod.FILE} when there is one here, else the "
                             "built-in defaults)")


def _default_params(args: argparse.Namespace) -> None:
    """No params file in the working folder (a command run outside the project): the built-in defaults,
    said once. A file given by another name must exist (params.load says so)."""
    if getattr(args, "params", None) == params_mod.FILE and not Path(params_mod.FILE).is_file():
        log.info("no %s in %s: the built-in defaults (--params FILE gives others)", params_mod.FILE, Path.cwd())
        args.params = None


# ---------------------------------------------------------------- the [predict] rules on the command line
def threshold_arg(text: str) -> float | str:
    """``--threshold``: a probability, or "auto"."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'--threshold takes a probability or "auto". Received: {text!r}') from None


def add_rule_options(parser: argparse.ArgumentParser) -> None:
    """The options that decide a prediction's label (``predict`` and ``serve`` take the same; each
    overrides the ``[predict]`` key of the same name)."""
    parser.add_argument("--top-k", type=int, help="top-k labels and probabilities per image (default 3)")
    parser.add_argument("--threshold", type=threshold_arg, metavar="P|auto",
                        help='confidence below this -> the unknown label; "auto": the cut reaching --target-precision '
                             "on the validation split")
    parser.add_argument("--target-precision", type=float, help="for --threshold auto (default 0.99)")
    parser.add_argument("--unfamiliar", choices=("flag", "unknown"),
                        help="images unlike the training data: flag (keep the label) or unknown (default: flag)")
    parser.add_argument("--unknown-label", help="the label for low-confidence predictions (default: unknown)")


def add_engine_option(parser: argparse.ArgumentParser) -> None:
    """``--engine``: where the stage's work runs (``prepare``, ``predict``, ``suspects``, ``train``)."""
    parser.add_argument("--engine", choices=ENGINES,
                        help="where the work runs: local (this machine's processes) or ray (a Ray cluster: "
                             "[cluster] ray_address, else $RAY_ADDRESS, else a local instance; default: [cluster] engine)")


def cluster_params(args: argparse.Namespace, run_name: str | None) -> ClusterParams:
    """``[cluster]`` of the params file, then ``--engine`` when given."""
    cp = params_mod.load(args.params, "cluster", run_name) if args.params else ClusterParams()
    return dataclasses.replace(cp, engine=args.engine) if getattr(args, "engine", None) else cp


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    """``--runtime``: what runs the model (``predict``, ``serve``, ``evaluate``, ``explain``)."""
    parser.add_argument("--runtime", choices=RUNTIMES,
                        help="what runs the model: onnx (ONNX Runtime, the bundle's model.onnx: no TensorFlow), "
                             "tensorflow, or auto (onnx when the bundle has it and onnxruntime is installed; "
                             "default: [predict] runtime)")


def predict_params(args: argparse.Namespace, run_name: str | None, extra: dict[str, object] | None = None
                   ) -> PredictParams:
    """``[predict]`` (with the run's overrides; the defaults when the default params file is absent: a
    bundle can be applied anywhere), then the options given on the command line."""
    p = params_mod.load(args.params, "predict", run_name)
    given = {"top_k": args.top_k, "threshold": args.threshold, "target_precision": args.target_precision,
             "unfamiliar": args.unfamiliar, "unknown_label": args.unknown_label,
             "runtime": getattr(args, "runtime", None), **(extra or {})}
    return dataclasses.replace(p, **{key: value for key, value in given.items() if value is not None})


# ---------------------------------------------------------------- which run
def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--run`` and ``--data``: which run folder a command works on (default: the last prepared run)."""
    parser.add_argument("--run", help="the run folder (default: the last one `prepare` wrote)")
    parser.add_argument("--data", help="or the dataset whose run folder to use (runs/<name of DATA>)")


def resolve_run(args: argparse.Namespace, stage: str) -> None:
    """Fill in ``args.run`` by the one default-run rule (:func:`pipeline.shared.runfolder.resolve_run`)."""
    args.run = str(runfolder.resolve_run(args.run, getattr(args, "data", None), stage))


def resolve_model(args: argparse.Namespace, stage: str) -> None:
    """Fill in ``args.model`` (the bundle: ``--model`` as given, a run folder's ``model/`` or the run's)
    and ``args.run`` (its run folder, None for a bundle outside one)."""
    if args.model is None:
        resolve_run(args, stage)
        args.model = bundle.locate(args.run)
    else:
        args.model = bundle.locate(args.model)
        args.run = str(args.model.parent) if runfolder.is_prepared(args.model.parent) else None


# ---------------------------------------------------------------- local web servers
def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for a web server (serve, review); a clear UserError when the port is
    taken or the address cannot be used (not uvicorn's traceback after the page's address was printed)."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a port: give one from 1 to 65535 (0: any free one)")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use (another server?): give another --port "
                            "(PORT=... with make)") from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_server(app: object, sock: socket.socket) -> None:
    """Serve ``app`` with uvicorn on the socket from :func:`listen` until Ctrl-C or ``kill``.

    Both end the same way, with "stopped": SIGINT also when the shell started the server in the
    background (which ignores it), and SIGTERM (uvicorn raises each again once it has shut down).
    """
    import uvicorn

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)
    # no proxy headers and no access log (warnings only): nothing here reads the client's address, and both cost
    # every request
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", proxy_headers=False, access_log=False)).run(
            sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C is how a server is stopped (uvicorn passes it on once it has shut down)
        log.info("stopped")
