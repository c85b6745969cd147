"""``python -m neuros.plugins.cv.cli`` runs the CLI."""

import sys

from . import main

sys.exit(main())
