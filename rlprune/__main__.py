"""``python -m rlprune`` is the same as the ``rlprune`` command."""

import sys

from rlprune.cli import main

sys.exit(main())
