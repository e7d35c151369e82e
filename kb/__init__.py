"""kb: grounded, cited answers over a team's workspace (context files, PRDs, personas), offline.

    from kb import KnowledgeBase
    kb = KnowledgeBase.open("data")
    kb.index()
    answer = kb.ask("How should we paginate the notifications API?", persona="backend-engineer")
"""

from kb.api import KnowledgeBase
from kb.errors import (
    ConfigError,
    EmbedderError,
    EmptyIndexError,
    IndexCorruptError,
    IndexLockedError,
    KbError,
    PersonaFormatError,
    PersonaNotFoundError,
    WorkspaceNotFoundError,
)
from kb.models import Answer, Citation, Hit, IndexReport, PersonaInfo, SourceStatus, Status

__version__ = "0.1.0"

__all__ = [
    "Answer",
    "Citation",
    "ConfigError",
    "EmbedderError",
    "EmptyIndexError",
    "Hit",
    "IndexCorruptError",
    "IndexLockedError",
    "IndexReport",
    "KbError",
    "KnowledgeBase",
    "PersonaFormatError",
    "PersonaInfo",
    "PersonaNotFoundError",
    "SourceStatus",
    "Status",
    "WorkspaceNotFoundError",
]
