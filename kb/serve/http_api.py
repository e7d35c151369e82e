"""The JSON API of ``kb serve`` under ``/v1/``: the shared :class:`kb.serve.tools.Tools` over HTTP.

Responses have the shapes of the CLI's ``--json`` output (``POST /v1/search`` is ``kb search --json``, ...).
Errors are ``{"error": {"type", "message", "exit_code"}}`` with the kb error class's name and exit code (so
a remote ``kb`` exits as a local one would) and an HTTP status derived from it (:data:`STATUS`).

``POST /v1/ask`` streams when asked (``Accept: text/event-stream`` or ``"stream": true``): ``event: draft``
events carry a language model's text as it is written (made safe to show, like the CLI's draft), then one
``event: answer`` carries the verified answer (or ``event: error``). An invalid request is refused with a
plain JSON error before any stream starts.

The work itself runs in worker threads, each request with a deadline (:data:`DEADLINES`): a request past it
gets a 504 while the event loop keeps serving everyone else. Queries (search, ask, status, sources) are
answered one at a time by the index's owner; up to :data:`QUERY_WORKERS` wait for it in threads (the next
one starts the moment the owner is free: handing each over through the event loop measured slower under
load), the rest queue. ``index``, personas and the resource listing have workers of their own.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import kb.errors as errors
from kb.answer.grounding import StreamFilter
from kb.models import OnToken, ResourceInfo
from kb.serve.http_openapi import openapi
from kb.serve.http_owner import TokenTap
from kb.serve.tools import Tools
from kb.service import Service

log = logging.getLogger(__name__)

QUERY_WORKERS = 16
OTHER_WORKERS = 4
DEADLINES = {"search": 60.0, "ask": 300.0, "status": 30.0, "index": 1800.0, "default": 30.0}
STATUS = {  # kb error class -> HTTP status; anything else 500
    errors.BadRequest: 400,
    errors.ConfigError: 400,
    errors.PersonaNotFoundError: 404,
    errors.SourceNotFoundError: 404,
    errors.AccessDeniedError: 403,
    errors.EmptyIndexError: 409,
    errors.IndexLockedError: 423,
    errors.GeneratorError: 502,
}
FIELDS = {
    "search": {"query", "k", "mode", "type", "path"},
    "ask": {"question", "persona", "k", "llm", "stream"},
}


def error_response(exc: BaseException) -> JSONResponse:
    """A kb error (or an unexpected one) as the API's JSON error with its status."""
    if isinstance(exc, errors.KbError):
        status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
        kind, message, code = type(exc).__name__, str(exc), exc.exit_code
    elif isinstance(exc, TimeoutError):
        status, kind, code = 504, "KbError", 1
        message = "kb serve did not finish this request in time (it is busy); try again."
    else:
        log.error("kb serve failed to answer a request", exc_info=exc)
        status, kind, code = 500, "KbError", 1
        message = f"kb serve failed to answer: {type(exc).__name__}. Its log has the details."
    return JSONResponse({"error": {"type": kind, "message": message, "exit_code": code}}, status)


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class Api:
    """The ``/v1/`` routes over one service (see the module docstring)."""

    def __init__(
        self,
        service: Service,
        *,
        resources: Callable[[], list[ResourceInfo]] | None = None,
    ):
        self.service = service
        self.tools = Tools(service, service.workspace)
        self.resources_of = resources
        self.queries = anyio.CapacityLimiter(QUERY_WORKERS)
        self.others = anyio.CapacityLimiter(OTHER_WORKERS)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/search", self.search, methods=["POST"]),
            Route("/v1/ask", self.ask, methods=["POST"]),
            Route("/v1/status", self.status, methods=["GET"]),
            Route("/v1/personas", self.personas, methods=["GET"]),
            Route("/v1/resources", self.resources, methods=["GET"]),
            Route("/v1/sources/{path:path}", self.source, methods=["GET"]),
            Route("/v1/index", self.index, methods=["POST"]),
            Route("/v1/openapi.json", self.openapi, methods=["GET"]),
        ]

    async def run(self, verb: str, work: Callable[[], Any]) -> Response:
        """``work()`` in a worker thread within its deadline, as a JSON response (or the JSON error)."""
        limiter = self.others if verb in ("index", "resources", "personas") else self.queries
        try:
            with anyio.fail_after(DEADLINES.get(verb, DEADLINES["default"])):
                result = await anyio.to_thread.run_sync(work, limiter=limiter, abandon_on_cancel=True)
        except Exception as exc:
            return error_response(exc)
        return JSONResponse(result)

    # --- routes -------------------------------------------------------------------------------------------
    async def search(self, request: Request) -> Response:
        try:
            args = await json_args(request, FIELDS["search"])
        except errors.KbError as exc:
            return error_response(exc)
        return await self.run("search", lambda: self.tools.search(**args))

    async def ask(self, request: Request) -> Response:
        try:
            args = await json_args(request, FIELDS["ask"])
        except errors.KbError as exc:
            return error_response(exc)
        stream = args.pop("stream", False)
        if not isinstance(stream, bool):
            return error_response(errors.BadRequest("stream must be true or false."))
        if stream or "text/event-stream" in request.headers.get("accept", ""):
            return await self.ask_stream(args)
        return await self.run("ask", lambda: self.tools.ask(**args))

    async def status(self, request: Request) -> Response:
        return await self.run("status", self.tools.status)

    async def personas(self, request: Request) -> Response:
        return await self.run("personas", self.tools.personas)

    async def resources(self, request: Request) -> Response:
        listing = self.resources_of
        if listing is None:
            return error_response(errors.SourceNotFoundError("This server does not list resources."))
        return await self.run("resources", lambda: {"resources": [r.to_dict() for r in listing()]})

    async def source(self, request: Request) -> Response:
        try:
            start, end = (int_param(request, name) for name in ("start", "end"))
            unknown = set(request.query_params) - {"start", "end"}
            if unknown:
                raise errors.BadRequest(f"Unknown parameter(s): {', '.join(sorted(unknown))}.")
        except errors.KbError as exc:
            return error_response(exc)
        path = request.path_params["path"]
        return await self.run("source", lambda: self.tools.read_source(path, start, end))

    async def index(self, request: Request) -> Response:
        return await self.run("index", lambda: self.service.index().to_dict())

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi())

    # --- streaming ----------------------------------------------------------------------------------------
    async def ask_stream(self, args: dict[str, Any]) -> Response:
        """Server-sent events: drafts as a model writes, then the verified answer (module docstring)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        shown = StreamFilter()

        def put(item: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def on_token(piece: str) -> None:
            text = shown.feed(piece)
            if text:
                put(("draft", {"text": text}))

        def work() -> None:
            try:
                tap: OnToken = on_token
                answer = Tools(TokenTap(self.service, tap), self.service.workspace).ask(**args)
                tail = shown.close()
                if tail:
                    put(("draft", {"text": tail}))
                put(("answer", answer))
            except Exception as exc:
                put(("error", exc))

        async def runner() -> None:
            try:
                with anyio.fail_after(DEADLINES["ask"]):
                    await anyio.to_thread.run_sync(work, limiter=self.queries, abandon_on_cancel=True)
            except Exception as exc:  # the deadline: the stream ends with an error event
                queue.put_nowait(("error", exc))

        task = asyncio.ensure_future(runner())
        first = await queue.get()
        if first[0] == "error":
            await task
            return error_response(first[1])

        async def events() -> AsyncIterator[bytes]:
            item = first  # if the client leaves, the worker finishes on its own, unheard
            while True:
                kind, data = item
                if kind == "error":
                    yield sse("error", json.loads(bytes(error_response(data).body)))
                    return
                yield sse(kind, data)
                if kind == "answer":
                    return
                item = await queue.get()

        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def json_args(request: Request, allowed: set[str]) -> dict[str, Any]:
    """The request's JSON object, with only ``allowed`` keys (BadRequest otherwise)."""
    if "json" not in request.headers.get("content-type", ""):
        raise errors.BadRequest("Send the request as JSON (Content-Type: application/json).")
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.BadRequest(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(data, dict):
        raise errors.BadRequest("The request body must be a JSON object.")
    unknown = set(data) - allowed
    if unknown:
        raise errors.BadRequest(
            f"Unknown field(s): {', '.join(sorted(unknown))}. Allowed: {', '.join(sorted(allowed))}."
        )
    return data


def int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 9:
        raise errors.BadRequest(f"{name} must be a positive line number (got {raw[:20]!r}).")
    return int(raw)
