"""The operator at scale: apply to Ready, fleet convergence, deletion, API writes and memory.

Three processes share the machine, as in a cluster: the emulated API server (in this process, on its
asyncio loop, with the benchmark's own client), the real operator (``gadget-operator run``, a process of
its own) and the simulated daemons (``gadget-operator simulate``, one process for every node's daemon).

Timing: every change the emulator commits to a GadgetInstance is seen synchronously (``_store`` is
hooked), so "Ready" is timed at the moment the status write that makes it Ready is committed, with
``time.perf_counter`` resolution (no polling interval). A run starts just before the first create
request is sent (over HTTP, as ``kubectl apply`` would) and ends at the last commit it waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from common import record, simulator_process

from gadget_operator.daemon.client import DaemonClient
from gadget_operator.testing.kube_emulator import KubeEmulator, ResourceType
from gadget_operator.testing.operator_process import OperatorProcess

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "crds" / "gadgetinstances.gadget-operator.io.yaml"
FLOOR = Path(__file__).parent / "results" / "floor.json"
GROUP, VERSION, PLURAL, NAMESPACE = "gadget-operator.io", "v1alpha1", "gadgetinstances", "default"
COLLECTION = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})
CLIENT_CONCURRENCY = 16  # create/delete requests in flight from the benchmark's client (kubectl-like bursts)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROFILE_DIR: Path | None = None  # --py-spy DIR: sample the operator during each fleet's converge and delete

# The design targets (docs/design.md, "Performance targets"), 2-core machine, everything on one box.
TARGETS = {
    "apply_to_ready_1x100_ms": 60,
    "converge_100x100_s": 4.0,
    "creations_per_second_100x100": 2500,
    "converge_200x20_s": 3.0,
    "delete_100x100_s": 2.5,
    "writes_apply_to_ready": 2,
    "writes_steady_state": 0,
    "peak_memory_100x100_mb": 100,
    "peak_memory_1000x50_mb": 200,
}


class ObservedEmulator(KubeEmulator):
    """The emulator, telling the benchmark of every GadgetInstance it commits, as it commits it.

    The emulator has no public change hook; ``_store`` is its single point of change, so it is hooked
    here (a benchmark-only subclass). Each commit is checked for readiness at once: no polling.
    """

    def __init__(self) -> None:
        super().__init__()
        self.expected_ready = ""
        self.ready_at: dict[str, float] = {}
        self.gone_at: dict[str, float] = {}
        self.finalized_at: dict[str, float] = {}  # the operator's finalizer first seen on the object
        self.status_at: dict[str, list[float]] = {}  # every commit that changed the status
        self._waiters: list[tuple[Any, asyncio.Future[None]]] = []

    def _store(self, rt: ResourceType, kind: str, obj: dict[str, Any], prev: dict[str, Any] | None) -> Any:
        stored = super()._store(rt, kind, obj, prev)
        if rt.plural == PLURAL:
            name, now = obj["metadata"]["name"], time.perf_counter()
            if kind == "DELETED":
                self.gone_at.setdefault(name, now)
            else:
                if obj["metadata"].get("finalizers"):
                    self.finalized_at.setdefault(name, now)
                if prev is not None and prev.get("status") != obj.get("status"):
                    self.status_at.setdefault(name, []).append(now)
                if name not in self.ready_at and is_ready(obj, self.expected_ready):
                    self.ready_at[name] = now
            for condition, future in self._waiters:
                if not future.done() and condition():
                    future.set_result(None)
        return stored

    async def until(self, condition: Any, within: float) -> bool:
        """Wait until ``condition()`` holds after a commit (or already holds); False on timeout."""
        if condition():
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (condition, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, within)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters.remove(entry)

    def reset(self, expected_ready: str) -> None:
        self.expected_ready = expected_ready
        for timeline in (self.ready_at, self.gone_at, self.finalized_at, self.status_at):
            timeline.clear()


def is_ready(obj: dict[str, Any], expected_ready: str) -> bool:
    status = obj.get("status") or {}
    return (
        status.get("phase") == "Running"
        and status.get("observedGeneration") == obj["metadata"].get("generation")
        and status.get("ready") == expected_ready
    )


def body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GadgetInstance",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"image": "trace_exec"},
    }


def code_version() -> dict[str, Any]:
    """The operator code being measured: commit, uncommitted changes under operator/, digest of its sources.

    The working tree is shared with other engineers; every world starts a fresh operator process, so a
    digest is taken at each start and a run that saw more than one is flagged.
    """

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    digest = hashlib.sha256()
    for source in sorted((ROOT / "operator" / "gadget_operator").rglob("*.py")):
        digest.update(source.read_bytes())
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "operator_dirty": bool(git("status", "--porcelain", "--", "operator")),
        "sources_sha256": digest.hexdigest()[:16],
    }


CODE_SEEN: list[dict[str, Any]] = []


def proc_status(pid: int) -> dict[str, float]:
    """VmHWM (peak resident set) and VmRSS of a process, in MB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_name = stat[stat.rindex(")") + 2 :].split()
    return (int(after_name[11]) + int(after_name[12])) / CLK_TCK


def simulator_pid() -> int | None:
    """The ``gadget-operator simulate`` child of this process, for its CPU time."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            if parent == os.getpid() and b"simulate" in (entry / "cmdline").read_bytes():
                return int(entry.name)
    return None


@dataclass
class World:
    """Emulator + simulated daemons + operator, for one node count."""

    nodes: dict[str, str]
    emulator: ObservedEmulator
    operator: OperatorProcess
    session: aiohttp.ClientSession
    simulator: int | None
    marks: dict[str, float] = field(default_factory=dict)
    idle_memory: dict[str, float] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.operator.process is not None
        return self.operator.process.pid

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: operator, this process (emulator + client), simulated daemons."""
        result = {"operator": cpu_seconds(self.pid), "emulator_and_client": time.process_time()}
        if self.simulator is not None:
            result["daemons"] = cpu_seconds(self.simulator)
        return result

    async def create(self, names: Iterable[str]) -> None:
        semaphore = asyncio.Semaphore(CLIENT_CONCURRENCY)

        async def one(name: str) -> None:
            async with semaphore, self.session.post(self.emulator.url + COLLECTION, json=body(name)) as response:
                if response.status != 201:
                    raise RuntimeError(f"create {name}: {response.status} {await response.text()}")

        await asyncio.gather(*(one(name) for name in names))

    async def delete(self, names: Iterable[str]) -> None:
        semaphore = asyncio.Semaphore(CLIENT_CONCURRENCY)

        async def one(name: str) -> None:
            async with semaphore, self.session.delete(f"{self.emulator.url}{COLLECTION}/{name}") as response:
                if response.status != 200:
                    raise RuntimeError(f"delete {name}: {response.status} {await response.text()}")

        await asyncio.gather(*(one(name) for name in names))

    async def apply(self, names: list[str], within: float) -> dict[str, Any]:
        """Create ``names`` and wait until every one is Ready on every node."""
        self.emulator.reset(f"{len(self.nodes)}/{len(self.nodes)}")
        cpu_before = self.cpu()
        started = time.perf_counter()
        await self.create(names)
        sent = time.perf_counter()
        done = await self.emulator.until(lambda: len(self.emulator.ready_at) >= len(names), within)
        ready = [self.emulator.ready_at[n] - started for n in names if n in self.emulator.ready_at]
        elapsed = max(ready) if done else time.perf_counter() - started
        return {
            "complete": done,
            "started": started,
            "ready": len(ready),
            "elapsed_s": elapsed,
            "creates_sent_s": sent - started,
            "first_ready_s": min(ready) if ready else None,
            "cpu_s": {k: round(v - cpu_before[k], 2) for k, v in self.cpu().items()},
        }

    async def remove(self, names: list[str], within: float, *, verify: bool = True) -> dict[str, Any]:
        """Delete ``names`` and wait until every one is gone (the operator released its finalizer)."""
        cpu_before = self.cpu()
        started = time.perf_counter()
        await self.delete(names)
        done = await self.emulator.until(lambda: all(n in self.emulator.gone_at for n in names), within)
        elapsed = time.perf_counter() - started
        if done:
            elapsed = max(self.emulator.gone_at[n] for n in names) - started
        left = await self.instances_left() if verify else None
        return {
            "complete": done,
            "elapsed_s": elapsed,
            "instances_left": left,
            "cpu_s": {k: round(v - cpu_before[k], 2) for k, v in self.cpu().items()},
        }

    async def instances_left(self) -> int:
        """Instances still on the daemons (listed from outside the operator, after the clock stopped)."""
        semaphore = asyncio.Semaphore(8)

        async def count(address: str) -> int:
            async with semaphore, DaemonClient(address, timeout=60) as client:
                return len(await client.list_instances())

        return sum(await asyncio.gather(*(count(address) for address in self.nodes.values())))

    def write_counts(self, since: int = 0) -> Counter[tuple[str, str | None, str | None, bool]]:
        """Write requests after request number ``since``: (resource, subresource, name, succeeded) -> count."""
        counts: Counter[tuple[str, str | None, str | None, bool]] = Counter()
        for request in self.emulator.requests[since:]:
            if request.verb in WRITE_VERBS:
                ok = 200 <= request.status < 300
                counts[(request.resource or "", request.subresource, request.name, ok)] += 1
        return counts


@contextlib.contextmanager
def profiled(pid: int, label: str) -> Iterator[None]:
    """With ``--py-spy DIR``: py-spy samples the operator meanwhile (collapsed stacks in DIR/label.txt)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if PROFILE_DIR is None or not Path(py_spy).exists():
        yield
        return
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    out = PROFILE_DIR / f"{label}.txt"
    command = [py_spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--format", "raw"]
    command += ["--output", str(out)]
    sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)
        sampler.wait(timeout=60)


@contextlib.asynccontextmanager
async def world(node_count: int, *, resync: float | None = None) -> AsyncIterator[World]:
    with simulator_process(node_count) as nodes, tempfile.TemporaryDirectory(prefix="gb-op-") as directory:
        emulator = ObservedEmulator()
        await emulator.start()
        emulator.register_crd(yaml.safe_load(CRD.read_text()))
        for name in nodes:
            emulator.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {}}})
        static = Path(directory) / "nodes.yaml"
        static.write_text(yaml.safe_dump(nodes))
        extra = ["--resync-interval", str(resync)] if resync else []
        operator = OperatorProcess(static, kube_server=emulator.url, extra_args=extra)
        version = code_version()
        if version not in CODE_SEEN:
            CODE_SEEN.append(version)
        session = aiohttp.ClientSession()
        try:
            await operator.start()
            current = World(nodes, emulator, operator, session, simulator_pid())
            warm = await current.apply(["warm-up"], within=60)  # all node workers up, channels connected
            if not warm["complete"]:
                raise RuntimeError(f"warm-up never Ready on {node_count} nodes:\n{operator.logs()[-4000:]}")
            gone = await current.remove(["warm-up"], within=60, verify=False)
            if not gone["complete"]:
                raise RuntimeError(f"warm-up never deleted:\n{operator.logs()[-4000:]}")
            current.marks["warm_up_apply_s"] = warm["elapsed_s"]
            await asyncio.sleep(0.5)
            current.idle_memory = proc_status(current.pid)
            yield current
        finally:
            await session.close()
            code = await operator.stop()
            if code not in (0, None):
                print(f"operator exited with {code}; log at {operator.log_path}")
            await emulator.stop()


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def floor_figures() -> dict[str, float]:
    floor = json.loads(FLOOR.read_text())
    return {
        "sequential_calls_per_second": floor["sequential"]["calls_per_second"],
        "sequential_p50_ms": floor["sequential"]["p50_ms"],
        "concurrent_64_calls_per_second": floor["concurrent_64"]["calls_per_second"],
    }


async def apply_to_ready(node_count: int, repeats: int) -> dict[str, Any]:
    """1 resource on ``node_count`` nodes, ``repeats`` times (each deleted again before the next)."""
    async with world(node_count) as current:
        samples: list[float] = []
        finalizer: list[float] = []
        writes: list[int] = []
        for index in range(repeats):
            name = f"single-{index}"
            before = len(current.emulator.requests)
            run = await current.apply([name], within=30)
            if not run["complete"]:
                raise RuntimeError(f"{name} never Ready on {node_count} nodes")
            samples.append(run["elapsed_s"])
            finalizer.append(current.emulator.finalized_at[name] - run["started"])
            await asyncio.sleep(0.3)  # late writes (events, a second status write) would show up here
            counts = current.write_counts(before)
            writes.append(sum(n for (res, _, nm, ok), n in counts.items() if res == PLURAL and nm == name) - 1)
            await current.remove([name], within=30, verify=False)
        return {
            "nodes": node_count,
            "repeats": repeats,
            "median_ms": ms(statistics.median(samples)),
            "max_ms": ms(max(samples)),
            "min_ms": ms(min(samples)),
            "samples_ms": [ms(s) for s in samples],
            "finalizer_committed_median_ms": ms(statistics.median(finalizer)),
            "warm_up_ms": ms(current.marks["warm_up_apply_s"]),
            "writes_per_resource": writes,
            "memory_mb_idle": current.idle_memory,
            "memory_mb": proc_status(current.pid),
        }


def writes_per_resource(current: World, names: list[str], since: int) -> dict[str, Any]:
    """Successful writes to each resource (main + status) from its create to Ready, minus the create."""
    counts = current.write_counts(since)
    wanted = set(names)
    per: Counter[str] = Counter()
    failed = 0
    by_kind: Counter[str] = Counter()
    for (res, sub, name, ok), n in counts.items():
        if res == PLURAL and name in wanted:
            if ok:
                per[name] += n
                by_kind[f"{PLURAL}/{sub}" if sub else PLURAL] += n
            else:
                failed += n
    minus_create = [per[name] - 1 for name in names]
    return {
        "max": max(minus_create),
        "mean": round(statistics.mean(minus_create), 2),
        "by_resource": dict(by_kind),
        "failed_attempts": failed,
        "events_posted": sum(n for (res, _, _, ok), n in counts.items() if res == "events" and ok),
    }


async def fleet(resources: int, node_count: int, *, within: float, resync: float | None = None) -> dict[str, Any]:
    """``resources`` x ``node_count``: all Ready, then (optionally) the steady state, then all deleted."""
    async with world(node_count, resync=resync) as current:
        names = [f"gi-{index:04d}" for index in range(resources)]
        before = len(current.emulator.requests)
        label = f"{resources}x{node_count}" + ("-steady" if resync else "")
        with profiled(current.pid, f"{label}-converge"):
            run = await current.apply(names, within=within)
        instances = run["ready"] * node_count
        result: dict[str, Any] = {
            "resources": resources,
            "nodes": node_count,
            "instances": resources * node_count,
            "complete": run["complete"],
            "converge_s": round(run["elapsed_s"], 3),
            "creates_sent_s": round(run["creates_sent_s"], 3),
            "first_ready_ms": ms(run["first_ready_s"]) if run["first_ready_s"] is not None else None,
            "creations_per_second": round(instances / run["elapsed_s"]),
            "cpu_s_converge": run["cpu_s"],
            "memory_mb_idle": current.idle_memory,
            "memory_mb_after_converge": proc_status(current.pid),
        }
        if not run["complete"]:
            result["ready_when_stopped"] = run["ready"]
            result["memory_mb"] = proc_status(current.pid)
            return result
        ready_at, status_at = current.emulator.ready_at, current.emulator.status_at
        result["status_changes_until_ready"] = {
            "mean": round(statistics.mean(len([t for t in status_at[n] if t <= ready_at[n]]) for n in names), 2),
            "max": max(len([t for t in status_at[n] if t <= ready_at[n]]) for n in names),
        }
        await asyncio.sleep(0.5)
        result["writes_apply_to_ready"] = writes_per_resource(current, names, before)
        if resync:
            since = len(current.emulator.requests)
            cpu_before = current.cpu()
            await asyncio.sleep(2.5 * resync)
            counts = current.write_counts(since)
            result["steady_state"] = {
                "resync_interval_s": resync,
                "window_s": 2.5 * resync,
                "writes": sum(n for key, n in counts.items() if key[3]),
                "writes_by_resource": dict(Counter(key[0] for key in counts for _ in range(counts[key]))),
                "requests": len(current.emulator.requests) - since,
                "cpu_s": {k: round(v - cpu_before[k], 2) for k, v in current.cpu().items()},
            }
        with profiled(current.pid, f"{label}-delete"):
            gone = await current.remove(names, within=within)
        result["delete"] = {
            "complete": gone["complete"],
            "elapsed_s": round(gone["elapsed_s"], 3),
            "instances_left": gone["instances_left"],
            "cpu_s": gone["cpu_s"],
        }
        result["memory_mb"] = proc_status(current.pid)
        return result


async def fleets(resources: int, node_count: int, repeats: int, *, within: float) -> dict[str, Any]:
    """``fleet`` ``repeats`` times, each in a fresh world; medians and worst cases over the runs."""
    runs = [await fleet(resources, node_count, within=within) for _ in range(repeats)]
    done = [run for run in runs if run["complete"] and run["delete"]["complete"]]
    summary: dict[str, Any] = {
        "resources": resources,
        "nodes": node_count,
        "instances": resources * node_count,
        "repeats": repeats,
        "complete": len(done) == len(runs),
        "peak_memory_mb": max(run["memory_mb"]["VmHWM"] for run in runs),
        "idle_memory_mb": max(run["memory_mb_idle"]["VmHWM"] for run in runs),
    }
    if done:
        converge = [run["converge_s"] for run in done]
        delete = [run["delete"]["elapsed_s"] for run in done]
        writes = [run["writes_apply_to_ready"]["max"] for run in done]
        summary |= {
            "converge_s": round(statistics.median(converge), 3),
            "converge_s_max": max(converge),
            "creations_per_second": round(resources * node_count / statistics.median(converge)),
            "delete_s": round(statistics.median(delete), 3),
            "delete_s_max": max(delete),
            "writes_apply_to_ready_max": max(writes),
            "instances_left_after_delete": max(run["delete"]["instances_left"] for run in done),
        }
    return summary | {"runs": runs}


def compare(results: dict[str, Any], floor: dict[str, float]) -> dict[str, Any]:
    """Each figure against the floor (the RPC alone) and against the design target."""
    p50, calls = floor["sequential_p50_ms"], floor["concurrent_64_calls_per_second"]
    out: dict[str, Any] = {}
    for key in ("apply_1x10", "apply_1x100"):
        if key in results:
            n = results[key]["nodes"]
            out[key] = {
                "sequential_creates_at_floor_p50_ms": round(n * p50, 1),
                "x_sequential_floor": round(results[key]["median_ms"] / (n * p50), 2),
                "creates_at_floor_concurrent_rate_ms": round(n / calls * 1000, 1),
                "x_concurrent_floor": round(results[key]["median_ms"] / (n / calls * 1000), 2),
            }
    for key in ("fleet_100x100", "fleet_200x20", "fleet_1000x50"):
        if key in results and results[key].get("complete"):
            rate = results[key]["creations_per_second"]
            out[key] = {
                "creations_per_second": rate,
                "floor_concurrent_calls_per_second": calls,
                "fraction_of_floor": round(rate / calls, 2),
                "converge_at_floor_rate_s": round(results[key]["instances"] / calls, 2),
                "x_converge_at_floor_rate": round(results[key]["converge_s"] * calls / results[key]["instances"], 1),
            }
    return out


def verdict(results: dict[str, Any]) -> dict[str, Any]:
    """Met or not, per design target."""
    checks: dict[str, Any] = {}

    def check(name: str, measured: float | None, target: float, *, at_least: bool = False) -> None:
        if measured is None:
            checks[name] = {"target": target, "measured": None, "met": None}  # not run, or did not finish
        else:
            met = measured >= target if at_least else measured <= target
            checks[name] = {"target": target, "measured": measured, "met": met}

    big = results.get("fleet_100x100", {})
    small = results.get("fleet_200x20", {})
    huge = results.get("fleet_1000x50", {})
    steady = results.get("steady_state_100x100", {}).get("steady_state", {})
    check("apply_to_ready_1x100_ms", results.get("apply_1x100", {}).get("median_ms"), 60)
    check("converge_100x100_s", big.get("converge_s"), 4.0)
    check("creations_per_second_100x100", big.get("creations_per_second"), 2500, at_least=True)
    check("converge_200x20_s", small.get("converge_s"), 3.0)
    check("delete_100x100_s", big.get("delete_s"), 2.5)
    single = results.get("apply_1x100", {}).get("writes_per_resource") or [None]
    check("writes_apply_to_ready_1x100", max(single) if None not in single else None, 2)
    check("writes_apply_to_ready_100x100", big.get("writes_apply_to_ready_max"), 2)
    check("writes_steady_state", steady.get("writes"), 0)
    check("peak_memory_100x100_mb", big.get("peak_memory_mb"), 100)
    check("peak_memory_1000x50_mb", huge.get("memory_mb", {}).get("VmHWM"), 200)
    return checks


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    wanted = set(args.only.split(",")) if args.only else None

    def selected(name: str) -> bool:
        return wanted is None or name in wanted

    started = time.perf_counter()
    if selected("apply_1x10"):
        results["apply_1x10"] = await apply_to_ready(10, args.repeats)
    if selected("apply_1x100"):
        results["apply_1x100"] = await apply_to_ready(100, args.repeats)
    if selected("fleet_100x100"):
        results["fleet_100x100"] = await fleets(100, 100, args.fleet_repeats, within=args.timeout)
    if selected("fleet_200x20"):
        results["fleet_200x20"] = await fleets(200, 20, args.fleet_repeats, within=args.timeout)
    if selected("steady_state_100x100"):
        results["steady_state_100x100"] = await fleet(100, 100, within=args.timeout, resync=2.0)
    if selected("fleet_1000x50") and not args.skip_large:
        results["fleet_1000x50"] = await fleet(1000, 50, within=args.large_timeout)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["code"] = CODE_SEEN[0] if len(CODE_SEEN) == 1 else {"changed_during_run": CODE_SEEN}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="apply-to-Ready runs per node count")
    parser.add_argument("--fleet-repeats", type=int, default=3, help="runs of 100 x 100 and of 200 x 20")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a fleet may take to converge")
    parser.add_argument("--large-timeout", type=float, default=600.0, help="the same, for 1000 x 50")
    parser.add_argument("--skip-large", action="store_true", help="skip 1000 x 50")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated subset: apply_1x10, apply_1x100, fleet_100x100, fleet_200x20, "
        "steady_state_100x100, fleet_1000x50",
    )
    parser.add_argument("--py-spy", metavar="DIR", help="profile the operator with py-spy (if installed) into DIR")
    args = parser.parse_args()
    global PROFILE_DIR
    PROFILE_DIR = Path(args.py_spy).resolve() if args.py_spy else None
    results = asyncio.run(main_async(args))
    floor = floor_figures()
    record(
        "operator-partial" if args.only or args.skip_large else "operator",
        {
            "setup": {
                "processes": "emulated API server + benchmark client | operator | simulated daemons (unix sockets)",
                "timing": "each GadgetInstance commit in the emulator is seen synchronously (perf_counter); "
                "a run starts when the first create is sent",
                "operator_flags": "defaults (--max-concurrency 64 --node-concurrency 8 --resync-interval 30); "
                "steady state: --resync-interval 2",
                "client_concurrency": CLIENT_CONCURRENCY,
            },
            "floor": floor,
            **results,
            "vs_floor": compare(results, floor),
            "targets": verdict(results),
        },
    )


if __name__ == "__main__":
    main()
