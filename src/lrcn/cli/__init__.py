"""The ``lrcn`` command line: the top layer, which only calls into the layers below."""

from lrcn.cli.commands import build_parser, main, print_human, train_config

__all__ = ["build_parser", "main", "print_human", "train_config"]
