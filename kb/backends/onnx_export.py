"""The one-time ONNX export of a model's transformer, verified against PyTorch before it is used.

:class:`kb.backends.embedders.OnnxEmbedder` calls :func:`export_onnx` the first time a model is needed and
no export is in the cache. The export imports torch and transformers (about 10 s, once per model and cache
folder); the run-time embedder never does. The exported graph is checked on probe sentences: if its pooled
vectors differ from PyTorch's by more than :data:`EXPORT_TOLERANCE` in any dimension, the export is discarded
and kb says so.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kb.backends.model_folder import ModelFolder
from kb.errors import EmbedderError
from kb.locks import file_lock

log = logging.getLogger(__name__)

EXPORT_TOLERANCE = 1e-4
OPSET = 17
PROBES = [
    "How should we paginate the notifications API?",
    "A man is eating food.",
    "Cursor-based pagination returns an opaque next_cursor and has_more flag for infinite scroll.",
    "PostgreSQL 16 with PgBouncer in transaction pooling mode; read replicas serve reporting queries.",
]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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
            from transformers.utils import logging as hf_logging
        except ImportError as exc:
            raise EmbedderError(
                f"Exporting the model to ONNX needs torch and transformers ({exc})."
            ) from None

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        model = AutoModel.from_pretrained(str(folder.path), attn_implementation="eager").eval()

        class Wrapper(torch.nn.Module):
            def __init__(self, inner: Any):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                out = self.inner(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                )
                return out.last_hidden_state

        tok = folder.tokenizer()
        tok.enable_truncation(folder.max_tokens)
        tok.enable_padding()
        enc = tok.encode_batch(PROBES)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
        types = torch.zeros_like(ids)
        tmp = target.with_suffix(".onnx.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)

        # The reference is computed before exporting: tracing leaves the PyTorch model unfit for eager use.
        with torch.no_grad():
            states = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            reference = folder.pool(states.numpy(), mask.numpy())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Trace with an unpadded batch of three distinct tensors: tracing a padded batch, or one tensor
            # passed twice, bakes a wrong attention-mask path into the graph (the check below catches it).
            dummy = (
                torch.ones((2, 16), dtype=torch.long),
                torch.ones((2, 16), dtype=torch.long),
                torch.zeros((2, 16), dtype=torch.long),
            )
            torch.onnx.export(
                Wrapper(model),
                dummy,
                str(tmp),
                input_names=list(INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in (*INPUTS, "last_hidden_state")},
                opset_version=OPSET,
                dynamo=False,
            )
        error = _verify(tmp, folder, reference, (ids.numpy(), mask.numpy(), types.numpy()))
        record = {"model_id": folder.model_id, "max_abs_error": error, "opset": OPSET}
        (target.parent / "export.json").write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, target)
        log.info("exported %s (max |error| vs PyTorch %.1e)", target, error)


Feed = tuple[np.ndarray, np.ndarray, np.ndarray]  # input_ids, attention_mask, token_type_ids


def _verify(exported: Path, folder: ModelFolder, reference: np.ndarray, feed: Feed) -> float:
    """The largest difference between the exported graph's vectors and PyTorch's; over tolerance, an error."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    hidden = session.run(None, dict(zip(INPUTS, feed, strict=True)))[0]
    got = folder.pool(hidden, feed[1])
    error = float(np.abs(got - reference).max())
    if error > EXPORT_TOLERANCE:
        exported.unlink(missing_ok=True)
        raise EmbedderError(
            f"The ONNX export of {folder.name} differs from PyTorch by {error:.2e}; "
            "set embedder_runtime = 'torch' in kb.toml."
        )
    return error
