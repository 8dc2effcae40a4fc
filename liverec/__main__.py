"""``python -m liverec``: the ``liverec`` command."""

from liverec.cli import app

app(prog_name="liverec")
