"""The tables of kb.toml (``[resources]``, ``[store]``, ``[secrets]``): one pydantic model each, nested in
:class:`kb.settings.Settings`, which reads them with the rest (see its precedence)."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class ResourcesSettings(BaseModel):
    """``[resources]`` in kb.toml: which recommended resources are fetched, from where, and the fetcher's
    limits."""

    model_config = ConfigDict(extra="forbid")

    personas: list[str] | None = Field(
        None,
        description="Personas whose Key Resources are used; unset: all.",
        examples=[["backend-engineer"]],
    )
    add: list[str] = Field(
        default_factory=list, description='More resource URLs, e.g. ["https://example.org/handbook"].'
    )
    drop: list[str] = Field(default_factory=list, description="Persona resource URLs to leave out.")
    pin: list[str] = Field(
        default_factory=list, description="URLs whose cached copy is kept, never re-fetched."
    )
    mirror: dict[str, str] = Field(
        default_factory=dict,
        description="URL -> local folder/file or http(s) mirror base to fetch it from (air-gapped copies), "
        'e.g. { "https://12factor.net/" = "/srv/mirrors/12factor" }.',
    )
    unavailable: dict[str, str] = Field(
        default_factory=lambda: {
            "https://www.databass.dev/": "Database Internals is a book: no public text",
        },
        description="URL -> why it cannot be had (recorded, never fetched).",
    )
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts, IPs or CIDRs fetched even if loopback/private (tests, intranets): private "
        'addresses are refused unless listed here, e.g. ["wiki.intranet.example"].',
    )
    max_age_hours: float = Field(168.0, ge=0, description="A copy older than this is stale and re-checked.")
    timeout_s: float = Field(20.0, gt=0, description="Seconds allowed for one HTTP response.")
    max_bytes: int = Field(5_000_000, gt=0, description="Largest response accepted.")
    max_redirects: int = Field(5, ge=0, le=20, description="Redirects followed (each re-checked).")
    max_pages: int = Field(200, ge=1, description="Pages fetched per resource (links within its URL).")
    max_depth: int = Field(1, ge=0, le=5, description="Link depth followed from a resource's first page.")

    @model_validator(mode="before")
    @classmethod
    def _allow_hosts_env(cls, data: Any) -> Any:
        env = os.environ.get("KB_RESOURCES_ALLOW_HOSTS")
        if env is not None and isinstance(data, dict):
            data = {**data, "allow_hosts": [h.strip() for h in env.split(",") if h.strip()]}
        return data


class StoreSettings(BaseModel):
    """``[store]`` in kb.toml: where the vectors live. Without ``url``, in an embedded Chroma folder inside
    the workspace; with it, on a Chroma server shared by many workspaces (each in its own collections)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None,
        description="Chroma server (chroma run, 1.x), e.g. http://chroma.internal:8000; unset: an embedded "
        "Chroma folder in the workspace. Also KB_CHROMA_URL.",
        examples=["http://127.0.0.1:8000"],
    )
    tenant: str = Field("default_tenant", description="Chroma tenant (KB_CHROMA_TENANT).")
    database: str = Field(
        "default_database", description="Chroma database, created when missing (KB_CHROMA_DATABASE)."
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra HTTP headers sent to the server, e.g. a token for an authenticating proxy in "
        "front of Chroma (never printed). Keep tokens out of this file: set KB_CHROMA_HEADERS to a JSON "
        "object.",
    )
    timeout: float = Field(30.0, gt=0, description="Seconds to wait for the Chroma server's answer.")
    retries: int = Field(
        2, ge=0, le=10, description="Retries of a store request on a dropped connection or timeout."
    )

    @model_validator(mode="before")
    @classmethod
    def _env(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("url", "tenant", "database"):
            value = os.environ.get(f"KB_CHROMA_{key.upper()}")
            if value:
                data[key] = value
        raw = os.environ.get("KB_CHROMA_HEADERS")
        if raw:
            try:
                headers = json.loads(raw)
            except json.JSONDecodeError:
                headers = None
            if not isinstance(headers, dict):
                raise ValueError(
                    'KB_CHROMA_HEADERS must be a JSON object, e.g. {"Authorization": "Bearer ..."}'
                )
            data["headers"] = headers
        return data

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"the Chroma server URL {value!r} must start with http:// or https://")
        return value


class SecretsSettings(BaseModel):
    """``[secrets]`` in kb.toml: credentials found inside documents (API keys, private keys, passwords)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["redact", "skip-file", "off"] = Field(
        "redact",
        description="'redact': each secret is replaced by [secret: KIND] in what is stored, embedded and "
        "shown (lines keep their numbers); 'skip-file': a file holding a secret is not indexed; 'off': no "
        "scanning.",
    )
    allow: list[str] = Field(
        default_factory=list,
        description="Known false positives: exact strings, or 're:<regex>' searched in the matched text, "
        'e.g. ["re:^AKIA0{16}$"].',
    )

    @field_validator("allow")
    @classmethod
    def _regexes_compile(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry.startswith("re:"):
                try:
                    re.compile(entry[3:])
                except re.error as exc:
                    raise ValueError(f"{entry!r} is not a valid regular expression ({exc})") from None
        return value
