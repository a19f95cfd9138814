"""``gadget-operator demo`` runs to its end and exits 0, with the operator's control API in it: the event
stream beside the status table and a resync intent after the daemon restart."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_the_demo_runs_to_its_end_streaming_the_operators_events() -> None:
    env = dict(os.environ, COLUMNS="200")  # one line per sentence in the transcript (not a terminal)
    result = subprocess.run(
        [sys.executable, "-m", "gadget_operator", "demo"],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "demo finished: every resource converged" in result.stdout
    assert "gadget-operator ctl resync node/worker-1: accepted" in result.stdout, output[-5000:]
    streamed = re.search(r"the operator's control API streamed (\d+) events", result.stdout)
    assert streamed is not None, output[-5000:]
    assert int(streamed.group(1)) > 0
    assert "the operator's events (gadget-operator ctl events --follow)" in result.stdout
