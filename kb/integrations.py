"""kb inside llama-index: its hybrid, filtered retrieval as a llama-index retriever.

    from kb import KnowledgeBase retriever = KnowledgeBase.open("data").as_retriever(k=5, source_type="prd")
    nodes = retriever.retrieve("How are notifications paginated?")   # NodeWithScore, citation metadata
    attached

Each node's metadata carries what a citation needs (path, start_line, end_line, heading, source_type, url), so
a llama-index query engine built on it can still point at the exact lines. llama-index is imported only here.
"""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from kb.service import Service


class KbRetriever(BaseRetriever):
    """A llama-index ``BaseRetriever`` over a :class:`kb.KnowledgeBase` (hybrid search, metadata filters)."""

    def __init__(
        self,
        kb: Service,
        k: int = 10,
        *,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self._kb, self._k, self._mode, self._source_type, self._path = kb, k, mode, source_type, path

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self._kb.search(
            query_bundle.query_str, k=self._k, mode=self._mode, source_type=self._source_type, path=self._path
        )
        out = []
        for h in hits:
            meta = {
                "path": h.path,
                "start_line": h.start_line,
                "end_line": h.end_line,
                "heading": h.heading,
                "source_type": h.source_type,
            }
            if h.url:
                meta["url"] = h.url
            node = TextNode(id_=h.chunk_id or f"{h.path}:{h.start_line}", text=h.text, metadata=meta)
            out.append(NodeWithScore(node=node, score=h.score))
        return out
