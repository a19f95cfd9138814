"""Shared benchmark helpers: a simulator fleet in its own process, percentiles, result files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

RESULTS = Path(__file__).parent / "results"


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@contextlib.contextmanager
def simulator_process(nodes: int, *, transport: str = "unix") -> Iterator[dict[str, str]]:
    """``gadget-operator simulate`` in its own process, as a separate daemon would be; yields node -> address."""
    with tempfile.TemporaryDirectory(prefix="gb-") as directory:
        out = Path(directory) / "nodes.yaml"
        command = [sys.executable, "-m", "gadget_operator", "simulate", "--nodes", str(nodes)]
        command += ["--transport", transport, "--dir", directory, "--no-store", "--static-nodes-out", str(out)]
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stderr is not None
            line = process.stderr.readline()  # "serving N simulated daemons" once the map is written
            if "serving" not in line:
                raise RuntimeError(f"simulator did not start: {line}{process.stderr.read()}")
            yield yaml.safe_load(out.read_text())
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a stuck simulator must not outlive the benchmark
                process.kill()
                process.wait()


def record(name: str, result: dict[str, object]) -> None:
    RESULTS.mkdir(exist_ok=True)
    result = {
        "benchmark": name,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        **result,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
