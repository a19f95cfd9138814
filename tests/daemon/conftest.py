"""Fixtures: simulated daemons on real sockets and TLS material made by a throwaway CA."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme

from gadget_operator.daemon.client import DaemonClient
from gadget_operator.simulator.server import Fleet, SimulatedNode


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Unix socket paths are limited to ~100 bytes: pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="gs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["unix", "tcp"])
async def fleet(request: pytest.FixtureRequest, short_dir: Path) -> AsyncIterator[Fleet]:
    fleet = Fleet(short_dir, transport=request.param, unknown_images=["broken_gadget"])
    await fleet.start(2)
    yield fleet
    await fleet.stop()


@pytest.fixture
def node(fleet: Fleet) -> SimulatedNode:
    return fleet["node-1"]


@pytest.fixture
async def client(node: SimulatedNode) -> AsyncIterator[DaemonClient]:
    async with DaemonClient(node.address, timeout=2.0) as client:
        yield client


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()
