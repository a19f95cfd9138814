"""Run the benchmarks (``make bench``); each writes ``bench/results/<name>.json`` and prints it."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

BENCHMARKS = {"floor": "floor.py", "operator": "operator_scale.py"}


def main() -> None:
    wanted = sys.argv[1:] or list(BENCHMARKS)
    here = Path(__file__).parent
    sys.path.insert(0, str(here))
    for name in wanted:
        sys.argv = [BENCHMARKS[name]]
        runpy.run_path(str(here / BENCHMARKS[name]), run_name="__main__")


if __name__ == "__main__":
    main()
