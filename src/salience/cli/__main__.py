"""``python -m salience.cli``: the ``salience`` command."""

import sys

from salience.cli import main

if __name__ == "__main__":
    sys.exit(main())
