"""The wire protocol of ``kb watch``'s socket: one JSON object per line, and a schema per method.

``{"v": 1, "method": "search", "params": {...}}`` -> ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"type", "message", "exit_code"}}``. Parameters are validated against the schema of
their method before anything runs, strictly (no coercion: ``{"query": 5}`` is a :class:`kb.errors.BadRequest`
reply, not an ``AttributeError`` deep in the watcher), with the same bounds as the CLI's flags.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kb.errors import BadRequest
from kb.serve.client import MAX_REQUEST, PROTOCOL  # the client stays light: no pydantic on its side

StrOrList = str | list[str] | None


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _NoParams(_Params):
    pass


class SearchParams(_Params):
    query: str = Field(max_length=MAX_REQUEST)
    k: int = Field(10, ge=1, le=100)
    mode: str | None = None
    source_type: StrOrList = None
    path: StrOrList = None


class AskParams(_Params):
    question: str = Field(max_length=MAX_REQUEST)
    persona: str | None = None
    k: int | None = Field(None, ge=1, le=50)
    mode: str | None = None
    source_type: StrOrList = None
    path: StrOrList = None
    llm: str | None = None


SCHEMAS: dict[str, type[_Params]] = {
    "ping": _NoParams,
    "config": _NoParams,
    "search": SearchParams,
    "ask": AskParams,
    "status": _NoParams,
    "index": _NoParams,
}
METHODS = tuple(SCHEMAS)


def validate(message: Any) -> tuple[str, dict[str, Any]]:
    """(method, params) of a decoded request, or BadRequest saying what is wrong. ``params`` holds only what
    the client sent (the method's own defaults apply to the rest)."""
    if not isinstance(message, dict):
        raise BadRequest('A request is a JSON object: {"v": 1, "method": ..., "params": {...}}.')
    if message.get("v", PROTOCOL) != PROTOCOL:
        raise BadRequest(
            f"Unsupported protocol version {message.get('v')!r}; this kb watch speaks {PROTOCOL}. "
            "Restart kb watch after upgrading kb."
        )
    method = message.get("method")
    if method not in SCHEMAS:
        raise BadRequest(f"Unknown method {method!r}. Available: {', '.join(METHODS)}.")
    params = message.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(k, str) and k.isidentifier() for k in params):
        raise BadRequest('"params" must be an object whose keys are parameter names.')
    try:
        checked = SCHEMAS[method].model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise BadRequest(f"Bad parameters for {method}: {problems}.") from None
    return method, checked.model_dump(exclude_unset=True)
