"""Serve: a local web page and JSON API to try a model bundle (FastAPI + uvicorn).

``GET /`` is one self-contained page (no external assets; works offline): draw on a
canvas or drop images, and see for each the image the model saw (after the bundle's
preprocessing), its label and the top-k probabilities as bars. ``POST /predict``
takes one or more images (multipart field ``files``) and returns label, confidence
and top-k per image; ``GET /health`` and ``GET /labels`` describe the model;
``/docs`` is the OpenAPI page (served from the installed ``swagger-ui-bundle``, so it
works offline too). Images are decoded in memory with the same code as
``pipeline predict``; nothing from a request is written anywhere but the web
framework's own temp files. Binds to 127.0.0.1 unless ``--host`` says otherwise.

The model runs in the bundle's runtime (``--runtime``: ONNX Runtime without TensorFlow when the
bundle has its ``model.onnx``); concurrent requests share model calls on the event loop
(:mod:`pipeline.faces.batching`); a plain upload skips the framework's form parsing
(:mod:`pipeline.faces.multipart`); ``/health`` says which runtime, the memory and the batching.
"""
# No `from __future__ import annotations` here: FastAPI reads the endpoint signatures'
# types at run time, and they are imported inside create_app (the CLI starts faster).
import argparse
import asyncio
import base64
import json
import logging
import dataclasses
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from pipeline.data.preprocess import inspect_image
from pipeline.faces.batching import MAX_IMAGES, WAIT_S, MicroBatcher
from pipeline.faces.multipart import files_of
from pipeline.model.explain import occlusion
from pipeline.model.infer import Output, Predictor, pin_blas_thread
from pipeline.model.rows import make_rows, rules_for
from pipeline.shared import bundle as bundle_mod
from pipeline.shared import cli
from pipeline.shared.errors import UserError
from pipeline.shared.params import PredictParams
from pipeline.shared.plots import overlay_png, png_bytes, view_u8

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("web") / "index.html"
INLINE_BYTES = 64 * 1024  # a request up to this size is decoded on the event loop, a larger one in a worker thread
SHORT_BYTES = 2**20  # a plain upload up to this size is read in memory on the short path (as the framework keeps
                     # up to 1 MB of a file in memory); a larger one goes to the framework, which spools it to disk


@dataclass(frozen=True)
class Limits:
    """What one request may carry."""

    max_files: int = 16
    max_bytes: int = 10 * 2**20  # per file

    def __post_init__(self) -> None:
        if self.max_files < 1 or self.max_bytes < 1:
            raise UserError("--max-files and --max-mb must be positive")

    @property
    def max_request(self) -> int:
        return self.max_files * (self.max_bytes + 4096) + 65536  # + multipart headers


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _view_png(arr: np.ndarray) -> str:
    """The model's input as a PNG data URL (what the page shows as "model saw")."""
    return _data_url(png_bytes(view_u8(arr)))


def _temperature(calibration: dict[str, Any]) -> dict[str, Any]:
    """/health's calibration: the temperature, or a multi-label model's one per label."""
    if calibration.get("temperatures"):
        return {"temperatures": calibration["temperatures"]}
    return {"temperature": calibration.get("temperature", 1.0)}


def memory_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak (VmRSS, VmHWM), in MB."""
    out = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                key = {"VmRSS": "rss_mb", "VmHWM": "peak_rss_mb"}.get(name)
                if key:
                    out[key] = round(int(value.split()[0]) / 1024, 1)  # kB
    except OSError:  # not Linux: the peak from the kernel's accounting
        import resource

        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


class Service:
    """The loaded bundle, its model in its runtime behind a micro-batcher, and the ``[predict]`` rules."""

    def __init__(self, model_dir: Path, limits: Limits, p: PredictParams | None = None,
                 wait_ms: float = WAIT_S * 1000, max_batch: int = MAX_IMAGES) -> None:
        p = p or PredictParams()
        self.bundle = bundle_mod.load(model_dir, p.runtime)
        self.model_dir = model_dir
        self.labels = self.bundle.labels
        self.cfg = self.bundle.preprocess
        self.limits = limits
        self.rules = rules_for(p, self.labels, self.bundle.calibration)
        pin_blas_thread()  # the model calls' novelty on one BLAS thread, set once (the loop is its only caller)
        runner = Predictor(self.bundle, max_batch)
        runner.warm_up()  # TensorFlow traces its graph now (one fixed batch shape), not on the first request
        # Concurrent requests share one model call, on the event loop: the model's only caller.
        self.batcher = MicroBatcher(runner, max_batch, wait_ms / 1000)

    @property
    def top_k(self) -> int:
        return self.rules.k

    @property
    def runtime(self) -> str:
        return self.bundle.runtime

    def decode(self, files: list[tuple[str, bytes]]) -> tuple[np.ndarray, list[str]]:
        """The model inputs of the readable files (in order) and each file's reason ("" when readable)."""
        arrays, reasons = [], []
        for _, data in files:
            arr, reason, _ = inspect_image(data, self.cfg)
            reasons.append(reason)
            if arr is not None:
                arrays.append(arr)
        return (np.stack(arrays) if arrays else np.zeros((0, *self.cfg.input_shape), np.float32)), reasons

    def answer(self, files: list[tuple[str, bytes]], x: np.ndarray, reasons: list[str], out: Output,
               top_k: int | None = None, explain: bool = False) -> list[dict[str, Any]]:
        """One result per file: the prediction row as the API answers it (label by the server's rules, as
        ``pipeline predict`` labels it), the model's view (and, with ``explain``, its occlusion map), or an
        error."""
        maps = [occlusion(self.batcher, x[j], int(out.probs[j].argmax())) for j in range(len(x))] if explain else []
        k = min(top_k, len(self.labels)) if top_k else self.rules.k
        rules = self.rules if k == self.rules.k else dataclasses.replace(self.rules, k=k)
        rows = make_rows([name for name, _ in files], reasons, out.probs, self.labels, rules, out.novelty,
                         out.familiar)
        results, j = [], 0
        for row in rows:
            result = row.as_http()
            if not row.error:
                result["input_png"] = _view_png(x[j])
                if explain:
                    result["saliency_png"] = _data_url(overlay_png(x[j], maps[j]))
                j += 1
            results.append(result)
        return results

    async def predict(self, files: list[tuple[str, bytes]], top_k: int | None = None,
                      explain: bool = False) -> list[dict[str, Any]]:
        """Decode, wait for the batcher's answer, then the results. A small upload (a few PNGs) is decoded
        on the event loop: faster than a hop to a worker thread and back, and the images are then ready
        for the model call at the end of this turn of the loop. A large one is decoded in a worker thread,
        and the batcher waits a little for it."""
        if sum(len(data) for _, data in files) <= INLINE_BYTES:
            x, reasons = self.decode(files)
            out = await self.batcher.run(x)
        else:
            self.batcher.announce()
            try:
                x, reasons = await asyncio.to_thread(self.decode, files)
            except BaseException:
                self.batcher.withdraw()
                raise
            out = await self.batcher.run(x, announced=True)
        if explain:  # the occlusion maps: many forward passes, through the batcher, from a worker thread
            return await asyncio.to_thread(self.answer, files, x, reasons, out, top_k, True)
        return self.answer(files, x, reasons, out, top_k)

    def health(self) -> dict[str, Any]:
        """What ``/health`` says besides the model: runtime, memory, batching."""
        return {"runtime": self.runtime, "memory": memory_mb(),
                "batching": {"max_images": self.batcher.max_images, "wait_ms": self.batcher.wait_s * 1000,
                             **self.batcher.stats.as_dict()}}


def _error(status: int, message: str, **extra: Any) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, **extra}, status_code=status)


def _add_error_handlers(app: Any, limits: Limits) -> None:
    """Every failure is a JSON ``{"error": ...}`` with a 4xx (or, for a bug, 500) status."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        if where == "body.files" and first.get("type") == "missing":
            return _error(422, "no images: send them as multipart field 'files'")
        if where.startswith("body.files"):  # a text value, or a part without a file name
            return _error(422, "the field 'files' must hold files: multipart parts, each with a file name")
        return _error(422, f"invalid request: {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Any:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> Any:  # never a bare 500 page
        log.exception("serve: request failed")
        return _error(500, f"internal error: {type(exc).__name__}")

    app.add_middleware(_SizeLimit, limits=limits)


class _SizeLimit:
    """Refuses an oversized upload before reading it (the browser sends its length): 411 without a
    Content-Length, 413 over the limits. A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (what
    ``@app.middleware`` makes) costs every request a task group and a stream, measured at a fifth of
    serve's time per request."""

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length")
            refusal = None
            if length is None:
                refusal = _error(411, "send a Content-Length header")
            elif not length.isdigit() or int(length) > self.limits.max_request:
                refusal = _error(413, f"request too large: at most {self.limits.max_files} images of "
                                      f"{self.limits.max_bytes // 2**20} MB each")
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _add_pages(app: Any, predictor: Service, model_dir: str | Path) -> None:
    """``/`` (the page), ``/health``, ``/labels`` and the offline ``/docs``."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    page, info, limits = PAGE.read_text(encoding="utf-8"), predictor.bundle.info, predictor.limits

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health", summary="Model and limits; 200 when the model is loaded")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": str(model_dir), "model_sha256": info.get("model_sha256"),
                **predictor.health(), "architecture": info.get("model"), "labels": len(predictor.labels),
                "novelty": predictor.bundle.novelty is not None,
                **_temperature(predictor.bundle.calibration or {}),
                "input_shape": list(predictor.cfg.input_shape), "top_k": predictor.top_k,
                "rules": {"threshold": predictor.rules.threshold, "unknown_label": predictor.rules.unknown,
                          "unfamiliar": predictor.rules.unfamiliar},
                "limits": {"max_files": limits.max_files, "max_bytes": limits.max_bytes}}

    @app.get("/labels", summary="The label names, by class index")
    async def labels() -> dict[str, list[str]]:
        return {"labels": predictor.labels}

    try:
        import swagger_ui_bundle

        app.mount("/docs-static", StaticFiles(directory=str(swagger_ui_bundle.swagger_ui_path)), name="docs-static")
        js, css = "/docs-static/swagger-ui-bundle.js", "/docs-static/swagger-ui.css"
    except ImportError:  # the CDN copy, as FastAPI's default
        js, css = ("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js",
                   "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="pipeline serve: API",
                                   swagger_js_url=js, swagger_css_url=css, swagger_favicon_url="data:,")


def _add_predict(app: Any, predictor: Service) -> None:
    """``POST /predict``: one or more images in, label/confidence/top-k/model's view per image out."""
    from fastapi import File, Query, UploadFile
    from fastapi.responses import JSONResponse

    limits = predictor.limits

    @app.post("/predict", summary="Predict one or more images",
              responses={413: {"description": "too many files, or a file or request too large"},
                         422: {"description": "no images, or none of them readable (each with its reason)"}})
    async def predict(files: list[UploadFile] = File(..., description="one or more image files"),
                      top_k: int | None = Query(None, ge=1, description="labels per image (default: the server's)"),
                      explain: bool = Query(False, description="add each image's occlusion map (saliency_png)")
                      ) -> Any:
        """Label, confidence, top-k and the model's view per image. Unreadable files get an
        ``error`` (the others are still predicted); 422 when none can be read."""
        batch = [(_base_name(f.filename), await f.read(limits.max_bytes + 1)) for f in files]
        status, answer = await _answer(predictor, batch, top_k, explain)
        return JSONResponse(answer, status_code=status)  # plain JSON values already: no encoder pass


def _base_name(name: str | None) -> str:
    """An upload's file name without any folder (``/`` or ``\\``, as a Windows browser may send it)."""
    if name and name != "." and not any(c in name for c in "/\\:"):
        return name  # a plain name (the usual case): what PureWindowsPath would give, a fiftieth of its time
    return PureWindowsPath(name or "").name or "upload"


async def _answer(predictor: Service, batch: list[tuple[str, bytes]], top_k: int | None,
                  explain: bool) -> tuple[int, dict[str, Any]]:
    """``POST /predict``'s status and JSON for the uploaded ``(file name, bytes)``, on either path."""
    limits = predictor.limits
    if len(batch) > limits.max_files:
        return 413, {"error": f"too many files: {len(batch)} (at most {limits.max_files} per request)"}
    for name, data in batch:
        if len(data) > limits.max_bytes:
            return 413, {"error": f"{name}: larger than {limits.max_bytes // 2**20} MB"}
    results = await predictor.predict(batch, min(top_k or predictor.top_k, len(predictor.labels)), explain)
    if all(r["error"] for r in results):
        return 422, {"error": "no readable image: " + "; ".join(f"{r['file']}: {r['error']}" for r in results),
                     "results": results}
    return 200, {"results": results}


class _PlainPredict:
    """``POST /predict`` with a plain upload (:mod:`pipeline.faces.multipart`) of at most
    :data:`SHORT_BYTES` (and within the request limit) and at most ``top_k`` in the query, answered
    without the framework's middleware, form parsing, validation and routing: the same :func:`_answer`,
    for a third less of the server's CPU a request (measured on 2 cores). Anything else goes on to the
    FastAPI app (a body already read is replayed), which answers it in full, with the same checks and
    messages."""

    def __init__(self, app: Any, predictor: Service) -> None:
        self.app, self.predictor = app, predictor

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope["headers"]) if scope["type"] == "http" else {}
        length = headers.get(b"content-length", b"")
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/predict" \
                or not length.isdigit() or int(length) > min(SHORT_BYTES, self.predictor.limits.max_request):
            await self.app(scope, receive, send)  # the framework's size limit answers 411 or 413
            return
        body = await _read_body(receive)
        if body is None:  # the client went away
            return
        top_k = _top_k(scope["query_string"])
        files = files_of(headers.get(b"content-type", b""), body) if top_k is not None else None
        if files is None:
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            status, answer = await _answer(self.predictor, [(_base_name(n), d) for n, d in files],
                                           top_k or None, False)
        except Exception as exc:  # noqa: BLE001 - as the app's own handler: a JSON 500, never a bare page
            log.exception("serve: request failed")
            status, answer = 500, {"error": f"internal error: {type(exc).__name__}"}
        data = json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})


async def _read_body(receive: Any) -> bytes | None:
    """A request's whole body (None when the client goes away first)."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _top_k(query: bytes) -> int | None:
    """``top_k`` of a query that has nothing else (0 when absent), None for anything the route must check."""
    if not query:
        return 0
    key, _, value = query.partition(b"=")
    return int(value) if key == b"top_k" and value.isdigit() and 0 < int(value) < 10**6 else None


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that gives ``body`` again, then waits on the connection (for its disconnect)."""
    sent = False

    async def again() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return again


def create_app(model_dir: str | Path, limits: Limits | None = None, p: PredictParams | None = None,
               wait_ms: float = WAIT_S * 1000, max_batch: int = MAX_IMAGES) -> Any:
    """The FastAPI app for one bundle (loaded once, here), labelling by the ``[predict]`` rules ``p``; its
    :class:`Service` is ``app.state.service``."""
    from fastapi import FastAPI

    limits = limits or Limits()
    predictor = Service(Path(model_dir), limits, p, wait_ms, max_batch)
    info = predictor.bundle.info
    app = FastAPI(title="pipeline serve", version=str(info.get("version", "")), docs_url=None, redoc_url=None,
                  description=f"Predictions of the model bundle `{model_dir}` ({info.get('model', '?')}, "
                              f"{len(predictor.labels)} labels). Up to {limits.max_files} images of "
                              f"{limits.max_bytes // 2**20} MB per request.")
    _add_error_handlers(app, limits)
    stack = app.build_middleware_stack  # the plain path goes first, before the framework's middleware
    app.build_middleware_stack = lambda: _PlainPredict(stack(), predictor)
    _add_pages(app, predictor, model_dir)
    _add_predict(app, predictor)
    app.state.service = predictor
    return app


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", type=Path, help="model bundle folder, or a run folder holding one (default: the "
                        "model of the last prepared run)")
    cli.add_run_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    cli.add_rule_options(parser)
    cli.add_params_option(parser, ": the [predict] rules, as `pipeline predict` applies them")
    parser.add_argument("--max-files", type=int, default=16, help="images per request (default: %(default)s)")
    parser.add_argument("--max-mb", type=float, default=10, help="MB per image (default: %(default)s)")
    cli.add_runtime_option(parser)
    parser.add_argument("--batch-wait-ms", type=float, default=WAIT_S * 1000,
                        help="how long a model call waits for requests on their way (uploads being decoded, "
                             "and as many requests as the last call had), to share it (default: %(default)s)")
    parser.add_argument("--max-batch", type=int, default=MAX_IMAGES,
                        help="images per model call at most (1: one request per call) (default: %(default)s)")
    return parser


def resolve_args(args: argparse.Namespace) -> None:
    cli.resolve_model(args, "serve")


def main(args: argparse.Namespace) -> int:
    """CLI: load the bundle, serve until Ctrl-C."""
    limits = Limits(args.max_files, int(args.max_mb * 2**20))
    p = cli.predict_params(args, Path(args.run).name if args.run else None)
    if args.batch_wait_ms < 0 or args.max_batch < 1:
        raise UserError(f"--batch-wait-ms must be >= 0 and --max-batch >= 1. Received: {args.batch_wait_ms}, "
                        f"{args.max_batch}")
    sock = cli.listen(args.host, args.port)  # a taken port is said before the model loads
    app = create_app(args.model, limits, p, args.batch_wait_ms, args.max_batch)
    service = app.state.service
    log.info("serve: read %s; the model runs in %s (%.0f MB resident); open http://%s:%d/ (API docs: /docs); "
             "Ctrl-C stops", args.model, service.runtime, memory_mb().get("rss_mb", 0), args.host, sock.getsockname()[1])
    cli.run_server(app, sock)
    return 0
