"""Fixtures: simulated daemons on real sockets, with either of IG's stores, and TLS material made by a throwaway CA.

The shared (DaemonSet) store runs on the project's API emulator through the official Kubernetes client.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc.aio
import pytest
import trustme
from kubernetes.aio import client as kclient

from gadget_operator.daemon.client import DaemonClient
from gadget_operator.daemon.pb import api_pb2, api_pb2_grpc
from gadget_operator.simulator.configmap_store import ConfigMapStore
from gadget_operator.simulator.server import Fleet, SimulatedNode
from gadget_operator.simulator.state import RunTiming
from gadget_operator.testing.kube_emulator import KubeEmulator

T = TypeVar("T")
GADGET_NAMESPACE = "gadget"
INSTANT = RunTiming(init_delay=0)
DEFAULT = RunTiming()


async def wait_for(probe: Callable[[], T | Awaitable[T]], *, within: float = 10.0, what: str = "") -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``within`` seconds (a deadline, not a sleep)."""
    deadline = time.monotonic() + within
    while True:
        result = probe()
        value: Any = await result if isinstance(result, Awaitable) else result
        if value:
            return value  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within}s: {what or probe}; last: {value!r}")
        await asyncio.sleep(0.005)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Unix socket paths are limited to ~100 bytes: pytest's tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="gs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["unix", "tcp"])
async def fleet(request: pytest.FixtureRequest, short_dir: Path) -> AsyncIterator[Fleet]:
    fleet = Fleet(short_dir, transport=request.param, unknown_images=["broken_gadget"], timing=INSTANT)
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


# -- the shared (DaemonSet) store on the API emulator ------------------------------------------------------------


class Cluster:
    """The emulated API server and a client for it, as a test sees them."""

    def __init__(self, emulator: KubeEmulator, api: kclient.ApiClient) -> None:
        self.emulator = emulator
        self.api = api
        self.core = kclient.CoreV1Api(api)

    def configmaps(self) -> dict[str, dict[str, Any]]:
        """The gadget-instance ConfigMaps the API server holds, by name."""
        found = self.emulator.list_objects("v1", "configmaps", GADGET_NAMESPACE)
        return {cm["metadata"]["name"]: cm for cm in found}


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    emulator = KubeEmulator()
    url = await emulator.start()
    api = kclient.ApiClient(kclient.Configuration(host=url))
    try:
        yield Cluster(emulator, api)
    finally:
        await api.close()
        await emulator.stop()


class FleetFactory(Protocol):
    def __call__(
        self, *, count: int = 2, timing: RunTiming = DEFAULT, unknown_images: tuple[str, ...] = ("broken_gadget",)
    ) -> Awaitable[Fleet]: ...


def fleet_factory(stack: AsyncExitStack, directory: Path, api: kclient.ApiClient | None) -> FleetFactory:
    """Fleets of tcp nodes; with ``api``, pods of IG's DaemonSet sharing one ConfigMap store each."""

    async def make(
        *, count: int = 2, timing: RunTiming = DEFAULT, unknown_images: tuple[str, ...] = ("broken_gadget",)
    ) -> Fleet:
        store = ConfigMapStore(api, GADGET_NAMESPACE) if api is not None else None
        fleet = Fleet(directory, transport="tcp", unknown_images=unknown_images, timing=timing, shared_store=store)
        stack.push_async_callback(fleet.stop)
        await fleet.start(count)
        return fleet

    return make


@pytest.fixture
async def shared_fleet(cluster: Cluster, short_dir: Path) -> AsyncIterator[FleetFactory]:
    """Fleets whose daemons are pods of IG's DaemonSet, sharing one ConfigMap store on the emulator."""
    async with AsyncExitStack() as stack:
        yield fleet_factory(stack, short_dir, cluster.api)


@pytest.fixture(params=["per-node", "shared"])
async def any_fleet(request: pytest.FixtureRequest, short_dir: Path) -> AsyncIterator[FleetFactory]:
    """Fleets of either kind: the local instance manager behaves the same under both stores."""
    async with AsyncExitStack() as stack:
        api: kclient.ApiClient | None = None
        if request.param == "shared":
            emulator = KubeEmulator()
            url = await emulator.start()
            stack.push_async_callback(emulator.stop)
            api = kclient.ApiClient(kclient.Configuration(host=url))
            stack.push_async_callback(api.close)
        yield fleet_factory(stack, short_dir, api)


class Stubs:
    """Raw generated stubs for one node: no client-side checks between the test and the daemon."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.instances = api_pb2_grpc.GadgetInstanceManagerStub(channel)
        self.gadgets = api_pb2_grpc.GadgetManagerStub(channel)

    async def create(self, **fields: Any) -> api_pb2.CreateGadgetInstanceResponse:
        return await self.instances.CreateGadgetInstance(create_request(**fields))

    async def list(self) -> list[api_pb2.GadgetInstance]:
        return list((await self.instances.ListGadgetInstances(api_pb2.ListGadgetInstancesRequest())).gadgetInstances)

    async def get(self, instance_id: str) -> api_pb2.GadgetInstance:
        return await self.instances.GetGadgetInstance(api_pb2.GadgetInstanceId(id=instance_id))

    async def remove(self, instance_id: str) -> api_pb2.StatusResponse:
        return await self.instances.RemoveGadgetInstance(api_pb2.GadgetInstanceId(id=instance_id))

    async def info(
        self,
        image: str,
        *,
        params: dict[str, str] | None = None,
        flags: int = 0,
        version: int = 1,
        deadline: float | None = 5.0,
    ) -> api_pb2.GadgetInfo:
        request = api_pb2.GetGadgetInfoRequest(imageName=image, paramValues=params or {}, flags=flags, version=version)
        return (await self.gadgets.GetGadgetInfo(request, timeout=deadline)).gadgetInfo


VALID_ID = "0123456789abcdef0123456789abcdef"
OTHER_ID = "f" * 32


def create_request(
    *,
    instance_id: str = VALID_ID,
    name: str = "trace",
    image: str = "trace_exec",
    version: int = 1,
    params: dict[str, str] | None = None,
    tags: tuple[str, ...] = (),
    nodes: tuple[str, ...] = (),
    log_level: int = 0,
    timeout: int = 0,
) -> api_pb2.CreateGadgetInstanceRequest:
    return api_pb2.CreateGadgetInstanceRequest(
        gadgetInstance=api_pb2.GadgetInstance(
            id=instance_id,
            name=name,
            gadgetConfig=api_pb2.GadgetRunRequest(
                imageName=image, version=version, paramValues=params or {}, logLevel=log_level, timeout=timeout
            ),
            tags=list(tags),
            nodes=list(nodes),
        )
    )


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[SimulatedNode], Stubs]]:
    """Open raw stubs to a node; every channel is closed at the end of the test."""
    channels: list[grpc.aio.Channel] = []

    def open_stubs(node: SimulatedNode) -> Stubs:
        channel = grpc.aio.insecure_channel(node.address.removeprefix("tcp://"))
        channels.append(channel)
        return Stubs(channel)

    yield open_stubs
    for channel in channels:
        await channel.close()
