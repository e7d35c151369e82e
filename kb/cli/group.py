"""The one place where the CLI turns failures into output and exit codes.

Every kb command runs inside :class:`KbGroup`: a :class:`kb.errors.KbError` from any command or sub-command
becomes one red line on stderr (``error: <message>``) and the error's ``exit_code``; Ctrl-C becomes
``interrupted`` and exit 130; a file system failure (disk full, read-only, I/O error) that escaped as an
OSError is one line too. Commands themselves never catch kb errors.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from kb.cli.options import err
from kb.errors import KbError, storage_error

EXIT_INTERRUPTED = 130


class KbGroup(TyperGroup):
    """A Typer command group whose commands' kb errors are reported here, once, the same way."""

    def invoke(self, ctx: Any) -> Any:  # ctx: typer's click Context (a vendored module, so not named here)
        try:
            return super().invoke(ctx)
        except KbError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # a file system failure kb did not expect where it happened: still one line
            failure = storage_error(exc, exc.filename or "a file kb uses")
            if failure is None:
                raise
            err.print(f"[bold red]error:[/] {escape(str(failure))}")
            raise typer.Exit(failure.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None


def command_group(name: str, help: str, **settings: Any) -> typer.Typer:
    """A Typer app (the ``kb`` app or a sub-app such as ``kb resources``) that reports errors through
    :class:`KbGroup` and renders help as plain text."""
    return typer.Typer(
        name=name, help=help, cls=KbGroup, no_args_is_help=True, rich_markup_mode=None, **settings
    )
