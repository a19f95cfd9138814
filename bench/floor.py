"""The floor: CreateGadgetInstance from the client to one simulated daemon on loopback.

Every later figure (apply to Ready, fleet convergence) is compared with this: it is the cost of the
RPC alone, with no Kubernetes API and no operator logic.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from common import percentile, record, simulator_process

from gadget_operator import identity
from gadget_operator.daemon import model
from gadget_operator.daemon.client import DaemonClient


def instance(index: int) -> model.GadgetInstance:
    derived = identity.instance_id("bench", "node-1", str(index))
    return model.GadgetInstance(id=derived, name=identity.instance_name("bench", derived), image="trace_exec")


async def measure(address: str, count: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    semaphore = asyncio.Semaphore(concurrency)
    async with DaemonClient(address, timeout=10) as client:
        await client.list_instances()  # connect before timing

        async def one(index: int) -> None:
            async with semaphore:
                started = time.perf_counter()
                await client.create_instance(instance(index))
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.perf_counter() - started
        for listed in await client.list_instances():
            await client.remove_instance(listed.id)
    return {
        "calls_per_second": round(count / elapsed),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    with simulator_process(1, transport="tcp") as nodes:
        address = nodes["node-1"]
        sequential = asyncio.run(measure(address, args.count // 5, 1))
        concurrent = asyncio.run(measure(address, args.count, 64))
    record("floor", {"creates": args.count, "sequential": sequential, "concurrent_64": concurrent})


if __name__ == "__main__":
    main()
