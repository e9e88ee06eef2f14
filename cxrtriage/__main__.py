"""``python -m cxrtriage`` is the ``cxr`` command."""

from cxrtriage.cli.main import app

app()
