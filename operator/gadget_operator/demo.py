"""``gadget-operator demo``: the operator's main job on its embedded default, with no cluster."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gadget_operator import identity
from gadget_operator.daemon import model
from gadget_operator.daemon.client import DaemonPool
from gadget_operator.simulator.server import Fleet


async def run(count: int) -> None:
    console = Console()
    with tempfile.TemporaryDirectory(prefix="gadget-demo-") as directory:
        fleet = Fleet(Path(directory), unknown_images=["no_such_gadget"])
        await fleet.start(count)
        pool = DaemonPool(timeout=2.0)
        try:
            for name, address in fleet.addresses().items():
                for image in ("trace_exec", "no_such_gadget"):
                    derived = identity.instance_id("demo", name, image)
                    instance = model.GadgetInstance(derived, identity.instance_name(image, derived), image)
                    await pool.get(address).create_instance(instance)
            await fleet[next(iter(fleet.nodes))].restart()
            table = Table(title="Simulated gadget daemons (one restarted, store kept)")
            for column in ("node", "instance", "image", "state", "message"):
                table.add_column(column)
            for name, address in fleet.addresses().items():
                for listed in await pool.get(address).list_instances():
                    table.add_row(name, listed.name, listed.image, listed.status.name, listed.message)
            console.print(table)
        finally:
            await pool.close()
            await fleet.stop()
