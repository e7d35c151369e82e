"""Settings: one typed model, read from several places.

Precedence, highest first:

1. arguments passed in code or by CLI flags (``KnowledgeBase.open(path, top_k=8)``, ``kb ask -k 8``);
2. environment variables prefixed ``KB_`` (``KB_TOP_K=8``, ``KB_EMBEDDER=st:/models/e5``);
3. the workspace's ``kb.toml``;
4. the defaults below.

Unknown keys in kb.toml are an error (``extra="forbid"``): a typo is reported, never silently ignored.
"""

from __future__ import annotations

import contextvars
import json
import textwrap
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ingest.layout import DEFAULT_INCLUDE
from kb.errors import ConfigError
from kb.settings.sections import ResourcesSettings, SecretsSettings, StoreSettings

__all__ = [
    "DEFAULT_EMBEDDER",
    "EMBEDDER_KINDS",
    "ResourcesSettings",
    "SecretsSettings",
    "Settings",
    "StoreSettings",
    "load_settings",
    "read_toml",
    "toml_template",
    "toml_value",
]

DEFAULT_EMBEDDER = "st:all-MiniLM-L6-v2"
EMBEDDER_KINDS = ("st:", "openai-compatible:")

_toml_data: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("kb_toml")  # unset: {}


class _TomlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_toml_data.get({}))


class Settings(BaseSettings):
    """Effective settings of one workspace (see the module docstring for precedence)."""

    model_config = SettingsConfigDict(env_prefix="KB_", extra="forbid", validate_default=True)

    embedder: str = Field(
        DEFAULT_EMBEDDER,
        description="Embedding model: 'st:<sentence-transformers name or local path>' (the default is the "
        "bundled all-MiniLM-L6-v2), or 'openai-compatible:<model>' for any /v1/embeddings server (see "
        "embed_base_url). Changing it rebuilds the index automatically (vectors of two models never mix).",
    )
    embedder_runtime: Literal["onnx", "torch"] = Field(
        "onnx",
        description="'onnx' runs the same weights without torch (fast start); 'torch' uses them directly.",
    )
    model_cache_dir: Path | None = Field(
        None,
        description="Where the ONNX export of the model is kept; default: the index folder.",
        examples=["/srv/kb-models"],
    )
    embed_base_url: str = Field(
        "http://127.0.0.1:8081/v1",
        description="Base URL of the /v1/embeddings server of an 'openai-compatible:' embedder "
        "(text-embeddings-inference, Ollama, vLLM, llama.cpp's server). Part of the index's identity.",
    )
    embed_api_key: SecretStr | None = Field(
        None,
        description="API key of the embeddings server (a Bearer token; never printed). Keep it out of this "
        "file: set KB_EMBED_API_KEY.",
        examples=["..."],
    )
    embed_timeout: float = Field(60.0, gt=0, description="Seconds to wait for the embeddings server.")
    embed_retries: int = Field(
        4, ge=0, le=10, description="Retries on 429, 5xx, timeouts and dropped connections, with backoff."
    )
    embed_batch: int = Field(64, ge=1, le=2048, description="Texts per request to the embeddings server.")
    cache_dir: Path | None = Field(
        None,
        description="Where kb eval keeps its dataset indexes; default: $XDG_CACHE_HOME/kb or ~/.cache/kb.",
        examples=["~/.cache/kb"],
    )
    include: list[str] = Field(
        default_factory=list,
        description='More glob patterns to index, relative to the workspace, e.g. ["docs/**/*.md"]. Indexed '
        f"anyway: {', '.join(DEFAULT_INCLUDE)}.",
    )
    exclude: list[str] = Field(
        default_factory=list, description='Glob patterns never indexed, e.g. ["**/drafts/**"].'
    )
    follow_hardlinks: bool = Field(
        False,
        description="Index files that have more than one hard link. Off by default: another name of the file "
        "may be outside the workspace, and kb cannot see where.",
    )
    max_file_mb: float = Field(
        10.0, gt=0, description="Files larger than this many megabytes are skipped (and reported)."
    )
    chunk_max_tokens: int = Field(
        256,
        ge=32,
        le=512,
        description="Chunks never exceed this many model tokens (the model's window is 256).",
    )
    top_k: int = Field(5, ge=1, le=100, description="How many chunks an answer draws on.")
    persona: str | None = Field(
        None,
        description="Default persona of kb ask ('auto': picked per question); unset: none.",
        examples=["backend-engineer"],
    )
    reranker: str | None = Field(
        None,
        description="Optional second stage: 'cross-encoder:<local model folder>' (sentence-transformers).",
        examples=["cross-encoder:/path/to/a/local/cross-encoder"],
    )
    search_mode: Literal["hybrid", "dense", "bm25"] = Field(
        "hybrid", description="Retrieval: 'hybrid' (BM25 + dense vectors, fused), 'dense' or 'bm25'."
    )
    llm: str = Field(
        "extractive",
        description="Answer backend: 'extractive' (no model), 'openai-compatible[:MODEL]' or "
        "'llama-cpp:PATH.gguf' (see kb/backends/llm.py). A model's answer is checked sentence by sentence "
        "against the sources it cites.",
    )
    llm_base_url: str = Field(
        "http://127.0.0.1:8080/v1",
        description="OpenAI-compatible API base URL: Ollama, llama.cpp's server, vLLM, LM Studio, a hosted "
        "API.",
    )
    llm_model: str | None = Field(
        None,
        description="Model name for the API; unset: the server's only model.",
        examples=["qwen2.5-7b-instruct"],
    )
    llm_api_key: SecretStr | None = Field(
        None,
        description="API key (sent as a Bearer token; never printed). Keep it out of this file: set "
        "KB_LLM_API_KEY.",
        examples=["..."],
    )
    llm_timeout: float = Field(120.0, gt=0, description="Seconds to wait for the model (connect, each read).")
    llm_retries: int = Field(2, ge=0, le=10, description="Retries on transient errors (429, 5xx, timeouts).")
    llm_context_window: int = Field(4096, ge=512, description="The model's context window, in tokens.")
    llm_max_tokens: int = Field(384, ge=16, description="Most tokens the model may write for one answer.")
    llm_temperature: float = Field(0.1, ge=0.0, le=2.0, description="Sampling temperature.")
    llm_unsupported: Literal["remove", "mark"] = Field(
        "remove", description="What to do with an answer sentence its citation does not support."
    )
    min_relevance: float = Field(
        0.35, ge=0.0, le=1.0, description="Below this cosine similarity a sentence is not evidence."
    )
    refresh: bool = Field(
        True,
        description="Before a search or an answer with no kb watch running, re-index the sources that "
        "changed on disk since they were indexed (a stat per file; kb ask/search --no-refresh turns it off, "
        "and then the changed sources are reported as stale).",
    )
    refresh_max_files: int = Field(
        200,
        ge=0,
        description="Re-index at most this many changed files before a search or an answer; past it they are "
        "reported as stale (run kb index).",
    )
    lock_wait: float = Field(
        10.0,
        ge=0.0,
        le=3600.0,
        description="How long kb index waits for another kb process that is writing the index (a search's "
        "refresh, another kb index) before it gives up with exit code 4.",
    )
    store: StoreSettings = Field(
        default_factory=lambda: StoreSettings.model_validate({}),
        description="Where the vectors live: an embedded Chroma folder (default) or a Chroma server.",
    )
    secrets: SecretsSettings = Field(
        default_factory=lambda: SecretsSettings.model_validate({}),
        description="Credentials inside documents: redacted before anything is stored or embedded.",
    )
    resources: ResourcesSettings = Field(
        default_factory=lambda: ResourcesSettings.model_validate({}),
        description="The personas' recommended resources (kb resources list|fetch|import).",
    )

    @field_validator("embedder")
    @classmethod
    def _embedder_spec(cls, value: str) -> str:
        kind = next((k for k in EMBEDDER_KINDS if value.startswith(k)), None)
        if kind is None or len(value) <= len(kind):
            raise ValueError(
                f"unknown embedder {value!r}: use 'st:<sentence-transformers model name or local path>' "
                f"(e.g. {DEFAULT_EMBEDDER!r}) or 'openai-compatible:<model served at embed_base_url>'"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))


def read_toml(path: Path) -> dict[str, Any]:
    """The kb.toml at ``path`` as a dict ({} when absent); a clear error when it is not valid TOML."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}.") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid TOML: {exc}. Fix it or delete it (kb init writes a fresh one)."
        ) from None


def load_settings(toml_path: Path | None = None, **overrides: Any) -> Settings:
    """Build the effective settings: ``overrides`` > ``KB_*`` environment > ``toml_path`` > defaults."""
    data = read_toml(toml_path) if toml_path else {}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    token = _toml_data.set(data)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        where = f" (kb.toml at {toml_path}, KB_* variables or flags)" if toml_path else ""
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"Invalid settings{where}: {problems}.") from None
    finally:
        _toml_data.reset(token)


# --- the commented kb.toml ``kb init`` writes ---------------------------------------------------------------

_TOML_HEADER = """\
# kb.toml: settings of this kb workspace. Every key is optional; the values shown are the defaults.
# Precedence: command-line flags > KB_* environment variables > this file > defaults.
"""


def toml_value(value: Any) -> str:
    """``value`` written as TOML (strings, numbers, booleans, paths, lists and tables of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 10_000 else str(value)  # TOML allows 5_000_000
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [f"{json.dumps(str(k), ensure_ascii=False)} = {toml_value(v)}" for k, v in value.items()]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _commented_fields(model: type[BaseModel]) -> list[str]:
    lines: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue  # a table: written after the plain keys
        default = info.get_default(call_default_factory=True)
        lines.append("")
        lines += textwrap.wrap(
            info.description or name,
            width=108,
            initial_indent="# ",
            subsequent_indent="# ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        if default is None:
            example = toml_value(info.examples[0]) if info.examples else '""'
            lines.append(f"# {name} = {example}  # unset by default")
        else:
            lines.append(f"# {name} = {toml_value(default)}")
    return lines


def toml_template() -> str:
    """The commented kb.toml of ``kb init``: every key of :class:`Settings` with its description and default
    (generated from the model, so it cannot drift from it). All lines are comments: the defaults apply."""
    lines = [_TOML_HEADER.rstrip("\n"), *_commented_fields(Settings)]
    for name, info in Settings.model_fields.items():
        table = info.annotation
        if isinstance(table, type) and issubclass(table, BaseModel):
            lines += ["", "", f"# {info.description or name}", f"# [{name}]", *_commented_fields(table)]
    return "\n".join(lines) + "\n"
