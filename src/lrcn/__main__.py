"""``python -m lrcn`` runs the CLI (also the entry point for torchrun)."""

import sys

from lrcn.cli import main

sys.exit(main())
