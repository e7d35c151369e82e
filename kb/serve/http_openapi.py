"""The OpenAPI 3.1 description of ``kb serve``'s JSON API (``GET /v1/openapi.json``).

Written out rather than generated: the API is small, and its request limits are those of
:class:`kb.serve.tools.Tools`, which this description quotes.
"""

from __future__ import annotations

from typing import Any

from kb.serve.tools import MAX_K_ASK, MAX_K_SEARCH, MAX_QUERY, MODES, TYPES

STRINGS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 20}]}
ERROR = {
    "description": "An error: the kb error class, its message and the exit code the kb CLI uses for it.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string", "examples": ["BadRequest", "SourceNotFoundError"]},
                            "message": {"type": "string"},
                            "exit_code": {"type": "integer"},
                        },
                        "required": ["type", "message", "exit_code"],
                    }
                },
            }
        }
    },
}
ERRORS = {
    code: ERROR
    for code in ("400", "401", "403", "404", "408", "409", "413", "414", "423", "429", "500", "502", "504")
}


def _json(description: str, shape: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = shape or {"type": "object"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    return {"required": True, "content": {"application/json": {"schema": schema}}}


SEARCH = _body(
    {
        "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY},
        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K_SEARCH, "default": 10},
        "mode": {"enum": [*MODES, None], "description": "hybrid (default), dense or bm25"},
        "type": {**STRINGS, "description": f"source types: {', '.join(TYPES)}"},
        "path": {**STRINGS, "description": "workspace-relative path globs, e.g. projects/prds/*"},
    },
    ["query"],
)
ASK = _body(
    {
        "question": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY},
        "persona": {"type": ["string", "null"], "default": "auto", "description": "a name, or auto"},
        "k": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_K_ASK},
        "llm": {
            "type": ["string", "null"],
            "description": "extractive, openai-compatible[:MODEL] or llama-cpp:smollm2 (never a file path)",
        },
        "stream": {"type": "boolean", "default": False, "description": "server-sent events"},
    },
    ["question"],
)
ANSWER_STREAM = {
    "description": "With stream or Accept: text/event-stream: `event: draft` {text} while a language model "
    "writes, then `event: answer` (the JSON above) or `event: error` (an error body).",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


def openapi() -> dict[str, Any]:
    """The description, as a JSON-able dict."""
    answer = _json("The answer (kb ask --json): answer, sentences with citations, abstained, nearest.")
    answer["content"].update(ANSWER_STREAM["content"])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kb serve",
            "version": "1",
            "description": "Grounded, cited answers from a team's workspace. Responses have the shapes of "
            "the kb CLI's --json output. With a token, send Authorization: Bearer <token>.",
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
        "paths": {
            "/v1/search": {
                "post": {
                    "summary": "Ranked chunks for a query (kb search --json)",
                    "requestBody": SEARCH,
                    "responses": {"200": _json("{query, hits: [...], stale, refreshed}"), **ERRORS},
                }
            },
            "/v1/ask": {
                "post": {
                    "summary": "A grounded answer with verified citations, or an abstention (kb ask --json)",
                    "requestBody": ASK,
                    "responses": {"200": answer, **ERRORS},
                }
            },
            "/v1/status": {
                "get": {
                    "summary": "Index freshness and sources (kb status --json)",
                    "responses": {"200": _json("Status"), **ERRORS},
                }
            },
            "/v1/personas": {
                "get": {
                    "summary": "The personas an answer can take",
                    "responses": {"200": _json("{personas: [...]}"), **ERRORS},
                }
            },
            "/v1/resources": {
                "get": {
                    "summary": "Recommended resources and their freshness (kb resources list --json)",
                    "responses": {"200": _json("{resources: [...]}"), **ERRORS},
                }
            },
            "/v1/sources/{path}": {
                "get": {
                    "summary": "Lines of an indexed source, as citations number them",
                    "parameters": [
                        {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "start", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                        {"name": "end", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                    ],
                    "responses": {
                        "200": _json("{path, start_line, end_line, total_lines, truncated, text, url?}"),
                        **ERRORS,
                    },
                }
            },
            "/v1/index": {
                "post": {
                    "summary": "Bring the index up to date now (kb index --json)",
                    "responses": {"200": _json("IndexReport"), **ERRORS},
                }
            },
        },
    }
