"""The bytes on the wire match Inspektor Gadget's field numbers, built here by hand from raw field tags.

Neither side of these round trips uses the other's encoding: requests the client sends are compared
with an encoding made from the facts file's numbers, and a hand-encoded request sent to the simulator
is answered with bytes decoded by hand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from gadget_operator import errors
from gadget_operator.daemon import model
from gadget_operator.daemon.client import DaemonClient
from gadget_operator.simulator.server import SimulatedNode

VARINT, LENGTH = 0, 2


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, value: int | bytes | str) -> bytes:
    if isinstance(value, int):
        return varint(number << 3 | VARINT) + varint(value)
    raw = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | LENGTH) + varint(len(raw)) + raw


def decode(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one message level, in wire order."""
    fields, offset = [], 0

    def read_varint() -> int:
        nonlocal offset
        result = shift = 0
        while True:
            byte = data[offset]
            offset += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while offset < len(data):
        key = read_varint()
        if key & 7 == VARINT:
            fields.append((key >> 3, read_varint()))
        else:
            length = read_varint()
            fields.append((key >> 3, data[offset : offset + length]))
            offset += length
    return fields


INSTANCE = model.GadgetInstance(
    id="0123456789abcdef0123456789abcdef",
    name="trace-0123456789abcdef",
    image="trace_exec",
    params={"operator.KubeManager.namespace": "default"},
    tags=("team=sre",),
    nodes=("node-1",),
    log_level=3,
)

# CreateGadgetInstanceRequest{gadgetInstance=1 {id=1, gadgetConfig=2 {imageName=1, paramValues=2 (map entry:
# key=1, value=2), version=4, logLevel=12}, tags=3, nodes=5, name=6, state=7 {}}, eventBufferLength=2}
EXPECTED_CONFIG = (
    field(1, "trace_exec")
    + field(2, field(1, "operator.KubeManager.namespace") + field(2, "default"))
    + field(4, 1)
    + field(12, 3)
)
EXPECTED_INSTANCE = (
    field(1, INSTANCE.id)
    + field(2, EXPECTED_CONFIG)
    + field(3, "team=sre")
    + field(5, "node-1")
    + field(6, INSTANCE.name)
    + field(7, b"")
)
EXPECTED_REQUEST = field(1, EXPECTED_INSTANCE) + field(2, 256)


class RawServer:
    """A gRPC server with no deserializer: it records request bytes and answers with given bytes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.received: list[bytes] = []

    async def create(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
        self.received.append(request)
        return self.answer


@pytest.fixture
async def raw_server() -> AsyncIterator[tuple[RawServer, str]]:
    answer = field(1, 0) + field(
        2, field(1, INSTANCE.id) + field(6, INSTANCE.name) + field(7, field(1, 2) + field(2, "boom"))
    )
    recorder = RawServer(answer)
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(recorder.create)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("api.GadgetInstanceManager", {"CreateGadgetInstance": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield recorder, f"tcp://127.0.0.1:{port}"
    await server.stop(None)


async def test_the_clients_create_request_has_igs_field_numbers(raw_server: tuple[RawServer, str]) -> None:
    recorder, address = raw_server
    async with DaemonClient(address) as client:
        created = await client.create_instance(INSTANCE, event_buffer_length=256)

    assert decode(recorder.received[0]) == decode(EXPECTED_REQUEST)
    assert recorder.received[0] == EXPECTED_REQUEST
    # The hand-encoded answer decodes into the model: state.status 2 is StatusError with its message.
    assert (created.id, created.name, created.status, created.message) == (
        INSTANCE.id,
        INSTANCE.name,
        model.InstanceStatus.ERROR,
        "boom",
    )


async def test_a_method_the_server_lacks_is_a_clear_rejection(raw_server: tuple[RawServer, str]) -> None:
    _, address = raw_server
    async with DaemonClient(address) as client:
        with pytest.raises(errors.DaemonRejected, match="does not serve this call"):
            await client.list_instances()


async def test_the_simulator_understands_hand_encoded_requests(node: SimulatedNode) -> None:
    target = node.address.removeprefix("tcp://")
    async with grpc.aio.insecure_channel(target) as channel:
        create = channel.unary_unary("/api.GadgetInstanceManager/CreateGadgetInstance")
        get = channel.unary_unary("/api.GadgetInstanceManager/GetGadgetInstance")
        created = await create(EXPECTED_REQUEST)
        fetched = await get(field(1, INSTANCE.id))

    response = dict(decode(created))
    assert response.get(1, 0) == 0  # result 0 (proto3 leaves a zero out of the encoding)
    assert dict(decode(response[2]))[1] == INSTANCE.id.encode()  # type: ignore[arg-type]
    instance = dict(decode(fetched))
    config = decode(instance[2])  # type: ignore[arg-type]
    state = dict(decode(instance[7]))  # type: ignore[arg-type]
    assert instance[1] == INSTANCE.id.encode()
    assert instance[6] == INSTANCE.name.encode()
    assert (1, b"trace_exec") in config
    assert (12, 3) in config
    assert state[1] == 1  # StatusRunning
