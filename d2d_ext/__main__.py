"""``python -m d2d_ext``: the command line (see :mod:`d2d_ext.cli`)."""

import sys

from .cli import main

sys.exit(main())
