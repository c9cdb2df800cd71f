"""``python -m verl_agrae.eval``: same as ``verl-agrae eval``."""

import sys

from verl_agrae.eval.cli import main

sys.exit(main())
