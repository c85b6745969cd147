#!/usr/bin/env python
"""Create ``dino_advanced_experiments.ipynb``, the report's notebook (as the report names this script).

A thin wrapper around ``neuros-cv notebook``; every option of that command works here, e.g.::

    python create_advanced_notebook.py                      # writes dino_advanced_experiments.ipynb
    python create_advanced_notebook.py --overwrite --execute
    python create_advanced_notebook.py --config quick --out quick.ipynb
"""

from __future__ import annotations

import sys

from neuros.plugins.cv.cli import main

if __name__ == "__main__":
    sys.exit(main(["notebook", *sys.argv[1:]]))
