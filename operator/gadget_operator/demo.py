"""``gadget-operator demo``: the operator's main job on its embedded default, with no cluster.

An emulated API server, a few simulated nodes on unix sockets, and the real operator as its own
process with static discovery. The examples in ``examples/`` are applied, a live table shows each
resource's status as it converges, one node's daemon restarts and loses its instances, the operator
is asked to resync that node (an intent of its control API), repairs it, and everything is deleted
again. Beside the table, the operator's own event stream (``Events`` of its control API, what
``gadget-operator ctl events --follow`` prints) shows what it does. It exits non-zero if any step does
not happen in time; the event stream is only shown, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.layout import Layout
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gadget_operator import ctl, identity, resource
from gadget_operator.control import client
from gadget_operator.control.pb import control_pb2
from gadget_operator.simulator.server import Fleet
from gadget_operator.testing.kube_emulator import KubeEmulator
from gadget_operator.testing.operator_process import OperatorProcess

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CRDS = ROOT / "crds"
STEP_TIMEOUT = 30.0
EVENTS_SHOWN = 14
"""Lines of the event panel when it sits under the tables (beside them it is as tall as they are)."""
SIDE_BY_SIDE = 140
"""From this terminal width on, the events sit right of the tables; below it, under them."""
RECONNECT_DELAY = 0.2


class DemoFailed(Exception):
    pass


def node_labels(name: str, index: int) -> dict[str, str]:
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    if index > 2:
        labels["node.kubernetes.io/pool"] = "payments"
    return labels


class View:
    """The demo's screen: a rich ``Layout`` of the status tables and the operator's latest events, as tall
    as the tables need (a Layout alone would take the whole terminal, or 25 lines in a transcript)."""

    def __init__(self, status: RenderableType, events: list[control_pb2.LogEntry], note: str) -> None:
        self.status = status
        self.events = events
        self.note = note

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        beside = width >= SIDE_BY_SIDE
        status_width = width * 3 // 5 if beside else width
        status_height = len(console.render_lines(self.status, options.update_width(status_width), pad=False))
        height = max(status_height, EVENTS_SHOWN + 2) if beside else status_height + EVENTS_SHOWN + 2
        shown = height - 2 if beside else EVENTS_SHOWN
        lines: list[Text] = []
        for entry in self.events[-shown:]:
            line = ctl.render_entry(entry)
            line.no_wrap, line.overflow = True, "ellipsis"
            lines.append(line)
        if self.note:
            lines = [*lines[-(shown - 1) :], Text(self.note, style="dim", no_wrap=True, overflow="ellipsis")]
        panel = Panel(
            Group(*lines) if lines else Text("waiting for the operator's events...", style="dim"),
            title="the operator's events (gadget-operator ctl events --follow)",
            title_align="left",
        )
        layout = Layout()
        if beside:
            layout.split_row(Layout(self.status, ratio=3), Layout(panel, ratio=2))
        else:
            layout.split_column(Layout(self.status, size=status_height), Layout(panel))
        yield from layout.__rich_console__(console, options.update(height=height))


class Demo:
    def __init__(self, emulator: KubeEmulator, fleet: Fleet, console: Console) -> None:
        self.emulator = emulator
        self.fleet = fleet
        self.console = console
        self.step = ""
        self.names: list[tuple[resource.Kind, str | None, str]] = []
        """The applied examples: (kind, namespace or None for a ClusterGadgetInstance, name)."""
        self.events: deque[control_pb2.LogEntry] = deque(maxlen=200)
        """The latest entries of the operator's event stream."""
        self.events_seen = 0
        self.events_note = ""
        """Why the event stream is not flowing (the operator's control API is not answering), if so."""
        self.control: client.ControlApi | None = None

    async def follow_events(self, control: client.ControlApi) -> None:
        """Keep ``events`` fed from the operator's ``Events`` stream until cancelled; reconnect (skipping
        the entries a new replay repeats) when the stream breaks, e.g. before the API listens."""
        last = 0
        while True:
            try:
                async for entry in control.events(follow=True):
                    self.events_note = ""
                    if entry.sequence <= last:
                        continue
                    last = entry.sequence
                    self.events.append(entry)
                    self.events_seen += 1
                self.events_note = "the operator ended its event stream; reconnecting"
            except client.ControlError as error:
                self.events_note = f"{error}; retrying"
            await asyncio.sleep(RECONNECT_DELAY)

    def resources(self) -> list[dict[str, Any]]:
        found = [
            self.emulator.get(kind.api_version, kind.plural, name, namespace) for kind, namespace, name in self.names
        ]
        return [body for body in found if body is not None]

    def render(self) -> View:
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
                Text(phase, style=ctl.PHASE_STYLE.get(phase, "")),
                status.get("message", ""),
            )
        daemons = Table(title="gadget instances each node's daemon runs")
        daemons.add_column("NODE")
        daemons.add_column("INSTANCES")
        for name, node in sorted(self.fleet.nodes.items()):
            owned = [i for i in node.running().values() if identity.parse_ownership(i.tags) is not None]
            daemons.add_row(name, ", ".join(sorted(i.name for i in owned)) or "-")
        return View(Group(Text(self.step, style="bold"), table, daemons), list(self.events), self.events_note)

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
        control: client.GrpcControl | None = None
        events: asyncio.Future[None] | None = None
        try:
            await operator.start()  # its control API (on free loopback ports) listens before it is alive
            control = client.GrpcControl(operator.control_address, timeout=5.0, wait_for_ready=True)
            demo.control = control
            events = asyncio.ensure_future(demo.follow_events(control))
            await play(demo)
        except DemoFailed as error:
            console.print(f"[red]demo failed: {error}[/red]\n--- operator log ---\n{operator.logs()[-5000:]}")
            raise SystemExit(1) from None
        finally:
            if events is not None:
                events.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await events
            if control is not None:
                await control.close()
            await operator.stop()
            await fleet.stop()
            await emulator.stop()
    console.print(
        "[green]demo finished: every resource converged, was repaired after a node restart, and was deleted[/green]"
        f"\n[dim]the operator's control API streamed {demo.events_seen} events (gadget-operator ctl events)[/dim]"
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
        asked = await resync_node(demo, victim.name)
        await demo.until(
            live,
            f"3. {asked}; the operator re-creates what the restart lost",
            lambda: bool(victim.running()) and demo.settled(),
        )
        for kind, namespace, name in demo.names:
            demo.emulator.delete(kind.api_version, kind.plural, name, namespace)
        await demo.until(
            live,
            "4. deleted every resource: the finalizer removes the instances from every node first",
            lambda: not demo.resources() and not any(node.running() for node in demo.fleet.nodes.values()),
        )


async def resync_node(demo: Demo, node: str) -> str:
    """Ask the operator to look at ``node`` now (``gadget-operator ctl resync node/NODE``); its periodic
    sync would do it too, a little later, so a refusal or an error only changes what the step says."""
    intent = ctl.resync_intent(f"node/{node}", "")
    what = f"gadget-operator ctl {ctl.describe_intent(intent)}"
    if demo.control is None:
        return f"the operator's periodic sync of {node} runs"
    try:
        result = await demo.control.execute(intent)
    except client.ControlError as error:
        return f"{what} failed ({error}); the operator's periodic sync of {node} runs"
    verdict = "accepted" if result.accepted else "refused"
    return f"{what}: {verdict}" + (f" ({result.message})" if result.message else "")
