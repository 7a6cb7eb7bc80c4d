"""`python -m gureum` runs the `gureum` command."""

from gureum.cli.main import app

app(prog_name="gureum")
