"""Shared benchmark helpers: a simulator fleet in its own process, percentiles, result files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


@dataclass
class Simulator:
    """A running ``gadget-operator simulate``: its node -> address map, process and log (its stderr)."""

    nodes: dict[str, str]
    pid: int
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        return _text(self.log)[-chars:]


@contextlib.asynccontextmanager
async def simulator_process_async(
    nodes: int, *, extra_args: Sequence[str] = (), within: float = 300.0
) -> AsyncIterator[Simulator]:
    """``simulator_process`` for a caller whose event loop must keep running meanwhile (the simulated daemons of
    the shared store list and watch ConfigMaps on an API server that may be served by that very loop).

    stderr goes to a file, so a simulator that logs a lot never blocks on a full pipe."""
    with tempfile.TemporaryDirectory(prefix="gb-") as directory:
        out = Path(directory) / "nodes.yaml"
        log = Path(tempfile.mkstemp(prefix="gadget-simulate-", suffix=".log")[1])
        command = ["-m", "gadget_operator", "simulate", "--nodes", str(nodes), "--transport", "unix"]
        command += ["--dir", directory, "--no-store", "--static-nodes-out", str(out), *extra_args]
        with _append(log) as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable, *command, stdout=asyncio.subprocess.DEVNULL, stderr=sink
            )
        try:
            deadline = time.monotonic() + within
            while "serving" not in _text(log):  # the node map is written before this line
                if process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"simulator did not start: {_text(log)[-4000:]}")
                await asyncio.sleep(0.05)
            yield Simulator(yaml.safe_load(_text(out)), process.pid, log)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:  # a stuck simulator must not outlive the benchmark
                process.kill()
                await process.wait()


def _append(path: Path) -> BinaryIO:
    return path.open("ab")


def _text(path: Path) -> str:
    return path.read_text(errors="replace")


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
