"""kb: grounded, cited answers over a team's workspace (context files, PRDs, personas), offline.

from kb import KnowledgeBase kb = KnowledgeBase.open("data") kb.index() answer = kb.ask("How should we
paginate the notifications API?", persona="backend-engineer")
"""

from typing import TYPE_CHECKING

from kb.errors import (
    ConfigError,
    EmbedderError,
    EmptyIndexError,
    GeneratorError,
    IndexCorruptError,
    IndexLockedError,
    KbError,
    PersonaFormatError,
    PersonaNotFoundError,
    WorkspaceNotFoundError,
)
from kb.models import (
    Answer,
    AnswerSentence,
    Citation,
    Freshness,
    Hit,
    Hits,
    IndexReport,
    PersonaInfo,
    ResourceFetchReport,
    ResourceInfo,
    ResourceOutcome,
    SourceStatus,
    Status,
)

if TYPE_CHECKING:
    from kb.api import KnowledgeBase
    from kb.evaluate import EvalReport, QuestionsReport, evaluate_beir

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # KnowledgeBase is imported on first use: `kb search` answered by `kb watch` must not import the index
    # stack.
    if name == "KnowledgeBase":
        from kb.api import KnowledgeBase

        return KnowledgeBase
    if name in ("EvalReport", "QuestionsReport", "evaluate_beir"):
        import kb.evaluate

        return getattr(kb.evaluate, name)
    raise AttributeError(f"module 'kb' has no attribute {name!r}")


__all__ = [
    "Answer",
    "AnswerSentence",
    "Citation",
    "ConfigError",
    "EmbedderError",
    "EmptyIndexError",
    "EvalReport",
    "GeneratorError",
    "Freshness",
    "Hit",
    "Hits",
    "IndexCorruptError",
    "IndexLockedError",
    "IndexReport",
    "KbError",
    "KnowledgeBase",
    "PersonaFormatError",
    "PersonaInfo",
    "PersonaNotFoundError",
    "QuestionsReport",
    "ResourceFetchReport",
    "ResourceInfo",
    "ResourceOutcome",
    "SourceStatus",
    "Status",
    "WorkspaceNotFoundError",
    "evaluate_beir",
]
