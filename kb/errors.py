"""kb's exceptions: one tree, each message says what went wrong and what to do next.

    KbError                      base class; ``exit_code`` is what the CLI exits with (1 unless said)
    ├── WorkspaceNotFoundError   no ``.workos/`` folder where kb looked
    ├── ConfigError              kb.toml / KB_* / flag values that are invalid
    ├── PersonaNotFoundError     ``--persona NAME`` names no bundled or workspace persona
    ├── PersonaFormatError       a file that is not a persona document
    ├── EmbedderError            the embedding model cannot be loaded or exported
    ├── EmptyIndexError          a search or question before anything was indexed
    ├── IndexLockedError         another kb process is writing this index (exit 4)
    ├── GeneratorError           the language model backend failed (unreachable, bad key, unknown model, ...)
    ├── IndexCorruptError        the index cannot be read and was not repaired
    ├── StoreUnavailableError    the vector store (a Chroma server) is unreachable or did not answer in time
    ├── DatasetError             an evaluation dataset or question file that cannot be read
    └── BadRequest               a request to a kb server that is malformed (exit 2)

Every class crosses kb's local socket as itself (:mod:`kb.serve.client` rebuilds it by name from this module).

The CLI turns any ``KbError`` into one red line on stderr and ``exit_code``; users never see a traceback for a
known failure.
"""

from __future__ import annotations


class KbError(Exception):
    """Base class of every error kb raises on purpose."""

    exit_code: int = 1


class WorkspaceNotFoundError(KbError):
    pass


class ConfigError(KbError):
    pass


class PersonaNotFoundError(KbError):
    pass


class PersonaFormatError(KbError):
    pass


class EmbedderError(KbError):
    pass


class EmptyIndexError(KbError):
    pass


class IndexLockedError(KbError):
    exit_code = 4


class GeneratorError(KbError):
    pass


class IndexCorruptError(KbError):
    pass


class StoreUnavailableError(KbError):
    """The vector store cannot be reached (a Chroma server down, refusing, or too slow); nothing was
    half-written: the next run completes the work."""


class DatasetError(KbError):
    """A dataset folder or question file that cannot be read."""


class BadRequest(KbError):
    """A request to a kb server that is malformed (unknown method, bad parameters)."""

    exit_code = 2
