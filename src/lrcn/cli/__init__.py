"""The ``lrcn`` command line: the top layer, which only calls into the layers below."""

from lrcn.cli.commands import main
from lrcn.cli.output import print_human
from lrcn.cli.parser import build_parser, train_config

__all__ = ["build_parser", "main", "print_human", "train_config"]
