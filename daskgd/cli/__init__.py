"""The ``daskgd`` command line."""

from daskgd.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
