"""Reaching a daemon pod through the API server's port-forward, as ``kubectl gadget`` does.

IG's own DaemonSet serves gRPC on ``127.0.0.1:8080`` inside each pod, with no containerPort and no
Service, so a stock install can only be reached through ``pods/<pod>/portforward``. For each daemon
pod this module opens a local TCP listener on 127.0.0.1; every connection gRPC makes to it becomes one
port-forward stream (WebSocket, subprotocol ``v4.channel.k8s.io``) to the pod's port: a *tunnel*.

Tunnels are a shared, bounded resource, kept apart from the operator's own API calls:

* at most ``max_tunnels`` are open at once. A new one beyond that closes the least recently used
  tunnel of a daemon with no call in flight; when every open tunnel carries a call, it waits up to
  ``connect_timeout`` for one to end, then fails with that reason;
* a tunnel with no call in flight and no byte either way for ``idle_timeout`` is closed (the
  ``DaemonPool`` lets the gRPC channel go idle before that, so the channel closes it itself);
* each tunnel lives in its own task and its WebSocket handshake has a deadline: one node's broken or
  hanging tunnel never holds up another's.

When opening a tunnel fails, the cause is kept per pod (``last_error``) until a tunnel to it opens
again: gRPC itself only sees a closed socket ("failed to connect to all addresses"), so the daemon
client puts this cause in its errors instead, and that is what a node's status entry shows.

Addresses of this kind are written ``portforward://<namespace>/<pod>:<port>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import aiohttp

logger = logging.getLogger(__name__)

SCHEME = "portforward://"
SUBPROTOCOL = "v4.channel.k8s.io"
_DATA, _ERROR = 0, 1

OpenTunnel = Callable[[str, str, int], Awaitable[aiohttp.ClientWebSocketResponse]]
"""Opens the WebSocket of ``pods/<pod>/portforward?ports=<port>`` in a namespace (``kube.KubeApi``)."""


class TunnelRefused(Exception):
    """The API server answered the port-forward request with an HTTP error instead of a WebSocket.

    ``message`` is the ``message`` of its ``Status`` body when it sent one (``kube.KubeApi`` reads it),
    else the HTTP reason.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class TunnelBroken(Exception):
    """The kubelet reported an error on the stream's error channel (e.g. nothing listens on the port)."""


class NoFreeTunnel(Exception):
    """Every one of ``max_tunnels`` tunnels carried a call for the whole wait."""


@dataclass(frozen=True, slots=True)
class PodPort:
    namespace: str
    pod: str
    port: int

    @property
    def address(self) -> str:
        return f"{SCHEME}{self.namespace}/{self.pod}:{self.port}"

    @classmethod
    def parse(cls, address: str) -> PodPort:
        rest = address.removeprefix(SCHEME)
        namespace, _, pod_port = rest.partition("/")
        pod, _, port = pod_port.rpartition(":")
        if not address.startswith(SCHEME) or not namespace or not pod or not port.isdigit():
            raise ValueError(f"port-forward address {address!r}: expected {SCHEME}<namespace>/<pod>:<port>")
        return cls(namespace, pod, int(port))


def describe_failure(target: PodPort, error: BaseException, *, connect_timeout: float) -> str:
    """The sentence a user sees for a tunnel that could not be opened (or broke at once)."""
    where = f"{target.namespace}/{target.pod}"
    status, message = None, ""
    # aiohttp's own handshake error (ClientResponseError) has only the HTTP reason, not the body.
    if isinstance(error, (TunnelRefused, aiohttp.ClientResponseError)):
        status, message = error.status, error.message
    if status == 403:
        return (
            f"port-forward to {where} refused by RBAC: {message} "
            f"(the operator needs create on pods/portforward in {target.namespace})"
        )
    if status == 404:
        return f"daemon pod {where} not found"
    if status is not None:
        return f"port-forward to {where} failed: {message} (HTTP {status})"
    if isinstance(error, TunnelBroken):
        return f"port-forward to {where}: {error}"
    if isinstance(error, NoFreeTunnel):
        return f"port-forward to {where}: {error}"
    if isinstance(error, TimeoutError):
        return f"port-forward to {where}: no answer from the API server within {connect_timeout:g}s"
    return f"port-forward to {where}: cannot reach the API server: {error or type(error).__name__}"


@dataclass(eq=False, slots=True)
class _Target:
    """One pod port: its local listener, its tunnels, and what the pool and the last failure say."""

    pod_port: PodPort
    local: str
    server_task: asyncio.Task[None] | None = None
    tunnels: set[_Tunnel] = field(default_factory=set)
    calls: int = 0
    """Daemon calls in flight through this target (``PortForwarder.in_use``): its tunnels are busy."""
    last_error: str | None = None
    closed_at: float = -1.0
    """When the forwarder last closed one of its tunnels itself (idle or evicted)."""


@dataclass(eq=False, slots=True)
class _Tunnel:
    target: _Target
    task: asyncio.Task[None] | None
    last_active: float
    established: bool = False
    closing: bool = False
    """Being closed by the forwarder: its slot is free once its WebSocket is closed."""


class PortForwarder:
    """One local listener per pod port, created on first use; at most ``max_tunnels`` tunnels open."""

    def __init__(
        self,
        open_tunnel: OpenTunnel,
        *,
        max_tunnels: int = 256,
        idle_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_tunnels < 1:
            raise ValueError("max_tunnels must be at least 1")
        self.open_tunnel = open_tunnel
        self.max_tunnels = max_tunnels
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.clock = clock
        self.peak_tunnels = 0
        """The most tunnels ever open at once (opening ones included)."""
        self.opened = 0
        """Tunnels opened so far (WebSocket established)."""
        self.evicted = 0
        """Tunnels closed to make room for another."""
        self._targets: dict[PodPort, _Target] = {}
        self._slots: set[_Tunnel] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._reaper: asyncio.Task[None] | None = None

    # -- what the daemon pool uses -----------------------------------------------------------------

    def local_address(self, address: str) -> str:
        """The ``tcp://127.0.0.1:<port>`` to dial for ``address``; usable at once (connections queue)."""
        pod_port = PodPort.parse(address)
        known = self._targets.get(pod_port)
        if known is not None:
            return known.local
        listener = socket.create_server(("127.0.0.1", 0))
        target = _Target(pod_port, f"tcp://127.0.0.1:{listener.getsockname()[1]}")
        target.server_task = asyncio.ensure_future(self._serve(listener, target))
        self._targets[pod_port] = target
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap_idle())
        return target.local

    def last_error(self, address: str) -> str | None:
        """Why the last tunnel to ``address`` could not be opened, or None if the last one opened."""
        target = self._target(address)
        return target.last_error if target is not None else None

    @contextlib.contextmanager
    def in_use(self, address: str) -> Iterator[None]:
        """Mark a daemon call in flight to ``address``: its tunnels are neither idle nor evictable."""
        target = self._target(address)
        if target is None:
            yield
            return
        target.calls += 1
        try:
            yield
        finally:
            target.calls -= 1
            now = self.clock()
            for tunnel in target.tunnels:
                tunnel.last_active = now
            if target.calls == 0:
                self._wake()

    def closed_since(self, address: str, since: float) -> bool:
        """Whether the forwarder itself closed a tunnel of ``address`` at or after ``since`` (clock time)."""
        target = self._target(address)
        return target is not None and target.closed_at >= since

    @property
    def open_tunnels(self) -> int:
        return len(self._slots)

    def stats(self) -> dict[str, int]:
        return {
            "open": len(self._slots),
            "peak": self.peak_tunnels,
            "max": self.max_tunnels,
            "opened": self.opened,
            "evicted": self.evicted,
            "targets": len(self._targets),
        }

    async def forget(self, address: str) -> None:
        target = self._targets.pop(PodPort.parse(address), None)
        if target is None:
            return
        tasks = [t.task for t in target.tunnels if t.task is not None]
        if target.server_task is not None:
            tasks.append(target.server_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        for pod_port in list(self._targets):
            await self.forget(pod_port.address)
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None

    # -- slots -------------------------------------------------------------------------------------

    def _target(self, address: str) -> _Target | None:
        try:
            return self._targets.get(PodPort.parse(address))
        except ValueError:
            return None

    async def _acquire(self, tunnel: _Tunnel) -> None:
        """Take a slot for ``tunnel``: a free one, one freed by closing an idle tunnel, or one that frees
        within ``connect_timeout``. A closed tunnel's slot is free only once its WebSocket is closed, so
        the API server never holds more than ``max_tunnels`` of the operator's streams."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        while len(self._slots) >= self.max_tunnels:
            victim = self._victim()
            if victim is not None:
                self.evicted += 1
                logger.debug("port-forward: closing %s's tunnel to make room", victim.target.pod_port.address)
                self._close(victim)
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise NoFreeTunnel(
                    f"all {self.max_tunnels} tunnels carried calls for {self.connect_timeout:g}s (--max-tunnels)"
                ) from None
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self._slots.add(tunnel)
        tunnel.target.tunnels.add(tunnel)
        self.peak_tunnels = max(self.peak_tunnels, len(self._slots))

    def _victim(self) -> _Tunnel | None:
        """The least recently active open tunnel of a daemon with no call in flight."""
        idle = [t for t in self._slots if t.established and not t.closing and t.target.calls == 0]
        return min(idle, key=lambda t: t.last_active, default=None)

    def _release(self, tunnel: _Tunnel) -> None:
        if tunnel in self._slots:
            self._slots.discard(tunnel)
            self._wake()
        tunnel.target.tunnels.discard(tunnel)

    def _close(self, tunnel: _Tunnel) -> None:
        """Close a tunnel the forwarder chose to close; its slot frees when its task has ended."""
        tunnel.closing = True
        tunnel.target.closed_at = self.clock()
        if tunnel.task is not None:
            tunnel.task.cancel()
        else:
            self._release(tunnel)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _reap_idle(self) -> None:
        period = max(0.02, min(self.idle_timeout / 4, 5.0))
        while True:
            await asyncio.sleep(period)
            limit = self.clock() - self.idle_timeout
            for tunnel in [t for t in self._slots if t.established and not t.closing and t.target.calls == 0]:
                if tunnel.last_active <= limit:
                    logger.debug("port-forward: closing idle tunnel to %s", tunnel.target.pod_port.address)
                    self._close(tunnel)

    # -- tunnels -----------------------------------------------------------------------------------

    async def _serve(self, listener: socket.socket, target: _Target) -> None:
        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            tunnel = _Tunnel(target, asyncio.current_task(), self.clock())
            try:
                await self._acquire(tunnel)
                await self._tunnel(reader, writer, tunnel)
            except asyncio.CancelledError:
                pass  # closed by the forwarder (idle, evicted, forgotten): the connection just ends
            except Exception as error:  # one broken stream must not stop the listener
                if tunnel.established and not isinstance(error, TunnelBroken):
                    # gRPC hung up, or the stream broke after it worked: nothing to tell about the pod.
                    logger.debug("port-forward to %s ended: %r", target.pod_port.address, error)
                else:
                    target.last_error = describe_failure(target.pod_port, error, connect_timeout=self.connect_timeout)
                    logger.info("%s", target.last_error)
            finally:
                self._release(tunnel)
                writer.close()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await writer.wait_closed()

        server = await asyncio.start_server(connected, sock=listener)
        async with server:
            await server.serve_forever()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tunnel: _Tunnel) -> None:
        pod_port = tunnel.target.pod_port
        async with asyncio.timeout(self.connect_timeout):
            ws = await self.open_tunnel(pod_port.namespace, pod_port.pod, pod_port.port)
        async with ws:
            tunnel.established = True
            tunnel.target.last_error = None
            self.opened += 1

            async def upstream() -> None:
                while data := await reader.read(65536):
                    tunnel.last_active = self.clock()
                    await ws.send_bytes(bytes([_DATA]) + data)

            async def downstream() -> None:
                # The first frame on each channel carries the port number (2 bytes, little endian).
                headers_seen: set[int] = set()
                async for message in ws:
                    if message.type is not aiohttp.WSMsgType.BINARY or not message.data:
                        continue
                    channel, payload = message.data[0], message.data[1:]
                    if channel not in headers_seen:
                        headers_seen.add(channel)
                        payload = payload[2:]
                    if channel == _DATA and payload:
                        tunnel.last_active = self.clock()
                        writer.write(payload)
                        await writer.drain()
                    elif channel == _ERROR and payload:
                        raise TunnelBroken(payload.decode(errors="replace"))

            tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
