"""``python -m train ...`` is ``repdiag train ...``."""

import sys

from repdiag.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
