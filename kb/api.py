"""The facade: :class:`KnowledgeBase`, one object for everything kb does; the CLI is a thin client of it.

It holds an :class:`kb.index.engine.IndexEngine` (the index) and a :class:`kb.answer.query.Query` (search and
ask over it) and hands them to the features (resources, evaluation, ``kb watch``). When a ``kb watch`` process
owns the workspace, ``index``/``search``/``ask``/``status`` go to it instead (embedded Chroma does not support
two processes on one folder).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from kb.answer.query import Query
from kb.backends.embedders import Embedder
from kb.backends.llm import Generator
from kb.backends.rerank import Reranker
from kb.backends.store import Store
from kb.evaluate import QuestionsReport, evaluate_questions
from kb.evaluate_answers import AnswersReport, evaluate_answers
from kb.index.engine import IndexEngine
from kb.models import (
    Answer,
    DoctorReport,
    Freshness,
    Hits,
    IndexReport,
    OnToken,
    PersonaInfo,
    Progress,
    ResourceFetchReport,
    ResourceInfo,
    Status,
)
from kb.personas import Persona, list_personas
from kb.serve.client import Remote, connect, last_watcher
from kb.settings import Settings, load_settings
from kb.workspace import Workspace, find_workspace

BACKENDS = ("embedder", "store", "generator", "reranker")


class KnowledgeBase:
    """A workspace's knowledge base (a :class:`kb.service.Service`).

    >>> kb = KnowledgeBase.open("data")            # doctest: +SKIP
    >>> kb.index().chunks_embedded                  # doctest: +SKIP
    >>> kb.ask("How should we paginate the notifications API?", persona="backend-engineer")  # doctest: +SKIP

    Backends are injected (``embedder``, ``store``, ``generator``, ``reranker``); ``None`` builds them from
    settings. ``generator`` is the language model that writes answers (e.g. any llama-index LLM through
    :class:`kb.backends.llm.LlamaIndexGenerator`); without it, ``llm`` in the settings decides.
    """

    streams_tokens = True

    def __init__(
        self,
        workspace: Workspace,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        store: Store | None = None,
        generator: Generator | None = None,
        reranker: Reranker | None = None,
        route: bool = True,
    ):
        self.workspace = workspace
        self.settings = settings
        self.engine = IndexEngine(workspace, settings, embedder=embedder, store=store)
        self.query = Query(self.engine, generator=generator, reranker=reranker)
        self.route = route  # send verbs to the workspace's `kb watch` when one runs in another process

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> KnowledgeBase:
        """Open the workspace at ``path`` (or find it: ``KB_WORKSPACE``, then the current folder and its
        parents).

        Keyword arguments override settings (``top_k=8``; ``store={"url": ...}`` the ``[store]`` table) or
        inject backends (``embedder=...``, ``store=`` a :class:`kb.backends.store.Store`).
        """
        if isinstance(overrides.get("store"), dict):  # the [store] settings, e.g. {"url": ...}; else a Store
            overrides["store_settings"] = overrides.pop("store")
        backends = {k: overrides.pop(k) for k in BACKENDS if k in overrides}
        if "store_settings" in overrides:
            overrides["store"] = overrides.pop("store_settings")
        ws = find_workspace(path)
        return cls(ws, load_settings(ws.config_path, **overrides), **backends)

    @property
    def embedder(self) -> Embedder:
        return self.engine.embedder

    def _owner(self) -> Remote | None:
        return connect(self.workspace) if self.route else None

    # --- the service verbs --------------------------------------------------------------------------------
    def index(self, progress: Progress | None = None, *, rebuild: bool = False) -> IndexReport:
        """Bring the index up to date with the files (incremental; see :mod:`kb.index.indexer`); ``rebuild``
        re-reads and re-embeds everything (after a remote embedding server changed its model)."""
        if (owner := self._owner()) is not None:
            with owner:
                return owner.index(progress, rebuild=rebuild)
        return self.engine.index(progress, rebuild=rebuild, wait=self.settings.lock_wait)

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
    ) -> Hits:
        """The ``k`` chunks most relevant to ``query``, best first (``.stale``: see :meth:`freshen`).

        ``mode``: ``hybrid`` (default: BM25 and dense vectors fused), ``dense`` or ``bm25``. ``source_type``
        (context, prd, resource, other) and ``path`` (shell globs on the workspace-relative path) filter.
        """
        if (owner := self._owner()) is not None:
            with owner:
                return Hits(owner.search(query, k, mode=mode, source_type=source_type, path=path))
        fresh = self.freshen()
        hits = self.query.search(query, k, mode=mode, source_type=source_type, path=path)
        return Hits(hits, fresh.stale, fresh.refreshed)

    def ask(
        self,
        question: str,
        *,
        persona: str | None = None,
        k: int | None = None,
        mode: str | None = None,
        source_type: str | Sequence[str] | None = None,
        path: str | Sequence[str] | None = None,
        llm: str | None = None,
        on_token: OnToken | None = None,
    ) -> Answer:
        """A grounded answer to ``question`` with verbatim, line-exact citations (or an abstention).

        ``mode``, ``source_type`` and ``path`` choose and filter the evidence as in :meth:`search`.
        ``persona="auto"``: kb.toml's ``persona`` if set, else the persona that best fits the question
        (``answer.persona_picked``).
        ``llm`` names the answer backend (default: the injected ``generator``, else settings ``llm``,
        "extractive"; see :mod:`kb.backends.llm`); a model's tokens go to ``on_token`` as they arrive, and its
        answer is verified before it is returned.
        """
        params: dict[str, Any] = dict(
            persona=persona, k=k, mode=mode, source_type=source_type, path=path, llm=llm
        )
        if (owner := self._owner()) is not None:
            with owner:
                return owner.ask(question, **params)
        fresh = self.freshen()
        answer = self.query.ask(question, on_token=on_token, stale=fresh.stale, **params)
        answer.stale, answer.refreshed = fresh.stale, fresh.refreshed
        return answer

    def freshen(self) -> Freshness:
        """Before a search or an answer in this process (no ``kb watch`` owns the index): re-index the sources
        that changed on disk (settings ``refresh``, ``refresh_max_files``), or, with ``refresh`` off, find
        which are stale (a stat per file). Answers never show a quote from a stale source that is no longer at
        its lines."""
        if self.settings.refresh:
            return self.engine.refresh(self.settings.refresh_max_files)
        return Freshness(stale=self.engine.stale_paths())

    def status(self) -> Status:
        if (owner := self._owner()) is not None:
            with owner:
                return owner.status()
        return self.engine.status(last_watcher(self.workspace))

    # --- more of the library ------------------------------------------------------------------------------
    def persona(self, name: str) -> Persona:
        return self.query.persona(name)

    def personas(self) -> list[PersonaInfo]:
        return [p.info() for p in list_personas(self.workspace.personas_dir)]

    def as_retriever(self, k: int = 10, **filters: Any) -> Any:
        """This knowledge base as a llama-index retriever (see :mod:`kb.integrations`)."""
        from kb.integrations import KbRetriever

        return KbRetriever(self, k, **filters)

    def evaluate(
        self, questions: str | os.PathLike[str], *, k: int = 5, mode: str | None = None
    ) -> QuestionsReport:
        """hit@1, hit@k and MRR of :meth:`search` on a JSONL of ``{"question", "expected": [path or
        path#heading]}``.

        For BEIR-format datasets see :func:`kb.evaluate.evaluate_beir` (``kb eval DATASET_DIR``).
        """
        return evaluate_questions(self.search, questions, k=k, mode=mode or self.settings.search_mode)

    def evaluate_answers(
        self, questions: str | os.PathLike[str], *, k: int = 8, llm: str | None = None
    ) -> AnswersReport:
        """Ask every question of a labelled answer set and score the answers: leads with team context,
        sentence precision, key-fact recall, fragments, supported, length, and retrieval of the labelled
        sections (see :mod:`kb.evaluate_answers`)."""
        backend = llm or ("llm" if self.query.generator is not None else self.settings.llm)
        return evaluate_answers(
            lambda q, persona: self.ask(q, persona=persona or "auto", llm=llm),
            lambda q, n: self.search(q, n),
            questions,
            self.workspace.root,
            backend=backend,
            k=k,
        )

    def watch(self, **options: Any) -> None:
        """Keep the index equal to the files until Ctrl-C or SIGTERM, serving search/ask/status to other
        processes meanwhile. Options: see :class:`kb.serve.watcher.Watcher`."""
        from kb.serve.run import watch

        watch(self.engine, self.query, **options)

    def resources(self) -> list[ResourceInfo]:
        """The personas' recommended resources with their status (see :mod:`kb.resources`)."""
        from kb.resources.catalog import list_resources

        return list_resources(self.engine)

    def fetch_resources(
        self, urls: Sequence[str] | None = None, force: bool = False, progress: Progress | None = None
    ) -> ResourceFetchReport:
        """Fetch the due resources (or ``urls``) into ``.workos/resources/``, then index them."""
        from kb.resources.catalog import fetch_resources

        return fetch_resources(
            self.engine, list(urls) if urls else None, force=force, progress=progress, index=self.index
        )

    def import_resource(self, directory: str | os.PathLike[str], url: str) -> ResourceFetchReport:
        """Store the local copy in ``directory`` as resource ``url`` (air-gapped use), then index it."""
        from kb.resources.catalog import import_resource

        return import_resource(self.engine, directory, url, index=self.index)

    def doctor(self, *, repair: bool = False, remove_damaged: bool = False) -> DoctorReport:
        """Check the index against the files and itself; ``repair`` fixes what needs no re-embedding
        (``remove_damaged``: also delete damaged vector indexes set aside). See :mod:`kb.doctor`."""
        from kb.doctor import diagnose

        return diagnose(self.engine, repair=repair, remove_damaged=remove_damaged)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
