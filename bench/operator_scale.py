"""The operator at scale, for both daemon stores: apply to Ready, fleet convergence, deletion, API writes,
daemon calls, CPU and memory.

Three processes share the machine, as in a cluster: the emulated API server (in this process, on its
asyncio loop, with the benchmark's own client), the real operator (``gadget-operator run``, a process of
its own) and the simulated daemons (``gadget-operator simulate``, one process for every node's daemon).
Every scenario runs once per store: ``per-node`` (standalone ``ig daemon``s, one instance per resource
and node) and ``shared`` (IG's DaemonSet: one ConfigMap per resource in the emulated API server, which
the simulator process writes through its daemons and watches).

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
import grpc.aio
import message_sizes
import yaml
from common import Simulator, record, simulator_process_async

from gadget_operator.daemon.client import DaemonClient
from gadget_operator.daemon.pb import api_pb2, api_pb2_grpc
from gadget_operator.testing.kube_emulator import KubeEmulator, ResourceType
from gadget_operator.testing.operator_process import OperatorProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "crds"
FLOOR = Path(__file__).parent / "results" / "floor.json"
GROUP, VERSION, PLURAL, NAMESPACE = "gadget-operator.io", "v1alpha1", "gadgetinstances", "default"
COLLECTION = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})
CLIENT_CONCURRENCY = 16  # create/delete requests in flight from the benchmark's client (kubectl-like bursts)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROFILE_DIR: Path | None = None  # --py-spy DIR: sample the operator during each fleet's converge and delete
STORES = ("per-node", "shared")
STORE_NAMESPACE = "gadget"  # IG's daemon namespace: the shared store's ConfigMaps (--daemon-namespace)
RESYNC_DEFAULT = 30.0  # the operator's --resync-interval default; the large fleets count calls over one interval
BENCH_AGENT = "gadget-bench"  # the User-Agent of the benchmark's own requests (the "user")
SIMULATOR_AGENT = "gadget-operator-simulate"  # the simulated daemons' API requests (shared store)

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
    "operator_cpu_us_per_instance": 250,
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


def actor(user_agent: str) -> str:
    """Who sent a request to the emulator: the benchmark (the user), the simulated daemons, or the operator."""
    if user_agent.startswith(BENCH_AGENT):
        return "bench"
    if user_agent.startswith(SIMULATOR_AGENT):
        return "daemons"
    return "operator"


@dataclass
class World:
    """Emulator + simulated daemons + operator, for one node count and one daemon store."""

    store: str
    nodes: dict[str, str]
    emulator: ObservedEmulator
    operator: OperatorProcess
    session: aiohttp.ClientSession
    simulator: Simulator
    stats_url: str
    marks: dict[str, float] = field(default_factory=dict)
    idle_memory: dict[str, float] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.operator.process is not None
        return self.operator.process.pid

    @property
    def shared(self) -> bool:
        return self.store == "shared"

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: operator, this process (emulator + client), simulated daemons."""
        return {
            "operator": cpu_seconds(self.pid),
            "emulator_and_client": time.process_time(),
            "daemons": cpu_seconds(self.simulator.pid),
        }

    async def stats(self) -> dict[str, Any]:
        """The simulator's own count of the calls its daemons answered, and of the instances they run."""
        async with self.session.get(self.stats_url) as response:
            result: dict[str, Any] = await response.json()
            return result

    async def calls(self) -> Counter[str]:
        return Counter((await self.stats())["calls"])

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
        calls_before = await self.calls()
        started = time.perf_counter()
        await self.create(names)
        sent = time.perf_counter()
        done = await self.emulator.until(lambda: len(self.emulator.ready_at) >= len(names), within)
        ready = [self.emulator.ready_at[n] - started for n in names if n in self.emulator.ready_at]
        elapsed = max(ready) if done else time.perf_counter() - started
        cpu = {k: round(v - cpu_before[k], 3) for k, v in self.cpu().items()}
        return {
            "complete": done,
            "started": started,
            "ready": len(ready),
            "elapsed_s": elapsed,
            "creates_sent_s": sent - started,
            "first_ready_s": min(ready) if ready else None,
            "cpu_s": cpu,
            "daemon_calls": dict((await self.calls()) - calls_before),
        }

    async def remove(self, names: list[str], within: float, *, verify: bool = True) -> dict[str, Any]:
        """Delete ``names`` and wait until every one is gone (the operator released its finalizer)."""
        cpu_before = self.cpu()
        calls_before = await self.calls()
        since = len(self.emulator.requests)
        started = time.perf_counter()
        await self.delete(names)
        done = await self.emulator.until(lambda: all(n in self.emulator.gone_at for n in names), within)
        elapsed = time.perf_counter() - started
        if done:
            elapsed = max(self.emulator.gone_at[n] for n in names) - started
        cpu = {k: round(v - cpu_before[k], 3) for k, v in self.cpu().items()}
        calls = (await self.calls()) - calls_before
        return {
            "complete": done,
            "elapsed_s": elapsed,
            "left": await self.leftovers() if verify else None,
            "cpu_s": cpu,
            "daemon_calls": dict(sorted(calls.items())),
            "api_requests": self.requests_by_actor(since) if verify else None,
        }

    def configmaps(self) -> int:
        """The shared store's ConfigMaps the API server holds."""
        return len(self.emulator.list_objects("v1", "configmaps", STORE_NAMESPACE))

    async def leftovers(self) -> dict[str, Any]:
        """What is left once every resource is gone (looked at from outside the operator, after the clock
        stopped): what the daemons list, what they run (the simulator's ground truth) and, for the shared
        store, the ConfigMaps. A daemon stops a run when its informer sees the ConfigMap go, so a run may
        outlive its ConfigMap for a moment: the wait for none running is timed too."""
        semaphore = asyncio.Semaphore(8)

        async def count(address: str) -> int:
            async with semaphore, DaemonClient(address, timeout=60) as client:
                return len(await client.list_instances())

        listed = sum(await asyncio.gather(*(count(address) for address in self.nodes.values())))
        started = time.perf_counter()
        running = at_gone = (await self.stats())["running"]
        while running and time.perf_counter() - started < 5:
            await asyncio.sleep(0.1)
            running = (await self.stats())["running"]
        left: dict[str, Any] = {"listed_by_daemons": listed, "running_at_gone": at_gone, "running": running}
        if at_gone:
            left["running_zero_after_s"] = round(time.perf_counter() - started, 2) if not running else None
        if self.shared:
            left["configmaps"] = self.configmaps()
        left["total"] = listed + running + left.get("configmaps", 0)
        return left

    async def list_size(self, node: str) -> dict[str, int]:
        """One daemon's ListGadgetInstances answer as encoded on the wire (protobuf bytes)."""
        async with grpc.aio.insecure_channel(self.nodes[node]) as channel:
            stub = api_pb2_grpc.GadgetInstanceManagerStub(channel)
            response = await stub.ListGadgetInstances(api_pb2.ListGadgetInstancesRequest(), timeout=60)
        size, count = response.ByteSize(), len(response.gadgetInstances)
        return {"instances": count, "bytes": size, "bytes_per_instance": round(size / count) if count else 0}

    def write_counts(self, since: int = 0) -> Counter[tuple[str, str | None, str | None, bool]]:
        """Write requests after request number ``since``: (resource, subresource, name, succeeded) -> count."""
        counts: Counter[tuple[str, str | None, str | None, bool]] = Counter()
        for request in self.emulator.requests[since:]:
            if request.verb in WRITE_VERBS:
                ok = 200 <= request.status < 300
                counts[(request.resource or "", request.subresource, request.name, ok)] += 1
        return counts

    def requests_by_actor(self, since: int = 0) -> dict[str, dict[str, int]]:
        """API requests after request number ``since``, per sender: ``"verb resource[/subresource]"`` -> count."""
        out: dict[str, Counter[str]] = {}
        for request in self.emulator.requests[since:]:
            what = f"{request.verb} {request.resource or request.path}"
            what += f"/{request.subresource}" if request.subresource else ""
            out.setdefault(actor(request.user_agent), Counter())[what] += 1
        return {who: dict(sorted(counts.items())) for who, counts in sorted(out.items())}

    def configmap_creates(self, since: int = 0) -> dict[str, int]:
        """ConfigMap create requests (the shared store's writes, made by the daemons) after ``since``."""
        counts: Counter[str] = Counter()
        for request in self.emulator.requests[since:]:
            if request.verb == "create" and request.resource == "configmaps":
                counts["succeeded" if 200 <= request.status < 300 else f"failed_{request.status}"] += 1
        return dict(counts)


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


class ScenarioFailed(RuntimeError):
    """A world that could not even warm up; the message carries the operator's and the simulator's log tails."""


@contextlib.asynccontextmanager
async def world(node_count: int, store: str, *, resync: float | None = None) -> AsyncIterator[World]:
    """A fresh emulator, simulator and operator. Torn down in reverse: operator, simulator, emulator."""
    emulator = ObservedEmulator()
    await emulator.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(emulator.stop)
        for crd in sorted(CRDS.glob("*.gadget-operator.io.yaml")):
            emulator.register_crd(yaml.safe_load(crd.read_text()))
        emulator.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": STORE_NAMESPACE}})
        stats_port = free_port()
        simulate = ["--daemon-store", store, "--init-delay", "0", "--stats-port", str(stats_port)]
        if store == "shared":
            simulate += ["--kube-server", emulator.url, "--store-namespace", STORE_NAMESPACE]
        simulator = await stack.enter_async_context(simulator_process_async(node_count, extra_args=simulate))
        for name in simulator.nodes:
            emulator.put({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {}}})
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="gb-op-"))
        static = Path(directory) / "nodes.yaml"
        static.write_text(yaml.safe_dump(simulator.nodes))
        extra = ["--daemon-store", store, "--daemon-namespace", STORE_NAMESPACE]
        extra += ["--resync-interval", str(resync)] if resync else []
        operator = OperatorProcess(static, kube_server=emulator.url, extra_args=extra)
        version = code_version()
        if version not in CODE_SEEN:
            CODE_SEEN.append(version)
        session = aiohttp.ClientSession(headers={"User-Agent": BENCH_AGENT})
        stack.push_async_callback(session.close)
        stack.push_async_callback(stop_operator, operator)
        await operator.start()
        stats_url = f"http://127.0.0.1:{stats_port}/stats"
        current = World(store, simulator.nodes, emulator, operator, session, simulator, stats_url)
        warm = await current.apply(["warm-up"], within=60)  # all node workers up, channels connected
        if not warm["complete"]:
            raise ScenarioFailed(f"warm-up never Ready on {node_count} nodes ({store}):\n{log_tails(current)}")
        gone = await current.remove(["warm-up"], within=60, verify=False)
        if not gone["complete"]:
            raise ScenarioFailed(f"warm-up never deleted ({store}):\n{log_tails(current)}")
        current.marks["warm_up_apply_s"] = warm["elapsed_s"]
        await asyncio.sleep(0.5)
        current.idle_memory = proc_status(current.pid)
        yield current


async def stop_operator(operator: OperatorProcess) -> None:
    code = await operator.stop()
    if code not in (0, None):
        print(f"operator exited with {code}; log at {operator.log_path}", file=sys.stderr)


def log_tails(current: World, chars: int = 3000) -> str:
    try:
        operator, simulator = current.operator.logs()[-chars:], current.simulator.log_tail(chars)
    except OSError as error:
        return f"logs unreadable: {error}"
    return (
        f"--- operator log ({current.operator.log_path}), last {chars} characters:\n{operator}\n"
        f"--- simulator log ({current.simulator.log}):\n{simulator}"
    )


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def floor_figures() -> dict[str, float]:
    floor = json.loads(FLOOR.read_text())
    return {
        "sequential_calls_per_second": floor["sequential"]["calls_per_second"],
        "sequential_p50_ms": floor["sequential"]["p50_ms"],
        "concurrent_64_calls_per_second": floor["concurrent_64"]["calls_per_second"],
    }


async def apply_to_ready(node_count: int, store: str, repeats: int) -> dict[str, Any]:
    """1 resource on ``node_count`` nodes, ``repeats`` times (each deleted again before the next)."""
    async with world(node_count, store) as current:
        samples: list[float] = []
        finalizer: list[float] = []
        writes: list[int] = []
        calls: Counter[str] = Counter()
        for index in range(repeats):
            name = f"single-{index}"
            before = len(current.emulator.requests)
            run = await current.apply([name], within=30)
            if not run["complete"]:
                raise ScenarioFailed(f"{name} never Ready on {node_count} nodes ({store}):\n{log_tails(current)}")
            samples.append(run["elapsed_s"])
            calls.update(run["daemon_calls"])
            finalizer.append(current.emulator.finalized_at[name] - run["started"])
            await asyncio.sleep(0.3)  # late writes (events, a second status write) would show up here
            counts = current.write_counts(before)
            writes.append(sum(n for (res, _, nm, ok), n in counts.items() if res == PLURAL and nm == name) - 1)
            await current.remove([name], within=30, verify=False)
        return {
            "store": store,
            "nodes": node_count,
            "repeats": repeats,
            "median_ms": ms(statistics.median(samples)),
            "max_ms": ms(max(samples)),
            "min_ms": ms(min(samples)),
            "samples_ms": [ms(s) for s in samples],
            "finalizer_committed_median_ms": ms(statistics.median(finalizer)),
            "warm_up_ms": ms(current.marks["warm_up_apply_s"]),
            "writes_per_resource": writes,
            "daemon_calls_per_apply": {method: round(n / repeats, 1) for method, n in sorted(calls.items())},
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


async def observe(current: World, window: float, resync: float) -> dict[str, Any]:
    """A converged world left alone for ``window`` seconds: writes, API requests and daemon calls, also per
    resync interval (every node worker looks at its daemon once per interval, jittered by 10%)."""
    since = len(current.emulator.requests)
    cpu_before = current.cpu()
    calls_before = await current.calls()
    await asyncio.sleep(window)
    calls = (await current.calls()) - calls_before
    cpu = {k: round(v - cpu_before[k], 3) for k, v in current.cpu().items()}
    counts = current.write_counts(since)
    intervals = window / resync
    requests = current.requests_by_actor(since)
    operator_requests = sum(requests.get("operator", {}).values())
    return {
        "resync_interval_s": resync,
        "window_s": window,
        "writes": sum(n for key, n in counts.items() if key[3]),
        "writes_by_resource": dict(Counter(key[0] for key in counts for _ in range(counts[key]))),
        "requests": len(current.emulator.requests) - since,
        "requests_by_actor": requests,
        "operator_requests_per_resync": round(operator_requests / intervals, 1),
        "daemon_calls": dict(sorted(calls.items())),
        "daemon_calls_per_resync": {method: round(n / intervals, 1) for method, n in sorted(calls.items())},
        "daemon_calls_per_node_per_resync": round(sum(calls.values()) / intervals / len(current.nodes), 2),
        "cpu_s": cpu,
        "operator_cpu_s_per_resync": round(cpu["operator"] / intervals, 3),
    }


async def fleet(
    resources: int,
    node_count: int,
    store: str,
    *,
    within: float,
    resync: float | None = None,
    window: float | None = None,
) -> dict[str, Any]:
    """``resources`` x ``node_count``: all Ready, then (with ``window``) the steady state, then all deleted."""
    async with world(node_count, store, resync=resync) as current:
        names = [f"gi-{index:04d}" for index in range(resources)]
        before = len(current.emulator.requests)
        label = f"{store}-{resources}x{node_count}" + ("-steady" if resync else "")
        with profiled(current.pid, f"{label}-converge"):
            run = await current.apply(names, within=within)
        pairs = run["ready"] * node_count
        result: dict[str, Any] = {
            "store": store,
            "resources": resources,
            "nodes": node_count,
            "pairs": resources * node_count,
            "complete": run["complete"],
            "converge_s": round(run["elapsed_s"], 3),
            "creates_sent_s": round(run["creates_sent_s"], 3),
            "first_ready_ms": ms(run["first_ready_s"]) if run["first_ready_s"] is not None else None,
            "pairs_proven_running": pairs,
            "creations_per_second": round(pairs / run["elapsed_s"]),
            "cpu_s_converge": run["cpu_s"],
            "operator_cpu_us_per_instance": round(run["cpu_s"]["operator"] / pairs * 1e6) if pairs else None,
            "daemon_calls_converge": dict(sorted(run["daemon_calls"].items())),
            "daemon_calls_per_pair": round(sum(run["daemon_calls"].values()) / pairs, 2) if pairs else None,
            "running_after_converge": (await current.stats())["running"],
            "memory_mb_idle": current.idle_memory,
            "memory_mb_after_converge": proc_status(current.pid),
        }
        if current.shared:
            created = current.configmap_creates(before)
            result["store_instances_created"] = created.get("succeeded", 0)
            result["configmap_create_requests"] = created
        else:
            result["store_instances_created"] = pairs  # one instance per (resource, node)
        result["store_instances_per_second"] = round(result["store_instances_created"] / run["elapsed_s"])
        if not run["complete"]:
            result["ready_when_stopped"] = run["ready"]
            result["memory_mb"] = proc_status(current.pid)
            result["api_requests_converge"] = current.requests_by_actor(before)
            result["logs"] = log_tails(current)
            return result
        ready_at, status_at = current.emulator.ready_at, current.emulator.status_at
        result["status_changes_until_ready"] = {
            "mean": round(statistics.mean(len([t for t in status_at[n] if t <= ready_at[n]]) for n in names), 2),
            "max": max(len([t for t in status_at[n] if t <= ready_at[n]]) for n in names),
        }
        await asyncio.sleep(0.5)
        result["writes_apply_to_ready"] = writes_per_resource(current, names, before)
        result["api_requests_converge"] = current.requests_by_actor(before)
        result["list_answer"] = await current.list_size(next(iter(current.nodes)))
        if window:
            result["steady_state"] = await observe(current, window, resync or RESYNC_DEFAULT)
        with profiled(current.pid, f"{label}-delete"):
            gone = await current.remove(names, within=within)
        result["delete"] = {
            "complete": gone["complete"],
            "elapsed_s": round(gone["elapsed_s"], 3),
            "left": gone["left"],
            "cpu_s": gone["cpu_s"],
            "daemon_calls": gone["daemon_calls"],
            "api_requests": gone["api_requests"],
        }
        if not gone["complete"]:
            result["delete"]["not_gone"] = len([n for n in names if n not in current.emulator.gone_at])
            result["logs"] = log_tails(current)
        result["memory_mb"] = proc_status(current.pid)
        return result


async def fleets(resources: int, node_count: int, store: str, repeats: int, *, within: float) -> dict[str, Any]:
    """``fleet`` ``repeats`` times, each in a fresh world; medians and worst cases over the runs."""
    runs = [await fleet(resources, node_count, store, within=within) for _ in range(repeats)]
    done = [run for run in runs if run["complete"] and run["delete"]["complete"]]
    summary: dict[str, Any] = {
        "store": store,
        "resources": resources,
        "nodes": node_count,
        "pairs": resources * node_count,
        "repeats": repeats,
        "complete": len(done) == len(runs),
        "peak_memory_mb": max(run["memory_mb"]["VmHWM"] for run in runs),
        "idle_memory_mb": max(run["memory_mb_idle"]["VmHWM"] for run in runs),
    }
    if done:
        converge = [run["converge_s"] for run in done]
        delete = [run["delete"]["elapsed_s"] for run in done]
        median = statistics.median(converge)
        summary |= {
            "converge_s": round(median, 3),
            "converge_s_max": max(converge),
            "creations_per_second": round(resources * node_count / median),
            "store_instances_per_second": round(
                statistics.median(run["store_instances_created"] for run in done) / median
            ),
            "delete_s": round(statistics.median(delete), 3),
            "delete_s_max": max(delete),
            "writes_apply_to_ready_max": max(run["writes_apply_to_ready"]["max"] for run in done),
            "writes_apply_to_ready_mean": round(
                statistics.mean(run["writes_apply_to_ready"]["mean"] for run in done), 2
            ),
            "operator_cpu_us_per_instance": statistics.median(run["operator_cpu_us_per_instance"] for run in done),
            "left_after_delete": max(run["delete"]["left"]["total"] for run in done),
        }
    return summary | {"runs": runs}


def compare(results: dict[str, Any], floor: dict[str, float]) -> dict[str, Any]:
    """One store's figures against the floor (the RPC alone)."""
    p50, calls = floor["sequential_p50_ms"], floor["concurrent_64_calls_per_second"]
    out: dict[str, Any] = {}
    for key in ("apply_1x10", "apply_1x100"):
        if "median_ms" in results.get(key, {}):
            n = results[key]["nodes"]
            out[key] = {
                "sequential_creates_at_floor_p50_ms": round(n * p50, 1),
                "x_sequential_floor": round(results[key]["median_ms"] / (n * p50), 2),
                "creates_at_floor_concurrent_rate_ms": round(n / calls * 1000, 1),
                "x_concurrent_floor": round(results[key]["median_ms"] / (n / calls * 1000), 2),
            }
    for key in ("fleet_100x100", "fleet_200x20", "fleet_1000x50", "fleet_50x1000"):
        if key in results and results[key].get("complete") and "converge_s" in results[key]:
            rate = results[key]["creations_per_second"]
            out[key] = {
                "creations_per_second": rate,
                "floor_concurrent_calls_per_second": calls,
                "fraction_of_floor": round(rate / calls, 2),
                "converge_at_floor_rate_s": round(results[key]["pairs"] / calls, 2),
                "x_converge_at_floor_rate": round(results[key]["converge_s"] * calls / results[key]["pairs"], 1),
            }
    return out


def figures(results: dict[str, Any]) -> dict[str, Any]:
    """One store's headline figures, flat (None: not run, or did not finish)."""
    single = results.get("apply_1x100", {})
    big = results.get("fleet_100x100", {})
    small = results.get("fleet_200x20", {})
    steady = results.get("steady_state_100x100", {}).get("steady_state", {})
    out: dict[str, Any] = {
        "apply_to_ready_1x100_ms": single.get("median_ms"),
        "writes_apply_to_ready_1x100_max": max(single["writes_per_resource"])
        if "writes_per_resource" in single
        else None,
        "converge_100x100_s": big.get("converge_s"),
        "creations_per_second_100x100": big.get("creations_per_second"),
        "store_instances_per_second_100x100": big.get("store_instances_per_second"),
        "converge_200x20_s": small.get("converge_s"),
        "delete_100x100_s": big.get("delete_s"),
        "left_after_delete_100x100": big.get("left_after_delete"),
        "writes_apply_to_ready_100x100_max": big.get("writes_apply_to_ready_max"),
        "writes_apply_to_ready_100x100_mean": big.get("writes_apply_to_ready_mean"),
        "writes_apply_to_ready_200x20_max": small.get("writes_apply_to_ready_max"),
        "writes_steady_state": steady.get("writes"),
        "peak_memory_100x100_mb": big.get("peak_memory_mb"),
        "operator_cpu_us_per_instance_100x100": big.get("operator_cpu_us_per_instance"),
        "operator_cpu_us_per_instance_200x20": small.get("operator_cpu_us_per_instance"),
    }
    for key in ("fleet_1000x50", "fleet_50x1000"):
        size = key.removeprefix("fleet_")
        run = results.get(key, {})
        complete = run.get("complete") and run.get("delete", {}).get("complete")
        resync = run.get("steady_state", {})
        out |= {
            f"converge_{size}_s": run.get("converge_s") if run.get("complete") else None,
            f"creations_per_second_{size}": run.get("creations_per_second") if run.get("complete") else None,
            f"delete_{size}_s": run["delete"]["elapsed_s"] if complete else None,
            f"left_after_delete_{size}": run["delete"]["left"]["total"] if complete else None,
            f"peak_memory_{size}_mb": run.get("memory_mb", {}).get("VmHWM"),
            f"operator_cpu_us_per_instance_{size}": run.get("operator_cpu_us_per_instance")
            if run.get("complete")
            else None,
            f"writes_apply_to_ready_{size}_max": run.get("writes_apply_to_ready", {}).get("max"),
            f"writes_apply_to_ready_{size}_mean": run.get("writes_apply_to_ready", {}).get("mean"),
            f"daemon_calls_per_resync_{size}": resync.get("daemon_calls_per_resync"),
            f"operator_api_requests_per_resync_{size}": resync.get("operator_requests_per_resync"),
            f"writes_per_resync_{size}": round(resync["writes"] / (resync["window_s"] / resync["resync_interval_s"]), 1)
            if resync
            else None,
            f"operator_cpu_s_per_resync_{size}": resync.get("operator_cpu_s_per_resync"),
            f"list_answer_bytes_{size}": run.get("list_answer", {}).get("bytes"),
        }
    return out


# figure -> (target, at least?): the design targets (docs/design.md, "Performance targets")
FIGURE_TARGETS: dict[str, tuple[float, bool]] = {
    "apply_to_ready_1x100_ms": (60, False),
    "writes_apply_to_ready_1x100_max": (2, False),
    "converge_100x100_s": (4.0, False),
    "creations_per_second_100x100": (2500, True),
    "converge_200x20_s": (3.0, False),
    "delete_100x100_s": (2.5, False),
    "left_after_delete_100x100": (0, False),
    "writes_apply_to_ready_100x100_max": (2, False),
    "writes_apply_to_ready_200x20_max": (2, False),
    "writes_apply_to_ready_1000x50_max": (2, False),
    "writes_apply_to_ready_50x1000_max": (2, False),
    "writes_steady_state": (0, False),
    "writes_per_resync_1000x50": (0, False),
    "writes_per_resync_50x1000": (0, False),
    "peak_memory_100x100_mb": (100, False),
    "peak_memory_1000x50_mb": (200, False),
    "operator_cpu_us_per_instance_100x100": (250, False),
    "operator_cpu_us_per_instance_200x20": (250, False),
    "operator_cpu_us_per_instance_1000x50": (250, False),
    "operator_cpu_us_per_instance_50x1000": (250, False),
    "left_after_delete_1000x50": (0, False),
    "left_after_delete_50x1000": (0, False),
}


def table(by_store: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every figure, the stores side by side, with the design target and measured / target."""
    stores = list(by_store)
    names = list(dict.fromkeys(name for store in stores for name in by_store[store]))
    rows = []
    for name in names:
        target, at_least = FIGURE_TARGETS.get(name, (None, False))
        row: dict[str, Any] = {"figure": name}
        for store in stores:
            measured = by_store[store].get(name)
            row[store] = measured
            if target is not None and isinstance(measured, int | float):
                row[f"ratio_{store}"] = round(measured / target, 2) if target else None
                row[f"met_{store}"] = measured >= target if at_least else measured <= target
        if target is not None:
            row["target"] = f">= {target}" if at_least else f"<= {target}"
        rows.append(row)
    return rows


def ratio_word(met: bool | None) -> str | None:
    """A target of 0 has no ratio: met or not."""
    return None if met is None else "met" if met else "not met"


def markdown(rows: list[dict[str, Any]], stores: list[str]) -> str:
    """The table as Markdown (figure | per store | target | ratio per store), for bench/README.md."""

    def cell(value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, dict):
            return ", ".join(f"{k} {v:g}" for k, v in value.items())
        return f"{value:g}" if isinstance(value, float) else str(value)

    head = ["figure", *stores, "target", *(f"ratio {s}" for s in stores)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if all(row.get(s) is None for s in stores):
            continue
        cells = [row["figure"], *(cell(row.get(s)) for s in stores), row.get("target", "—")]
        cells += [cell(row.get(f"ratio_{s}", ratio_word(row.get(f"met_{s}")))) for s in stores]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SCENARIOS = (
    "apply_1x10",
    "apply_1x100",
    "fleet_100x100",
    "fleet_200x20",
    "steady_state_100x100",
    "fleet_1000x50",
    "fleet_50x1000",
)
LARGE = frozenset({"fleet_1000x50", "fleet_50x1000"})


async def scenario(name: str, store: str, args: argparse.Namespace) -> dict[str, Any]:
    match name:
        case "apply_1x10":
            return await apply_to_ready(10, store, args.repeats)
        case "apply_1x100":
            return await apply_to_ready(100, store, args.repeats)
        case "fleet_100x100":
            return await fleets(100, 100, store, args.fleet_repeats, within=args.timeout)
        case "fleet_200x20":
            return await fleets(200, 20, store, args.fleet_repeats, within=args.timeout)
        case "steady_state_100x100":
            return await fleet(100, 100, store, within=args.timeout, resync=2.0, window=5.0)
        case "fleet_1000x50":
            return await fleet(1000, 50, store, within=args.large_timeout, window=args.resync_window)
        case "fleet_50x1000":
            return await fleet(50, 1000, store, within=args.large_timeout, window=args.resync_window)
    raise ValueError(f"unknown scenario {name}")


async def main_async(args: argparse.Namespace, stores: list[str]) -> dict[str, Any]:
    scenarios: dict[str, dict[str, Any]] = {}
    wanted = set(args.only.split(",")) if args.only else None
    started = time.perf_counter()
    for name in SCENARIOS:
        if (wanted is not None and name not in wanted) or (args.skip_large and name in LARGE):
            continue
        for store in stores:  # side by side: each scenario in both stores before the next scenario
            began = time.perf_counter()
            print(f"{name} ({store}) ...", file=sys.stderr, flush=True)
            try:
                scenarios.setdefault(name, {})[store] = await scenario(name, store, args)
            except ScenarioFailed as error:
                scenarios.setdefault(name, {})[store] = {"store": store, "complete": False, "error": str(error)}
            scenarios[name][store]["wall_s"] = round(time.perf_counter() - began, 1)
            print(f"{name} ({store}) done in {scenarios[name][store]['wall_s']} s", file=sys.stderr, flush=True)
    return {
        "scenarios": scenarios,
        "wall_s": round(time.perf_counter() - started, 1),
        "code": CODE_SEEN[0] if len(CODE_SEEN) == 1 else {"changed_during_run": CODE_SEEN},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated daemon stores: per-node, shared")
    parser.add_argument("--repeats", type=int, default=5, help="apply-to-Ready runs per node count")
    parser.add_argument("--fleet-repeats", type=int, default=2, help="runs of 100 x 100 and of 200 x 20")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a fleet may take to converge")
    parser.add_argument("--large-timeout", type=float, default=600.0, help="the same, for 1000 x 50 and 50 x 1000")
    parser.add_argument(
        "--resync-window",
        type=float,
        default=RESYNC_DEFAULT,
        help="seconds the large fleets are watched once converged (default: one resync interval)",
    )
    parser.add_argument("--skip-large", action="store_true", help="skip 1000 x 50 and 50 x 1000")
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(SCENARIOS))
    parser.add_argument("--py-spy", metavar="DIR", help="profile the operator with py-spy (if installed) into DIR")
    args = parser.parse_args()
    stores = [store for store in args.stores.split(",") if store]
    if not stores or any(store not in STORES for store in stores):
        parser.error(f"--stores: a comma-separated subset of {', '.join(STORES)}")
    global PROFILE_DIR
    PROFILE_DIR = Path(args.py_spy).resolve() if args.py_spy else None
    # The operator's and the simulator's logs (and the sockets) in a directory of this run's own, kept afterwards:
    # /tmp is shared with other work that may clean it.
    tempfile.tempdir = tempfile.mkdtemp(prefix="gadget-bench-")
    print(f"logs in {tempfile.tempdir}", file=sys.stderr)
    results = asyncio.run(main_async(args, stores))
    floor = floor_figures()
    scenarios = results["scenarios"]
    by_store = {store: {name: runs[store] for name, runs in scenarios.items() if store in runs} for store in stores}
    flat = {store: figures(by_store[store]) for store in stores}
    rows = table(flat)
    measured_lists = {
        name: {store: run.get("list_answer") for store, run in scenarios[name].items()}
        for name in scenarios
        if name.startswith("fleet_") and name not in ("fleet_100x100", "fleet_200x20")
    }
    partial = bool(args.only or args.skip_large or len(stores) < len(STORES))
    record(
        "operator-partial" if partial else "operator",
        {
            "setup": {
                "processes": "emulated API server + benchmark client | operator | simulated daemons (unix sockets)",
                "stores": stores,
                "timing": "each GadgetInstance commit in the emulator is seen synchronously (perf_counter); "
                "a run starts when the first create is sent",
                "operator_flags": "--daemon-store <store> --daemon-namespace gadget, otherwise defaults "
                "(--max-concurrency 64 --node-concurrency 8 --resync-interval 30); steady state: --resync-interval 2",
                "simulator_flags": "--init-delay 0 (a gadget initializes at once: readiness settle time excluded); "
                "shared: --kube-server <the emulator> --store-namespace gadget",
                "client_concurrency": CLIENT_CONCURRENCY,
                "logs": tempfile.tempdir,
            },
            "floor": floor,
            "table": rows,
            "message_sizes": {"computed": message_sizes.computed(), "measured_list_answers": measured_lists},
            "vs_floor": {store: compare(by_store[store], floor) for store in stores},
            **results,
        },
    )
    print(markdown(rows, stores))


if __name__ == "__main__":
    main()
