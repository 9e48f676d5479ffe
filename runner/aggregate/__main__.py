"""``python -m runner.aggregate``: see :mod:`runner.aggregate`."""

import sys

from runner.aggregate.report import main

sys.exit(main())
