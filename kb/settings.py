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
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from kb.errors import ConfigError

DEFAULT_INCLUDE = [".workos/context/**", "projects/prds/**", ".workos/resources/**"]
DEFAULT_EMBEDDER = "st:all-MiniLM-L6-v2"

_toml_data: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("kb_toml", default={})


class _TomlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_toml_data.get())


class Settings(BaseSettings):
    """Effective settings of one workspace (see the module docstring for precedence)."""

    model_config = SettingsConfigDict(env_prefix="KB_", extra="forbid", validate_default=True)

    embedder: str = Field(
        DEFAULT_EMBEDDER,
        description="Embedding model: 'st:<sentence-transformers name or local path>'. The default is the "
        "bundled all-MiniLM-L6-v2.",
    )
    embedder_runtime: Literal["onnx", "torch"] = Field(
        "onnx", description="'onnx' runs the same weights without torch (fast start); 'torch' uses them directly."
    )
    model_cache_dir: Path | None = Field(
        None, description="Where the ONNX export of the model is kept; default: the index folder."
    )
    include: list[str] = Field(default_factory=list, description="Extra glob patterns to index.")
    exclude: list[str] = Field(default_factory=list, description="Glob patterns never to index.")
    max_file_mb: float = Field(10.0, gt=0, description="Files larger than this are skipped.")
    chunk_max_tokens: int = Field(256, ge=32, le=512, description="Token ceiling of a chunk (model window).")
    top_k: int = Field(5, ge=1, le=100, description="Chunks retrieved for an answer.")
    persona: str | None = Field(None, description="Default persona for kb ask.")
    answerer: str = Field("extractive", description="Answer backend.")
    min_relevance: float = Field(
        0.35, ge=0.0, le=1.0, description="Below this cosine similarity a sentence is not evidence."
    )

    @field_validator("embedder")
    @classmethod
    def _embedder_spec(cls, value: str) -> str:
        if not value.startswith("st:") or len(value) <= 3:
            raise ValueError(
                f"unknown embedder {value!r}: use 'st:<sentence-transformers model name or local path>', "
                f"e.g. {DEFAULT_EMBEDDER!r}"
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
        raise ConfigError(f"{path} is not valid TOML: {exc}. Fix it or delete it (kb init writes a fresh one).")


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
