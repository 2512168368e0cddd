"""`python -m nmt_cli ...` runs the `nmt` command; torchrun starts training processes this way."""

from nmt_cli.cli import app

app(prog_name="nmt")
