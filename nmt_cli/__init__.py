"""nmt_cli: a readable, fast command-line toolkit for neural machine translation."""

__version__ = "0.1.0"
