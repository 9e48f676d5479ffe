#!/usr/bin/env python
"""Result tables and plots from results.json files; see runner/aggregate/ (collect, stats, tables, plots, report).

    python scripts/aggregate.py [outputs/ | <sweep dir> ...] [--baseline adapter] [--by trainer.lr] [--out DIR]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.aggregate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
