"""What every ``cxr`` command shares: the consoles and the one way to fail."""

from __future__ import annotations

import typer
from rich import box
from rich.console import Console
from rich.table import Table

#: Exit statuses of the verbs that score films (``cxr predict``, ``cxr explain``): 0 when every
#: film was scored; the others still run to the end and print every result.
EXIT_OK = 0
EXIT_USAGE = 2        # the command could not run: bad options, no model, no inputs
EXIT_UNREADABLE = 3   # at least one input could not be read (corrupt, not an image, too small, ...)
EXIT_REFUSED = 4      # none unreadable, but the quality gates refused at least one film
EXIT_CODES_HELP = ("Exit status: 0 every film scored; 2 the command could not run; 3 some input could not be "
                   "read; 4 the quality gates refused some film (every result is printed either way).")

console = Console()
err = Console(stderr=True, soft_wrap=True)


def table(title: str) -> Table:
    """A table that stays readable in an 80-column terminal: light rules, no outer padding."""
    return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)


def fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)
