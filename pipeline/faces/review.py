"""Review: a local web page to fix a run's data, and its JSON API.

    pipeline review [--run RUN] [--images DIR] [--port N] [--host 127.0.0.1]

One queue per kind of problem the stages found (suspected label errors, copies and look-alikes,
outliers, the test images the model gets wrong, image-quality issues, and with ``--images`` new images
to label, :mod:`pipeline.faces.review_catalog`), shown as a grid of cards: keys per label, ``x``
exclude, ``k`` keep, ``z`` undo, arrows to move, shift-click or ``a`` to select many. Every decision is
on disk before the page shows it as saved (:mod:`pipeline.data.decisions`: ``review_log.jsonl``, then
``corrections.csv`` / ``labeled.csv``, which the next ``make prepare`` applies); the originals are
never touched.

The API (what the page itself uses): ``GET /api/queues``; ``GET /api/queue/{name}?offset=&limit=&label=&
suggested=``; ``POST /api/decide`` with ``{"id" (or "ids"), "action": "relabel"|"exclude"|"keep",
"label", "new_class"}``, answered 200 only once the decision is on disk; ``POST /api/undo``; and the
images ``GET /api/image/{id}`` (as a person sees the file) and ``GET /api/view/{id}`` (as the model does).
Requests name cards by id: the server reads paths only from its own lists, serves no file outside the
dataset and ``--images``, and binds 127.0.0.1 unless ``--host`` says otherwise.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoint signatures' types at run time.
import argparse
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.corrections import NEW
from pipeline.data.decisions import Decisions, new_class
from pipeline.data.ingest import nfc
from pipeline.data.inputs import original
from pipeline.faces import review_catalog
from pipeline.faces.review_catalog import TITLES, Catalog
from pipeline.shared import cli, plots
from pipeline.shared import runfolder as rf
from pipeline.shared.errors import UserError

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("web") / "review.html"
MAX_LIMIT = 500  # cards per page of a queue
LABEL_KEYS = "1234567890bcdefghijlmnopqrstuwy"  # a, k, v, x, z (and arrows) are the page's own keys


class Review:
    """The catalog and the decisions, behind one lock: decisions are made one at a time."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.decisions = Decisions(catalog.run)
        self._lock = threading.Lock()

    def decided(self) -> dict[str, dict[str, Any]]:
        return self.decisions.as_dict()

    def labels(self) -> list[str]:
        """The run's labels, then the new classes the decisions so far add (before a prepare makes them the run's)."""
        added = {d["label"][len(NEW):] for d in self.decided().values() if d["label"].startswith(NEW)}
        return self.catalog.labels + sorted(added - set(self.catalog.labels))

    def queues(self) -> list[dict[str, Any]]:
        done = self.decided()
        return [{"name": name, "title": TITLES[name], "count": len(cards),
                 "reviewed": sum(c["path"] in done for c in cards)} for name, cards in self.catalog.queues.items()]

    def page(self, name: str, offset: int, limit: int, label: str, suggested: str) -> dict[str, Any]:
        cards = self.catalog.queues.get(name)
        if cards is None:
            raise KeyError(name)
        if label:
            cards = [c for c in cards if c["label"] == label]
        if suggested:
            cards = [c for c in cards if c["suggested"] == suggested]
        done = self.decided()
        items = [{**c, "decision": done.get(c["path"])} for c in cards[offset:offset + limit]]
        return {"queue": name, "total": len(cards), "offset": offset, "items": items}

    def decide(self, ids: list[str], action: str, label: str, add_class: bool) -> list[dict[str, Any]]:
        """Record ``action`` for the cards ``ids`` (a new image's card: also for its near-duplicates)."""
        cards = [self.catalog.by_id[i] for i in ids]
        if action == "relabel" and label not in self.catalog.labels:
            if not add_class and label not in self.labels():  # a class a decision added already: as the run's
                raise UserError(f"label {label!r} is not a label of this run (labels: {self.catalog.labels[:20]}); "
                                'send "new_class": true to add a class')
            label = new_class(label)
        out = []
        with self._lock:
            for c in cards:
                for path in [c["path"], *c.get("members", [])]:
                    act = action if c["label"] else {"relabel": "label", "keep": "skip", "exclude": "skip"}[action]
                    if act == "relabel" and label == c["label"]:
                        act = "keep"
                    d = self.decisions.decide(c["id"], path, c["label"], act, label)
                    out.append({**d.__dict__})
        return out

    def undo(self) -> dict[str, Any] | None:
        with self._lock:
            d = self.decisions.undo()
        return None if d is None else {**d.__dict__}


THUMB_SIDE = 112  # px: the longer side of a card's image


def _png(arr: np.ndarray) -> bytes:
    if arr.dtype != np.uint8:
        return plots.thumbnail_png(plots.view_u8(arr), side=THUMB_SIDE)
    return plots.thumbnail_png(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr, side=THUMB_SIDE)


def _error(status: int, message: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def _add_errors(app: Any) -> None:
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        return _error(422, f"invalid request: {'.'.join(str(p) for p in first.get('loc', ()))}: "
                           f"{first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Any:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> Any:
        log.exception("review: request failed")
        return _error(500, f"internal error: {type(exc).__name__}")


async def _decision_body(request: Any, review: Review) -> tuple[list[str], str, str, bool]:
    """The decision a request asks for, checked (a 4xx reason otherwise)."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise _Bad(400, "malformed JSON")
    if not isinstance(body, dict):
        raise _Bad(400, "the body must be a JSON object")
    ids = body.get("ids") if "ids" in body else [body.get("id")]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        got = body.get("ids", body.get("id"))
        raise _Bad(422, 'give the card as "id" (or several as "ids"), its id a string as /api/queue gives it'
                   + (f". Received: {got!r}" if got is not None else ""))
    unknown = [i for i in ids if i not in review.catalog.by_id]
    if unknown:
        raise _Bad(404, f"unknown card id(s): {unknown[:5]}")
    action, label = body.get("action"), body.get("label") or ""
    if action not in ("relabel", "exclude", "keep"):
        raise _Bad(422, f'"action" must be relabel, exclude or keep. Received: {action!r}')
    if action == "relabel" and (not isinstance(label, str) or not label.strip()):
        raise _Bad(422, 'relabel needs a "label": a label name, as a string'
                   + (f". Received: {label!r}" if label != "" else ""))
    add = body.get("new_class", False)
    if not isinstance(add, bool):
        raise _Bad(422, f'"new_class" must be true or false. Received: {add!r}')
    return ids, action, nfc(label.strip()) if isinstance(label, str) else "", add


class _Bad(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _add_api(app: Any, review: Review) -> None:
    import asyncio

    from fastapi import Query, Request
    from fastapi.responses import Response

    @app.get("/api/queues", summary="The queues, their counts and how many are reviewed; the labels and their keys")
    async def queues() -> dict[str, Any]:
        labels = review.labels()
        return {"queues": review.queues(), "labels": labels, "keys": dict(zip(labels, LABEL_KEYS))}

    @app.get("/api/queue/{name}", summary="A page of a queue's cards, each with its decision if any")
    async def queue(name: str, offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=MAX_LIMIT),
                    label: str = "", suggested: str = "") -> Any:
        try:
            return review.page(name, offset, limit, label, suggested)
        except KeyError:
            return _error(404, f"no queue {name!r}; the queues: {list(review.catalog.queues)}")

    @app.post("/api/decide", summary="Decide about one card (or several): answered once the decision is on disk")
    async def decide(request: Request) -> Any:
        try:
            ids, action, label, add = await _decision_body(request, review)
            done = await asyncio.to_thread(review.decide, ids, action, label, add)
        except _Bad as exc:
            return _error(exc.status, str(exc))
        except UserError as exc:
            return _error(422, str(exc))
        return {"decisions": done, "queues": review.queues()}

    @app.post("/api/undo", summary="Undo the latest decision (also one made before a restart)")
    async def undo() -> Any:
        done = await asyncio.to_thread(review.undo)
        return {"undone": done, "queues": review.queues()}

    @app.get("/api/image/{card_id}", include_in_schema=False)
    async def image(card_id: str) -> Any:
        path = review.catalog.file(card_id)
        if path is None:
            return _error(404, "no such image")
        arr, why = await asyncio.to_thread(original, path, "auto", 2 * THUMB_SIDE)
        return Response(_png(arr), media_type="image/png") if arr is not None else _error(422, why)

    @app.get("/api/view/{card_id}", include_in_schema=False)
    async def view(card_id: str) -> Any:
        arr = review_catalog.model_view(review.catalog, card_id)
        return Response(_png(arr), media_type="image/png") if arr is not None else _error(404, "no model view")


def create_app(run: Path, images: Path | None = None) -> Any:
    """The review app for a prepared run (and a folder of new images)."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    review = Review(review_catalog.build(Path(run), images))
    app = FastAPI(title="pipeline review", docs_url=None, redoc_url=None,
                  description=f"Review the data of the run `{run}`; decisions go to its corrections.csv.")
    _add_errors(app)
    page = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    _add_api(app, review)
    app.state.review = review
    return app


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    cli.add_run_options(parser)
    parser.add_argument("--images", type=Path, help="a folder of new, unlabeled images to label (with the run's model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=8001, help="port (default: %(default)s)")
    cli.add_params_option(parser)
    return parser


def resolve_args(args: argparse.Namespace) -> None:
    cli.resolve_run(args, "review")


def main(args: argparse.Namespace) -> int:
    """CLI: build the queues, serve the page until Ctrl-C."""
    if args.images is not None and not args.images.is_dir():
        raise UserError(f"--images must be a folder of images. Received: {args.images}")
    sock = cli.listen(args.host, args.port)  # a taken port is said before the queues are built
    app = create_app(Path(args.run), args.images)
    log.info("review: open http://%s:%d/ ; decisions go to %s%s; Ctrl-C stops", args.host, sock.getsockname()[1],
             Path(args.run) / rf.CORRECTIONS,
             f", labels of new images to {Path(args.run) / rf.LABELED}" if args.images is not None else "")
    cli.run_server(app, sock)
    return 0
