"""The port-forward transport: bounded tunnels, idle ones closed, failures kept with their cause.

Tunnels run against the API emulator's ``pods/<pod>/portforward`` (a real WebSocket) to small echo
servers standing in for daemon pods, through ``kube.KubeApi.open_portforward`` as in the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from kubernetes.aio import client as kclient

from gadget_operator import errors, kube
from gadget_operator.daemon.client import DaemonPool
from gadget_operator.daemon.portforward import (
    NoFreeTunnel,
    PodPort,
    PortForwarder,
    TunnelBroken,
    TunnelRefused,
    describe_failure,
)
from gadget_operator.testing.kube_emulator import PORT_ANNOTATION_PREFIX, KubeEmulator

NS = "gadget"
WITHIN = 10.0


async def until(condition: Callable[[], bool], *, what: str, within: float = WITHIN) -> None:
    """Wait for ``condition`` to hold, polling; fail after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not true within {within}s: {what}") from None


@dataclass
class Echo:
    """A TCP server that echoes every byte: a daemon pod's port."""

    server: asyncio.Server
    connections: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


async def start_echo() -> Echo:
    echo: Echo

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        echo.connections.append(writer)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    echo = Echo(await asyncio.start_server(serve, "127.0.0.1", 0))
    return echo


@dataclass
class World:
    emulator: KubeEmulator
    api: kube.KubeApi
    echo: Echo

    def put_pod(self, name: str, target: str | None = None) -> str:
        self.emulator.put(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": NS,
                    "annotations": {f"{PORT_ANNOTATION_PREFIX}8080": target or self.echo.address},
                },
                "spec": {"nodeName": name, "containers": [{"name": "gadget", "image": "ig"}]},
                "status": {"phase": "Running", "podIP": "10.0.0.1"},
            }
        )
        return PodPort(NS, name, 8080).address

    def forwarder(self, **kwargs: float) -> PortForwarder:
        return PortForwarder(self.api.open_portforward, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    emulator = KubeEmulator()
    url = await emulator.start()
    api = kube.KubeApi(kclient.Configuration(host=url))
    echo = await start_echo()
    try:
        yield World(emulator, api, echo)
    finally:
        echo.server.close()
        for writer in echo.connections:
            writer.close()
        await api.close()
        await emulator.stop()


async def dial(forwarder: PortForwarder, address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = forwarder.local_address(address).removeprefix("tcp://").rpartition(":")
    return await asyncio.open_connection(host, int(port))


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes = b"ping") -> None:
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(WITHIN):
        assert await reader.readexactly(len(data)) == data


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the forwarder ended this local connection (EOF or reset), within the deadline."""
    async with asyncio.timeout(WITHIN):
        try:
            return await reader.read() == b""
        except ConnectionError:
            return True


# -- the cause of a failure ----------------------------------------------------------------------------

TARGET = PodPort("gadget", "gadget-abcde", 8080)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            TunnelRefused(403, 'pods "gadget-abcde" is forbidden: User "x" cannot create resource'),
            'port-forward to gadget/gadget-abcde refused by RBAC: pods "gadget-abcde" is forbidden: User "x" '
            "cannot create resource (the operator needs create on pods/portforward in gadget)",
        ),
        (TunnelRefused(404, 'pods "gadget-abcde" not found'), "daemon pod gadget/gadget-abcde not found"),
        (
            TunnelRefused(500, "error dialing backend: dial tcp 10.0.0.7:10250: i/o timeout"),
            "port-forward to gadget/gadget-abcde failed: error dialing backend: dial tcp 10.0.0.7:10250: "
            "i/o timeout (HTTP 500)",
        ),
        (
            TunnelBroken("error forwarding port 8080 to pod 1234, uid : connection refused"),
            "port-forward to gadget/gadget-abcde: error forwarding port 8080 to pod 1234, uid : connection refused",
        ),
        (TimeoutError(), "port-forward to gadget/gadget-abcde: no answer from the API server within 3s"),
        (
            aiohttp.ClientConnectionError("Cannot connect to host 10.96.0.1:443"),
            "port-forward to gadget/gadget-abcde: cannot reach the API server: Cannot connect to host 10.96.0.1:443",
        ),
        (
            NoFreeTunnel("all 256 tunnels carried calls for 3s (--max-tunnels)"),
            "port-forward to gadget/gadget-abcde: all 256 tunnels carried calls for 3s (--max-tunnels)",
        ),
    ],
)
def test_each_failure_is_described_by_its_cause(error: BaseException, expected: str) -> None:
    assert describe_failure(TARGET, error, connect_timeout=3) == expected


async def test_an_rbac_denial_is_kept_with_the_api_servers_message(world: World) -> None:
    world.emulator.deny("create", "pods", "portforward")
    address = world.put_pod("gadget-node-1")
    forwarder = world.forwarder()
    try:
        reader, writer = await dial(forwarder, address)
        assert await closed(reader)
        writer.close()
        assert forwarder.last_error(address) == (
            'port-forward to gadget/gadget-node-1 refused by RBAC: pods "gadget-node-1" is forbidden: '
            'User "system:anonymous" cannot create resource "pods/portforward" in API group "" in the '
            'namespace "gadget" (the operator needs create on pods/portforward in gadget)'
        )

        world.emulator.allow("create", "pods", "portforward")
        reader, writer = await dial(forwarder, address)
        await roundtrip(reader, writer)
        assert forwarder.last_error(address) is None  # a tunnel that opens clears the cause
        writer.close()
    finally:
        await forwarder.close()


async def test_a_missing_pod_and_a_kubelet_error_are_kept_as_causes(world: World) -> None:
    gone = PodPort(NS, "gadget-gone", 8080).address
    dead_port = world.put_pod("gadget-dead", target="tcp://127.0.0.1:1")
    forwarder = world.forwarder()
    try:
        for address in (gone, dead_port):
            reader, writer = await dial(forwarder, address)
            assert await closed(reader)
            writer.close()
        assert forwarder.last_error(gone) == "daemon pod gadget/gadget-gone not found"
        cause = forwarder.last_error(dead_port) or ""
        assert cause.startswith("port-forward to gadget/gadget-dead: error forwarding port 8080 to pod gadget-dead")
    finally:
        await forwarder.close()


async def test_a_hanging_api_server_stalls_only_its_own_tunnel(world: World) -> None:
    working = world.put_pod("gadget-node-1")
    hanging = PodPort(NS, "gadget-hangs", 8080).address
    never = asyncio.Event()

    async def open_tunnel(namespace: str, pod: str, port: int) -> aiohttp.ClientWebSocketResponse:
        if pod == "gadget-hangs":
            await never.wait()
        return await world.api.open_portforward(namespace, pod, port)

    forwarder = PortForwarder(open_tunnel, connect_timeout=0.5)
    try:
        stuck_reader, stuck_writer = await dial(forwarder, hanging)
        reader, writer = await dial(forwarder, working)
        await roundtrip(reader, writer)  # while the other handshake still hangs
        assert await closed(stuck_reader)
        assert forwarder.last_error(hanging) == (
            "port-forward to gadget/gadget-hangs: no answer from the API server within 0.5s"
        )
        writer.close()
        stuck_writer.close()
    finally:
        await forwarder.close()


# -- bounded and idle ----------------------------------------------------------------------------------


async def test_beyond_max_tunnels_the_least_recently_used_idle_tunnel_is_closed(world: World) -> None:
    addresses = [world.put_pod(f"gadget-node-{i}") for i in (1, 2, 3)]
    forwarder = world.forwarder(max_tunnels=2)
    try:
        connections = []
        for address in addresses[:2]:
            reader, writer = await dial(forwarder, address)
            await roundtrip(reader, writer)
            connections.append((reader, writer))
        await roundtrip(*connections[0])  # node-1 used last: node-2 is now the least recently used

        reader, writer = await dial(forwarder, addresses[2])
        await roundtrip(reader, writer)

        assert await closed(connections[1][0])
        await roundtrip(*connections[0])  # still open
        assert forwarder.open_tunnels == 2
        assert forwarder.peak_tunnels == 2
        assert forwarder.evicted == 1
        await until(lambda: world.emulator.portforwards_open == 2, what="the evicted stream closed")
        for _, w in [*connections, (reader, writer)]:
            w.close()
    finally:
        await forwarder.close()


async def test_a_tunnel_with_a_call_in_flight_is_never_closed_to_make_room(world: World) -> None:
    busy, other = world.put_pod("gadget-node-1"), world.put_pod("gadget-node-2")
    forwarder = world.forwarder(max_tunnels=1, connect_timeout=0.3)
    try:
        reader, writer = await dial(forwarder, busy)
        with forwarder.in_use(busy):
            await roundtrip(reader, writer)
            waiting_reader, waiting_writer = await dial(forwarder, other)
            assert await closed(waiting_reader)  # after waiting connect_timeout for a free tunnel
            await roundtrip(reader, writer)
        assert forwarder.last_error(other) == (
            "port-forward to gadget/gadget-node-2: all 1 tunnels carried calls for 0.3s (--max-tunnels)"
        )
        waiting_writer.close()

        # Once the call is over the busy tunnel is fair game again.
        second_reader, second_writer = await dial(forwarder, other)
        await roundtrip(second_reader, second_writer)
        assert await closed(reader)
        writer.close()
        second_writer.close()
    finally:
        await forwarder.close()


async def test_a_waiting_tunnel_gets_the_slot_as_soon_as_the_call_ends(world: World) -> None:
    busy, other = world.put_pod("gadget-node-1"), world.put_pod("gadget-node-2")
    forwarder = world.forwarder(max_tunnels=1, connect_timeout=WITHIN)
    try:
        reader, writer = await dial(forwarder, busy)
        with forwarder.in_use(busy):
            await roundtrip(reader, writer)
            waiting_reader, waiting_writer = await dial(forwarder, other)
            waiting_writer.write(b"queued")
            await until(lambda: bool(forwarder._waiters), what="the second tunnel waits for a slot")
        async with asyncio.timeout(WITHIN):
            assert await waiting_reader.readexactly(6) == b"queued"
        assert await closed(reader)
        writer.close()
        waiting_writer.close()
    finally:
        await forwarder.close()


async def test_an_idle_tunnel_is_closed_and_a_new_one_opens_on_the_next_connection(world: World) -> None:
    address = world.put_pod("gadget-node-1")
    forwarder = world.forwarder(idle_timeout=0.2)
    try:
        reader, writer = await dial(forwarder, address)
        await roundtrip(reader, writer)
        assert await closed(reader)
        assert forwarder.open_tunnels == 0
        writer.close()

        reader, writer = await dial(forwarder, address)
        await roundtrip(reader, writer)
        assert forwarder.opened == 2
        writer.close()
    finally:
        await forwarder.close()


async def test_forget_closes_the_listener_and_its_tunnels(world: World) -> None:
    address = world.put_pod("gadget-node-1")
    forwarder = world.forwarder()
    reader, writer = await dial(forwarder, address)
    await roundtrip(reader, writer)
    await forwarder.forget(address)
    assert await closed(reader)
    assert forwarder.open_tunnels == 0
    assert forwarder.last_error(address) is None
    writer.close()
    await forwarder.close()


# -- what the daemon client reports --------------------------------------------------------------------


async def pool_error(world: World, call: Callable[[DaemonPool, str], Awaitable[object]]) -> errors.DaemonError:
    address = world.put_pod("gadget-node-1")
    pool = DaemonPool(timeout=2.0, forwarder=world.forwarder())
    try:
        with pytest.raises(errors.DaemonError) as caught:
            await call(pool, address)
        return caught.value
    finally:
        await pool.close()


async def test_the_daemon_client_reports_the_tunnels_cause_not_grpcs(world: World) -> None:
    world.emulator.deny("create", "pods", "portforward")

    error = await pool_error(world, lambda pool, address: pool.get(address).list_instances())

    assert isinstance(error, errors.DaemonUnavailable)
    assert str(error) == (
        'unreachable: port-forward to gadget/gadget-node-1 refused by RBAC: pods "gadget-node-1" is forbidden: '
        'User "system:anonymous" cannot create resource "pods/portforward" in API group "" in the namespace '
        '"gadget" (the operator needs create on pods/portforward in gadget) (portforward://gadget/gadget-node-1:8080)'
    )


async def test_without_a_tunnel_failure_the_grpc_error_stays(world: World) -> None:
    # The echo server is no gRPC daemon: the tunnel works, the call fails on gRPC's own terms.
    error = await pool_error(world, lambda pool, address: pool.get(address).list_instances())

    assert isinstance(error, errors.DaemonUnreachable)
    assert "refused" not in str(error)
    assert "port-forward to" not in str(error)
