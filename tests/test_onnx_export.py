"""The ONNX export (kb/backends/onnx_export.py): "verified against PyTorch to within 1e-4 per dimension".

* The claim, checked independently of the export's own check: the exported model's vectors (kb's
  ``OnnxEmbedder``) against sentence-transformers' ``encode`` of the same model on sentences the export never
  probed.
* The check bites: an export whose graph is perturbed (one weight of the last LayerNorm shifted by 0.01,
  moving the vectors by ~1e-3) is refused with a clear error and leaves nothing behind.

Each export imports torch and traces the model (10-30 s): slow.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kb.backends.embedders import ModelFolder, OnnxEmbedder, export_onnx
from kb.backends.onnx_export import EXPORT_TOLERANCE, PROBES
from kb.errors import EmbedderError
from kb.settings import DEFAULT_EMBEDDER

pytestmark = pytest.mark.slow

SENTENCES = [  # none of them is one of the export's probes
    "The ledger reconciliation job runs nightly at 02:00 UTC.",
    "Refunds are accepted within a 45 day refund window after the purchase.",
    "Which team is on call for the billing database this week?",
    "Tokens: 🚀 naïve café — 東京 — x" * 3,
]


def test_export_agrees_with_sentence_transformers_within_the_tolerance(tmp_path: Path) -> None:
    assert not set(SENTENCES) & set(PROBES)
    folder = ModelFolder(DEFAULT_EMBEDDER)
    embedder = OnnxEmbedder(folder, tmp_path)
    ours = embedder.embed(SENTENCES)  # exports the model on first use
    record = json.loads((embedder.onnx_path.parent / "export.json").read_text())
    assert record["max_abs_error"] <= EXPORT_TOLERANCE == 1e-4

    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(folder.path), device="cpu").encode(SENTENCES, batch_size=32)
    assert ours.shape == reference.shape == (len(SENTENCES), 384)
    assert float(np.abs(ours - reference).max()) <= 1e-4


def test_a_perturbed_export_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    import torch
    from onnx import numpy_helper

    real_export = torch.onnx.export
    shifted: list[str] = []

    def perturbed_export(model: Any, args: Any, f: str, *rest: Any, **kwargs: Any) -> Any:
        out = real_export(model, args, f, *rest, **kwargs)
        graph = onnx.load(f)
        biases = [i for i in graph.graph.initializer if i.name.endswith("LayerNorm.bias")]
        last = max(biases, key=lambda i: [int(n) for n in re.findall(r"\d+", i.name)] or [-1])
        values = numpy_helper.to_array(last).copy()
        values[0] += 0.01  # every token's last hidden state moves by 0.01 in one dimension
        last.CopyFrom(numpy_helper.from_array(values, last.name))
        onnx.save(graph, f)
        shifted.append(last.name)
        return out

    monkeypatch.setattr(torch.onnx, "export", perturbed_export)
    target = tmp_path / "model" / "model.onnx"
    with pytest.raises(EmbedderError, match="differs from PyTorch by") as refused:
        export_onnx(ModelFolder(DEFAULT_EMBEDDER), target)
    assert shifted and "layer.5" in shifted[0], shifted
    error = float(re.search(r"by ([0-9.e+-]+);", str(refused.value)).group(1))  # type: ignore[union-attr]
    assert EXPORT_TOLERANCE < error < 0.01, "a small perturbation, and it is caught"
    assert "embedder_runtime = 'torch'" in str(refused.value), "the message says what to do"
    assert not target.exists() and not list(target.parent.glob("*.onnx*")), "nothing is left to be used"
