"""The emulator's ``pods/<pod>/portforward``: refusals answered as a real API server does, and the
server stays responsive with hundreds of streams open."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gadget_operator.testing.kube_emulator import PORT_ANNOTATION_PREFIX, KubeEmulator

SUBPROTOCOL = "v4.channel.k8s.io"


@pytest.fixture
async def emulator() -> AsyncIterator[KubeEmulator]:
    server = KubeEmulator()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def put_pod(emulator: KubeEmulator, name: str, target: str) -> None:
    emulator.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "gadget", "annotations": {f"{PORT_ANNOTATION_PREFIX}8080": target}},
            "spec": {"nodeName": name, "containers": [{"name": "gadget", "image": "ig"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1"},
        }
    )


def url(emulator: KubeEmulator, pod: str) -> str:
    return f"{emulator.url}/api/v1/namespaces/gadget/pods/{pod}/portforward?ports=8080"


async def refusal(emulator: KubeEmulator, pod: str) -> tuple[int, dict[str, object]]:
    """Status and body of a port-forward request that is answered without a WebSocket."""
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    headers |= {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": SUBPROTOCOL}
    async with aiohttp.ClientSession() as session, session.get(url(emulator, pod), headers=headers) as response:
        return response.status, await response.json()


async def test_a_denied_port_forward_is_forbidden_with_a_status_body(emulator: KubeEmulator) -> None:
    put_pod(emulator, "gadget-node-1", "tcp://127.0.0.1:1")
    emulator.deny("create", "pods", "portforward")

    status, body = await refusal(emulator, "gadget-node-1")

    assert status == 403
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods "gadget-node-1" is forbidden: User "system:anonymous" cannot create resource '
        '"pods/portforward" in API group "" in the namespace "gadget"',
        "reason": "Forbidden",
        "details": {"name": "gadget-node-1", "kind": "pods"},
        "code": 403,
    }
    # Authorization comes before the lookup: a denied requester cannot tell a missing pod.
    assert (await refusal(emulator, "gadget-missing"))[0] == 403
    assert [r.status for r in emulator.requests if r.subresource == "portforward"] == [403, 403]


async def test_denying_get_also_refuses_it_and_allow_undoes_it(emulator: KubeEmulator) -> None:
    put_pod(emulator, "gadget-node-1", "tcp://127.0.0.1:1")
    emulator.deny("get", "pods", "portforward")
    status, body = await refusal(emulator, "gadget-node-1")
    assert status == 403
    assert "cannot get resource" in str(body["message"])

    emulator.allow("get", "pods", "portforward")
    async with aiohttp.ClientSession() as session, session.ws_connect(url(emulator, "gadget-node-1")) as ws:
        assert ws.protocol is None or ws.protocol == SUBPROTOCOL


async def test_a_missing_pod_is_not_found(emulator: KubeEmulator) -> None:
    status, body = await refusal(emulator, "gadget-gone")
    assert (status, body["reason"], body["message"]) == (404, "NotFound", 'pods "gadget-gone" not found')


async def test_the_api_answers_promptly_with_hundreds_of_streams_open(emulator: KubeEmulator) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    count = 300
    for index in range(count):
        put_pod(emulator, f"gadget-node-{index}", target)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        streams = await asyncio.gather(
            *(
                session.ws_connect(url(emulator, f"gadget-node-{i}"), protocols=(SUBPROTOCOL,), max_msg_size=0)
                for i in range(count)
            )
        )
        for ws in streams:  # the two port headers (data and error channel), then an echo
            assert (await ws.receive_bytes()) == b"\x00\x90\x1f"
            assert (await ws.receive_bytes()) == b"\x01\x90\x1f"
        await asyncio.gather(*(ws.send_bytes(b"\x00ping") for ws in streams))
        assert {await ws.receive_bytes() for ws in streams} == {b"\x00ping"}
        assert emulator.portforwards_open == count

        async with asyncio.timeout(5), session.get(f"{emulator.url}/api/v1/namespaces/gadget/pods/gadget-node-1") as r:
            assert r.status == 200

        await asyncio.gather(*(ws.close() for ws in streams))
        async with asyncio.timeout(10):
            while True:
                if emulator.portforwards_open == 0:
                    break
                await asyncio.sleep(0.01)
        assert emulator.portforwards_peak == count
    finally:
        await session.close()
        server.close()
