"""``gadget-operator demo``: the operator's main job on its embedded default, with no cluster.

An emulated API server, a few simulated nodes on unix sockets, and the real operator as its own
process with static discovery. The examples in ``examples/`` are applied, a live table shows each
resource's status as it converges, one node's daemon restarts and loses its instances, the operator
repairs it, and everything is deleted again. It exits non-zero if any step does not happen in time.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gadget_operator import identity, resource
from gadget_operator.simulator.server import Fleet
from gadget_operator.testing.kube_emulator import KubeEmulator
from gadget_operator.testing.operator_process import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CRDS = ROOT / "crds"
STEP_TIMEOUT = 30.0
PHASE_STYLE = {"Running": "green", "Suspended": "cyan", "Pending": "yellow", "Degraded": "red", "Failed": "red"}


class DemoFailed(Exception):
    pass


def node_labels(name: str, index: int) -> dict[str, str]:
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    if index > 2:
        labels["node.kubernetes.io/pool"] = "payments"
    return labels


class Demo:
    def __init__(self, emulator: KubeEmulator, fleet: Fleet, console: Console) -> None:
        self.emulator = emulator
        self.fleet = fleet
        self.console = console
        self.step = ""
        self.names: list[tuple[resource.Kind, str | None, str]] = []
        """The applied examples: (kind, namespace or None for a ClusterGadgetInstance, name)."""

    def resources(self) -> list[dict[str, Any]]:
        found = [
            self.emulator.get(kind.api_version, kind.plural, name, namespace) for kind, namespace, name in self.names
        ]
        return [body for body in found if body is not None]

    def render(self) -> Group:
        table = Table(title="kubectl get gadget -o wide (both kinds)", expand=False)
        for column in ("NAME", "IMAGE", "READY", "PHASE", "MESSAGE"):
            table.add_column(column, overflow="fold")
        for body in self.resources():
            status = body.get("status") or {}
            phase = status.get("phase", "")
            table.add_row(
                body["metadata"]["name"],
                body["spec"]["image"].rsplit("/", 1)[-1],
                status.get("ready", ""),
                Text(phase, style=PHASE_STYLE.get(phase, "")),
                status.get("message", ""),
            )
        daemons = Table(title="gadget instances each node's daemon runs")
        daemons.add_column("NODE")
        daemons.add_column("INSTANCES")
        for name, node in sorted(self.fleet.nodes.items()):
            owned = [i for i in node.running().values() if identity.parse_ownership(i.tags) is not None]
            daemons.add_row(name, ", ".join(sorted(i.name for i in owned)) or "-")
        return Group(Text(self.step, style="bold"), table, daemons)

    async def until(self, live: Live, what: str, done: Callable[[], bool | Awaitable[bool]]) -> None:
        self.step = what
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            live.update(self.render())
            result = done()
            if result if isinstance(result, bool) else await result:
                live.console.print(self.render())  # a transcript of each step, also when not on a terminal
                return
            if time.monotonic() > deadline:
                raise DemoFailed(f"step did not finish within {STEP_TIMEOUT:g}s: {what}")
            await asyncio.sleep(0.1)  # the refresh rate of the live view

    def settled(self) -> bool:
        bodies = self.resources()
        return len(bodies) == len(self.names) and all(
            (b.get("status") or {}).get("observedGeneration") == b["metadata"]["generation"]
            and (b.get("status") or {}).get("phase") in ("Running", "Suspended")
            for b in bodies
        )


async def run(count: int) -> None:
    console = Console()
    emulator = KubeEmulator()
    url = await emulator.start()
    for crd in sorted(CRDS.glob("*.yaml")):
        emulator.register_crd(yaml.safe_load(crd.read_text()))
    with tempfile.TemporaryDirectory(prefix="gadget-demo-") as directory:
        fleet = Fleet(Path(directory), stored=False)
        await fleet.start(count, prefix="worker-")
        for index, name in enumerate(sorted(fleet.nodes), start=1):
            emulator.put(
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": node_labels(name, index)}}
            )
        operator = OperatorProcess(
            fleet.write_static_nodes(Path(directory) / "nodes.yaml"),
            kube_server=url,
            extra_args=["--resync-interval", "2"],
            log_dir=Path(directory),
        )
        demo = Demo(emulator, fleet, console)
        try:
            await operator.start()
            await play(demo)
        except DemoFailed as error:
            console.print(f"[red]demo failed: {error}[/red]\n--- operator log ---\n{operator.logs()[-5000:]}")
            raise SystemExit(1) from None
        finally:
            await operator.stop()
            await fleet.stop()
            await emulator.stop()
    console.print(
        "[green]demo finished: every resource converged, was repaired after a node restart, and was deleted[/green]"
    )


async def play(demo: Demo) -> None:
    manifests = [yaml.safe_load(path.read_text()) for path in sorted(EXAMPLES.glob("*.yaml"))]
    for manifest in manifests:
        kind = resource.kind_named(manifest["kind"])
        if kind.namespaced:
            manifest["metadata"].setdefault("namespace", "default")
        demo.emulator.put(manifest)
        demo.names.append((kind, manifest["metadata"].get("namespace"), manifest["metadata"]["name"]))
    with Live(demo.render(), console=demo.console, refresh_per_second=10, transient=True) as live:
        await demo.until(
            live, f"1. applied {len(manifests)} examples from examples/; waiting for them to converge", demo.settled
        )
        victim = demo.fleet[sorted(demo.fleet.nodes)[0]]
        await victim.restart()
        demo.step = f"2. the daemon on {victim.name} restarted without its store: its instances are gone"
        live.console.print(demo.render())
        await demo.until(
            live,
            f"3. the operator's periodic sync of {victim.name} re-creates what the restart lost",
            lambda: bool(victim.running()) and demo.settled(),
        )
        for kind, namespace, name in demo.names:
            demo.emulator.delete(kind.api_version, kind.plural, name, namespace)
        await demo.until(
            live,
            "4. deleted every resource: the finalizer removes the instances from every node first",
            lambda: not demo.resources() and not any(node.running() for node in demo.fleet.nodes.values()),
        )
