"""``python -m repdiag`` runs the repdiag CLI."""

import sys

from repdiag.cli import main

sys.exit(main())
