"""Reaching a daemon pod through the API server's port-forward, as ``kubectl gadget`` does.

IG's own DaemonSet serves gRPC on ``127.0.0.1:8080`` inside each pod, with no containerPort and no
Service, so a stock install can only be reached through ``pods/<pod>/portforward``. For each daemon
pod this module opens a local TCP listener on 127.0.0.1; every connection gRPC makes to it becomes one
port-forward stream (WebSocket, subprotocol ``v4.channel.k8s.io``) to the pod's port.

Addresses of this kind are written ``portforward://<namespace>/<pod>:<port>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

logger = logging.getLogger(__name__)

SCHEME = "portforward://"
SUBPROTOCOL = "v4.channel.k8s.io"
_DATA, _ERROR = 0, 1

OpenTunnel = Callable[[str, str, int], Awaitable[aiohttp.ClientWebSocketResponse]]
"""Opens the WebSocket of ``pods/<pod>/portforward?ports=<port>`` in a namespace (``kube.KubeApi``)."""


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


class PortForwarder:
    """One local listener per pod port, created on first use."""

    def __init__(self, open_tunnel: OpenTunnel) -> None:
        self.open_tunnel = open_tunnel
        self._listeners: dict[PodPort, tuple[str, asyncio.Task[None]]] = {}

    def local_address(self, address: str) -> str:
        """The ``tcp://127.0.0.1:<port>`` to dial for ``address``; usable at once (connections queue)."""
        target = PodPort.parse(address)
        known = self._listeners.get(target)
        if known is not None:
            return known[0]
        listener = socket.create_server(("127.0.0.1", 0))
        local = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        self._listeners[target] = (local, asyncio.ensure_future(self._serve(listener, target)))
        return local

    async def forget(self, address: str) -> None:
        entry = self._listeners.pop(PodPort.parse(address), None)
        if entry is not None:
            entry[1].cancel()
            await asyncio.gather(entry[1], return_exceptions=True)

    async def close(self) -> None:
        for target in list(self._listeners):
            await self.forget(target.address)

    async def _serve(self, listener: socket.socket, target: PodPort) -> None:
        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self._tunnel(reader, writer, target)
            except Exception as error:  # one broken stream must not stop the listener
                logger.info("port-forward to %s failed: %s", target.address, error)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

        server = await asyncio.start_server(connected, sock=listener)
        async with server:
            await server.serve_forever()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: PodPort) -> None:
        async with await self.open_tunnel(target.namespace, target.pod, target.port) as ws:

            async def upstream() -> None:
                while data := await reader.read(65536):
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
                        writer.write(payload)
                        await writer.drain()
                    elif channel == _ERROR and payload:
                        raise ConnectionError(payload.decode(errors="replace"))

            tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
