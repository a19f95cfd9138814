"""``gadget-operator ctl``: targets, rendering, exit codes, both transports, and finding the operator pod.

The CLI runs as a user runs it (``CliRunner``, its own ``asyncio.run``) against a fake ControlService
served by a real ``grpc.aio`` server (and a fake HTTP/JSON listener) on a loop of its own thread, and,
for discovery, against the API emulator's Leases, Pods and ``pods/portforward``.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest
import trustme
import yaml
from aiohttp import web
from click.testing import CliRunner, Result
from google.protobuf import json_format
from rich.console import Console

from gadget_operator import cli, ctl
from gadget_operator.control import locate
from gadget_operator.control.pb import control_pb2, control_pb2_grpc
from gadget_operator.testing.kube_emulator import PORT_ANNOTATION_PREFIX, EmulatorThread
from gadget_operator.testing.operator_process import free_port

T = TypeVar("T")
pb = control_pb2
NOW = datetime(2026, 11, 26, 17, 40, 0, tzinfo=UTC)


def timestamp(moment: datetime) -> Any:
    value = pb.LogEntry().timestamp
    value.FromDatetime(moment)
    return value


def sample_state() -> control_pb2.State:
    state = pb.State(
        operator=pb.OperatorInfo(
            version="0.1.0",
            role="leader",
            identity="gadget-operator-7d9f-abcde_0123456789ab",
            settings={"store": "shared"},
        ),
        resources=[
            pb.ResourceState(
                kind="GadgetInstance",
                namespace="default",
                name="trace-exec",
                generation=3,
                observed_generation=2,
                phase="Degraded",
                message="running on 1 of 2 node(s)",
                nodes=[
                    pb.NodeEntry(node="worker-1", state="Running", instance_id="a" * 32),
                    pb.NodeEntry(node="worker-2", state="Failed", instance_id="b" * 32, message="pull denied"),
                ],
                rollout=pb.RolloutState(
                    strategy="RollingUpdate", max_surge=1, updated_nodes=1, updating_nodes=1, halted=True
                ),
            ),
            pb.ResourceState(kind="ClusterGadgetInstance", name="node-wide", generation=1, observed_generation=1),
        ],
        daemons=[
            pb.DaemonState(
                node="worker-1", address="unix:///run/1.sock", transport="unix", reachable=True, instances=1
            ),
            pb.DaemonState(node="worker-2", address="unix:///run/2.sock", transport="unix", last_error="refused"),
        ],
    )
    state.operator.started.FromDatetime(datetime(2026, 11, 26, 17, 37, 0, tzinfo=UTC))
    state.daemons[0].last_contact.FromDatetime(datetime(2026, 11, 26, 17, 39, 55, tzinfo=UTC))
    return state


def entry(sequence: int, *, summary: str = "", dropped: int = 0, **event: Any) -> control_pb2.LogEntry:
    message = pb.LogEntry(sequence=sequence, summary=summary, dropped=dropped, **event)
    message.timestamp.FromDatetime(datetime(2026, 11, 26, 17, 40, sequence, tzinfo=UTC))
    return message


GI = pb.ResourceRef(kind="GadgetInstance", namespace="default", name="trace-exec")


# -- targets -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("all", pb.ResyncIntent(all=True)),
        ("node/worker-1", pb.ResyncIntent(node="worker-1")),
        ("nodes/worker-1", pb.ResyncIntent(node="worker-1")),
        (
            "gi/trace-exec",
            pb.ResyncIntent(resource=pb.ResourceRef(kind="GadgetInstance", namespace="ns", name="trace-exec")),
        ),
        ("gadgetinstance/x", pb.ResyncIntent(resource=pb.ResourceRef(kind="GadgetInstance", namespace="ns", name="x"))),
        (
            "gadgetinstances.gadget-operator.io/x",
            pb.ResyncIntent(resource=pb.ResourceRef(kind="GadgetInstance", namespace="ns", name="x")),
        ),
        ("cgi/everywhere", pb.ResyncIntent(resource=pb.ResourceRef(kind="ClusterGadgetInstance", name="everywhere"))),
        ("CGI/x", pb.ResyncIntent(resource=pb.ResourceRef(kind="ClusterGadgetInstance", name="x"))),
    ],
)
def test_a_resync_target_becomes_its_intent(target: str, expected: control_pb2.ResyncIntent) -> None:
    assert ctl.resync_intent(target, "ns") == pb.Intent(resync=expected)


@pytest.mark.parametrize("target", ["", "everything", "gi", "gi/", "gi/a/b", "pod/x", "node/", "node", "deploy/x"])
def test_a_bad_resync_target_is_refused_with_what_is_expected(target: str) -> None:
    with pytest.raises(ctl.click.BadParameter, match="expected"):
        ctl.resync_intent(target, "ns")


def test_a_rollout_intent_names_the_action_and_the_resource() -> None:
    assert ctl.rollout_intent("pause", "gi/trace-exec", "default") == pb.Intent(
        rollout=pb.RolloutIntent(action=pb.RolloutIntent.PAUSE, resource=GI)
    )
    assert ctl.rollout_intent("next", "cgi/x", "ignored").rollout.resource == pb.ResourceRef(
        kind="ClusterGadgetInstance", name="x"
    )
    with pytest.raises(ctl.click.BadParameter, match="gi/NAME or cgi/NAME"):
        ctl.rollout_intent("resume", "node/worker-1", "default")


def test_only_namespaced_targets_need_a_namespace() -> None:
    assert ctl.needs_namespace("gi/x")
    assert not ctl.needs_namespace("cgi/x")
    assert not ctl.needs_namespace("node/x")
    assert not ctl.needs_namespace("all")


# -- rendering -----------------------------------------------------------------------------------------


def text_of(renderable: Any) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_the_state_shows_the_operator_its_resources_the_nodes_not_running_and_the_daemons() -> None:
    text = text_of(ctl.render_state(sample_state(), now=NOW))
    lines = [" ".join(line.split()) for line in text.splitlines()]
    assert "gadget-operator 0.1.0 leader gadget-operator-7d9f-abcde_0123456789ab up 3m" in lines
    assert "store=shared" in lines
    assert "gi default/trace-exec Degraded 1/2 2/3 RollingUpdate 1/2 (+1) halted running on 1 of 2 node(s)" in lines
    assert "cgi node-wide 0/0 1/1" in lines
    assert "default/trace-exec worker-2 Failed bbbbbbbbbbbb pull denied" in lines
    assert not any("worker-1" in line and "Running" in line for line in lines)  # only nodes not running
    assert "worker-1 unix:///run/1.sock unix yes 1 5s ago" in lines
    assert "worker-2 unix:///run/2.sock unix no 0 never refused" in lines


def test_an_empty_state_says_so() -> None:
    text = text_of(ctl.render_state(pb.State(operator=pb.OperatorInfo(role="standby")), now=NOW))
    assert "no GadgetInstances or ClusterGadgetInstances" in text
    assert "no daemons" in text
    assert "standby" in text


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            {
                "instance": pb.InstanceEvent(
                    action=pb.InstanceEvent.FAILED, resource=GI, node="w1", instance_id="c" * 32, message="denied"
                )
            },
            "default/trace-exec on w1: instance cccccccccccc failed: denied",
        ),
        (
            {"node": pb.NodeEvent(action=pb.NodeEvent.UNREACHABLE, node="w2", message="refused")},
            "node w2 unreachable: refused",
        ),
        (
            {"resource": pb.ResourceEvent(resource=GI, phase="Running", previous_phase="Pending")},
            "default/trace-exec Pending -> Running",
        ),
        (
            {
                "rollout": pb.RolloutEvent(
                    action=pb.RolloutEvent.STEP,
                    resource=pb.ResourceRef(kind="ClusterGadgetInstance", name="x"),
                    updated_nodes=2,
                    total_nodes=4,
                    nodes=["w3", "w4"],
                )
            },
            "cgi/x rollout step: 2/4 updated (w3, w4)",
        ),
        ({"leadership": pb.LeadershipEvent(role="leader", identity="op_1")}, "op_1 is leader"),
        (
            {
                "intent": pb.IntentEvent(
                    intent=pb.Intent(resync=pb.ResyncIntent(node="w1")),
                    result=pb.IntentResult(accepted=False, message="unknown node"),
                )
            },
            "resync node/w1 refused: unknown node",
        ),
    ],
)
def test_an_event_without_a_summary_is_summarised_from_its_fields(event: dict[str, Any], expected: str) -> None:
    assert ctl.entry_summary(entry(1, **event)) == expected


def test_an_event_line_has_the_time_the_kind_and_the_operators_own_summary() -> None:
    line = ctl.render_entry(entry(7, summary="created it", node=pb.NodeEvent(action=pb.NodeEvent.JOINED)), tz=UTC)
    assert line.plain == "17:40:07.000 node       created it"
    assert ctl.entry_style(entry(1, node=pb.NodeEvent(action=pb.NodeEvent.UNREACHABLE))) == "red"


def test_gaps_count_what_the_buffer_dropped_before_the_first_entry_and_between_entries() -> None:
    gaps = ctl.Gaps()
    assert [gaps.before(entry(s, dropped=d)) for s, d in ((41, 40), (42, 0), (45, 0), (46, 0))] == [40, 0, 2, 0]


# -- a fake operator -------------------------------------------------------------------------------------


class FakeControl(control_pb2_grpc.ControlServiceServicer):
    """Canned answers; records the requests."""

    def __init__(self) -> None:
        self.state = sample_state()
        self.replay = [entry(1, summary="first"), entry(2, summary="second")]
        self.live = [entry(3, summary="live one")]
        self.result = pb.IntentResult(accepted=True, message="resync of default/trace-exec queued")
        self.intents: list[control_pb2.Intent] = []
        self.follows: list[bool] = []
        self.failure: tuple[grpc.StatusCode, str] | None = None

    async def _fail(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self.failure is not None:
            await context.abort(*self.failure)

    async def GetState(
        self, request: control_pb2.StateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.State:
        await self._fail(context)
        return self.state

    async def Events(
        self, request: control_pb2.EventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[control_pb2.LogEntry]:
        await self._fail(context)
        follow = request.follow if request.HasField("follow") else True
        self.follows.append(follow)
        for item in self.replay + (self.live if follow else []):
            yield item

    async def Execute(
        self, request: control_pb2.Intent, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.IntentResult:
        await self._fail(context)
        self.intents.append(request)
        return self.result


class LoopThread:
    """An event loop on a thread of its own, for servers the CLI's own ``asyncio.run`` talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-operator", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class ServerTLS:
    """A serving certificate for ``localhost`` (not the 127.0.0.1 dialled) that requires client certificates."""

    ca: trustme.CA
    directory: Path

    def __post_init__(self) -> None:
        self.server = self.ca.issue_cert("localhost")
        self.client = self.ca.issue_cert("someone@example.org")
        self.ca.cert_pem.write_to_path(str(self.directory / "ca.pem"))
        self.client.cert_chain_pems[0].write_to_path(str(self.directory / "client.pem"))
        self.client.private_key_pem.write_to_path(str(self.directory / "client.key"))

    def client_args(self) -> list[str]:
        files = {"--tls-ca": "ca.pem", "--tls-cert": "client.pem", "--tls-key": "client.key"}
        return [arg for flag, name in files.items() for arg in (flag, str(self.directory / name))]

    def grpc(self) -> grpc.ServerCredentials:
        chain = b"".join(blob.bytes() for blob in self.server.cert_chain_pems)
        return grpc.ssl_server_credentials(
            [(self.server.private_key_pem.bytes(), chain)],
            root_certificates=self.ca.cert_pem.bytes(),
            require_client_auth=True,
        )

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(context)
        self.ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
        return context


class FakeOperator:
    """The fake ControlService on a real gRPC socket, and its HTTP/JSON twin."""

    def __init__(self, thread: LoopThread, tls: ServerTLS | None = None) -> None:
        self.thread = thread
        self.tls = tls
        self.control = FakeControl()
        self.grpc_port = 0
        self.http_port = 0
        self.http_status_of_refusal = 200
        self.http_bad_request: str | None = None
        self._server: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"

    async def start(self) -> None:
        self._server = grpc.aio.server()
        control_pb2_grpc.add_ControlServiceServicer_to_server(self.control, self._server)
        if self.tls is not None:
            self.grpc_port = self._server.add_secure_port("127.0.0.1:0", self.tls.grpc())
        else:
            self.grpc_port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        app = web.Application()
        app.router.add_get("/v1/state", self._state)
        app.router.add_get("/v1/events", self._events)
        app.router.add_post("/v1/execute", self._execute)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls.context() if self.tls else None)
        await site.start()
        self.http_port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _state(self, request: web.Request) -> web.Response:
        return web.Response(text=json_format.MessageToJson(self.control.state), content_type="application/json")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        follow = request.query.get("follow", "true") != "false"
        self.control.follows.append(follow)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for item in self.control.replay + (self.control.live if follow else []):
            await response.write(json_format.MessageToJson(item, indent=None).encode() + b"\n")
        await response.write_eof()
        return response

    async def _execute(self, request: web.Request) -> web.Response:
        if self.http_bad_request is not None:
            return web.json_response({"message": self.http_bad_request}, status=400)
        intent = json_format.Parse(await request.text(), pb.Intent())
        self.control.intents.append(intent)
        status = 200 if self.control.result.accepted else self.http_status_of_refusal
        body = json_format.MessageToJson(self.control.result, always_print_fields_with_no_presence=True)
        return web.Response(text=body, status=status, content_type="application/json")


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def fake(loop_thread: LoopThread) -> Iterator[FakeOperator]:
    operator = FakeOperator(loop_thread)
    loop_thread.run(operator.start())
    try:
        yield operator
    finally:
        loop_thread.run(operator.stop())


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli.main, ["ctl", *args])


# -- the CLI over gRPC --------------------------------------------------------------------------------


def test_ctl_is_a_command_of_gadget_operator_with_its_four_subcommands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    for command in ("state", "events", "resync", "rollout"):
        assert command in result.output


def test_state_prints_the_table_by_default_and_the_messages_json_with_o_json(fake: FakeOperator) -> None:
    result = invoke("state", "--address", fake.address)
    assert result.exit_code == 0, result.output
    assert "trace-exec" in result.output
    assert "Degraded" in result.output

    result = invoke("state", "--address", fake.address, "-o", "json")
    assert result.exit_code == 0, result.output
    assert json_format.Parse(result.output, pb.State()) == fake.control.state
    body = json.loads(result.output)
    assert body["resources"][0]["observedGeneration"] == 2  # as the HTTP listener writes it: int64 as a number
    assert body["resources"][1]["phase"] == ""  # every field present, for scripts


def test_events_replays_by_default_and_follows_with_follow(fake: FakeOperator) -> None:
    result = invoke("events", "--address", fake.address)
    assert result.exit_code == 0, result.output
    assert [line.split(maxsplit=2)[2] for line in result.output.splitlines()] == ["first", "second"]
    assert fake.control.follows == [False]

    result = invoke("events", "--address", fake.address, "--follow", "-o", "json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["summary"] for line in lines] == ["first", "second", "live one"]
    assert fake.control.follows == [False, True]
    # The fake ends the followed stream: that is the operator going away, not a normal end.
    assert result.exit_code == ctl.EXIT_UNREACHABLE
    assert "the operator ended the event stream" in result.stderr


def test_events_notes_what_the_operators_buffer_dropped(fake: FakeOperator) -> None:
    fake.control.replay = [entry(11, summary="first kept", dropped=10), entry(14, summary="after a gap")]
    result = invoke("events", "--address", fake.address)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "10 earlier event(s) dropped" in lines[0]
    assert "first kept" in lines[1]
    assert "2 earlier event(s) dropped" in lines[2]


def test_resync_sends_the_intent_and_prints_what_was_done(fake: FakeOperator) -> None:
    result = invoke("resync", "gi/trace-exec", "-n", "default", "--address", fake.address)
    assert result.exit_code == 0, result.output
    assert result.output == "resync default/trace-exec: accepted: resync of default/trace-exec queued\n"
    assert fake.control.intents == [pb.Intent(resync=pb.ResyncIntent(resource=GI))]

    assert invoke("resync", "all", "--address", fake.address).exit_code == 0
    assert invoke("resync", "node/worker-2", "--address", fake.address).exit_code == 0
    assert fake.control.intents[1:] == [
        pb.Intent(resync=pb.ResyncIntent(all=True)),
        pb.Intent(resync=pb.ResyncIntent(node="worker-2")),
    ]


def test_a_refused_intent_exits_1_with_the_operators_reason(fake: FakeOperator) -> None:
    fake.control.result = pb.IntentResult(accepted=False, message="no rollout in progress for default/trace-exec")
    result = invoke("rollout", "next", "gi/trace-exec", "-n", "default", "--address", fake.address)
    assert result.exit_code == ctl.EXIT_REFUSED
    assert "rollout next default/trace-exec: refused: no rollout in progress for default/trace-exec" in result.output
    assert fake.control.intents == [pb.Intent(rollout=pb.RolloutIntent(action=pb.RolloutIntent.NEXT, resource=GI))]

    result = invoke("rollout", "pause", "cgi/x", "--address", fake.address, "-o", "json")
    assert result.exit_code == ctl.EXIT_REFUSED
    assert json.loads(result.stdout) == {"accepted": False, "message": "no rollout in progress for default/trace-exec"}


def test_the_namespace_of_gi_defaults_to_the_kubeconfigs(fake: FakeOperator, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path, "http://127.0.0.1:1", namespace="team-a")
    result = invoke("rollout", "resume", "gi/trace-exec", "--kubeconfig", kubeconfig, "--address", fake.address)
    assert result.exit_code == 0, result.output
    assert fake.control.intents[-1].rollout.resource.namespace == "team-a"


def test_bad_usage_exits_2(fake: FakeOperator) -> None:
    result = invoke("resync", "pod/x", "--address", fake.address)
    assert result.exit_code == 2
    assert "expected gi/NAME, cgi/NAME, node/NAME or all" in result.output
    assert invoke("rollout", "restart", "gi/x", "--address", fake.address).exit_code == 2
    assert fake.control.intents == []


def test_an_operator_that_cannot_be_reached_exits_3_and_says_where() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = invoke("state", "--address", address, "--timeout", "5")
    assert result.exit_code == ctl.EXIT_UNREACHABLE
    assert f"cannot reach the operator's control API at {address}" in result.output


def test_an_error_answer_exits_4_with_the_status_and_details(fake: FakeOperator) -> None:
    fake.control.failure = (grpc.StatusCode.PERMISSION_DENIED, "not for you")
    result = invoke("resync", "all", "--address", fake.address)
    assert result.exit_code == ctl.EXIT_FAILED
    assert f"the operator's control API at {fake.address} answered PERMISSION_DENIED: not for you" in result.output


# -- the CLI over HTTP/JSON -----------------------------------------------------------------------------


def test_the_http_listener_serves_the_same_messages(fake: FakeOperator) -> None:
    result = invoke("state", "--address", fake.url, "-o", "json")
    assert result.exit_code == 0, result.output
    assert json_format.Parse(result.output, pb.State()) == fake.control.state

    result = invoke("events", "--address", fake.url)
    assert result.exit_code == 0, result.output
    assert [line.split(maxsplit=2)[2] for line in result.output.splitlines()] == ["first", "second"]
    assert fake.control.follows == [False]

    result = invoke("resync", "cgi/x", "--address", fake.url)
    assert result.exit_code == 0, result.output
    assert fake.control.intents == [
        pb.Intent(resync=pb.ResyncIntent(resource=pb.ResourceRef(kind="ClusterGadgetInstance", name="x")))
    ]


def test_a_refusal_over_http_exits_1_whatever_the_status(fake: FakeOperator) -> None:
    fake.control.result = pb.IntentResult(accepted=False, message="not the leader")
    for status in (200, 409):
        fake.http_status_of_refusal = status
        result = invoke("resync", "all", "--address", fake.url)
        assert result.exit_code == ctl.EXIT_REFUSED, result.output
        assert "resync all: refused: not the leader" in result.output


def test_an_http_error_exits_4_and_nothing_listening_exits_3(fake: FakeOperator) -> None:
    result = invoke("state", "--address", fake.url + "/nowhere")
    assert result.exit_code == ctl.EXIT_FAILED
    assert "answered HTTP 404" in result.output
    fake.http_bad_request = "the body is not an Intent"
    result = invoke("resync", "all", "--address", fake.url)
    assert result.exit_code == ctl.EXIT_FAILED
    assert "answered HTTP 400: the body is not an Intent" in result.output
    result = invoke("state", "--address", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == ctl.EXIT_UNREACHABLE
    assert "cannot reach the operator's control API" in result.output


def test_tls_and_client_certificates_on_both_transports(loop_thread: LoopThread, tmp_path: Path) -> None:
    tls = ServerTLS(trustme.CA(), tmp_path)
    operator = FakeOperator(loop_thread, tls)
    loop_thread.run(operator.start())
    try:
        for address in (operator.address, operator.url):
            result = invoke("resync", "all", "--address", address, *tls.client_args(), "--tls-server-name", "localhost")
            assert result.exit_code == 0, result.output
        assert len(operator.control.intents) == 2

        # Without a client certificate the handshake fails: the operator is not reached.
        ca_only = ["--tls-ca", str(tmp_path / "ca.pem"), "--tls-server-name", "localhost"]
        result = invoke("state", "--address", operator.address, *ca_only)
        assert result.exit_code == ctl.EXIT_UNREACHABLE, result.output
        # Plaintext against TLS, and a certificate that does not name the address dialled: the same.
        result = invoke("state", "--address", operator.address)
        assert result.exit_code == ctl.EXIT_UNREACHABLE
        assert "(if the control API serves TLS: --tls or --tls-ca)" in result.output
        result = invoke("state", "--address", operator.url, *tls.client_args())
        assert result.exit_code == ctl.EXIT_UNREACHABLE
        assert "certificate" in result.output.lower()
    finally:
        loop_thread.run(operator.stop())


# -- finding the operator pod -------------------------------------------------------------------------------


class FakeCluster:
    def __init__(self, pods: list[dict[str, Any]], lease: dict[str, Any] | None) -> None:
        self.pods = pods
        self.lease = lease

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.lease

    async def list_pods(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        return self.pods, "1"


def pod(name: str, *, phase: str = "Running", ready: bool = True, env: dict[str, str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "operator", "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}
    return {
        "metadata": {"name": name, "namespace": locate.DEFAULT_NAMESPACE},
        "spec": {"containers": [container]},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def holding(identity: str) -> dict[str, Any]:
    return {"spec": {"holderIdentity": identity}}


async def test_the_lease_holder_is_chosen_among_the_running_pods() -> None:
    cluster = FakeCluster([pod("op-a"), pod("op-b")], holding("op-b_0123456789ab"))
    found = await locate.find_operator(cluster)
    assert (found.name, found.port) == ("op-b", locate.DEFAULT_PORT)
    assert found.why == "holds Lease gadget-operator-system/gadget-operator"


async def test_without_a_usable_lease_a_ready_running_pod_is_chosen() -> None:
    pods = [pod("op-a", ready=False), pod("op-b"), pod("op-c", phase="Pending")]
    assert (await locate.find_operator(FakeCluster(pods, None))).name == "op-b"
    gone = await locate.find_operator(FakeCluster(pods, holding("op-old_0123456789ab")))
    assert gone.name == "op-b"
    assert "names op-old_0123456789ab, which is not one of them" in gone.why
    with pytest.raises(locate.NotFound, match=r"no Running operator pod .* pods there: op-c \(none Running\)"):
        await locate.find_operator(FakeCluster([pod("op-c", phase="Pending")], None))


def test_the_port_is_the_pods_own_control_address() -> None:
    assert locate.control_port(pod("op", env={locate.ADDRESS_VARIABLE: "127.0.0.1:7000"})) == 7000
    args = pod("op")
    args["spec"]["containers"][0]["args"] = ["run", "--control-address=0.0.0.0:7100"]
    assert locate.control_port(args) == 7100
    args["spec"]["containers"][0]["args"] = ["run", "--control-address", "[::1]:7200"]
    assert locate.control_port(args) == 7200
    assert locate.control_port(pod("op")) == locate.DEFAULT_PORT
    with pytest.raises(locate.NotFound, match="control API off"):
        locate.control_port(pod("op", env={locate.ADDRESS_VARIABLE: ""}))


# -- through the API server's port-forward (the emulator) ------------------------------------------------------------


def write_kubeconfig(directory: Path, server: str, *, namespace: str = "default") -> str:
    path = directory / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "someone", "user": {"token": "secret"}}],
                "contexts": [
                    {"name": "emulator", "context": {"cluster": "emulator", "user": "someone", "namespace": namespace}}
                ],
                "current-context": "emulator",
            }
        )
    )
    return str(path)


def operator_pod(name: str, target: str, port: int = locate.DEFAULT_PORT) -> dict[str, Any]:
    body = pod(name)
    body |= {"apiVersion": "v1", "kind": "Pod"}
    body["metadata"] |= {
        "labels": {"app.kubernetes.io/name": "gadget-operator", "app.kubernetes.io/component": "operator"},
        "annotations": {f"{PORT_ANNOTATION_PREFIX}{port}": target},
    }
    return body


@pytest.fixture
def two_operators(loop_thread: LoopThread) -> Iterator[tuple[FakeOperator, FakeOperator]]:
    leader, standby = FakeOperator(loop_thread), FakeOperator(loop_thread)
    for operator, role in ((leader, "leader"), (standby, "standby")):
        loop_thread.run(operator.start())
        operator.control.state.operator.role = role
        operator.control.state.operator.identity = f"{role}-pod_0123456789ab"
    try:
        yield leader, standby
    finally:
        for operator in (leader, standby):
            loop_thread.run(operator.stop())


def test_ctl_finds_the_leader_through_the_lease_and_port_forwards_to_it(
    two_operators: tuple[FakeOperator, FakeOperator], tmp_path: Path
) -> None:
    leader, standby = two_operators
    with EmulatorThread() as cluster:
        cluster.call(
            cluster.emulator.put,
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gadget-operator-system"}},
        )
        cluster.call(cluster.emulator.put, operator_pod("aaa-standby-pod", f"tcp://{standby.address}"))
        cluster.call(cluster.emulator.put, operator_pod("leader-pod", f"tcp://{leader.address}"))
        kubeconfig = write_kubeconfig(tmp_path, cluster.url)

        # No Lease (a standalone operator): the first Running, Ready pod.
        result = invoke("state", "--kubeconfig", kubeconfig, "-o", "json", "-v")
        assert result.exit_code == 0, result.output
        assert "operator: pod gadget-operator-system/aaa-standby-pod (a Running pod labelled" in result.stderr
        assert json_format.Parse(result.stdout, pb.State()).operator.role == "standby"

        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "gadget-operator", "namespace": "gadget-operator-system"},
            "spec": {"holderIdentity": "leader-pod_0123456789ab", "leaseDurationSeconds": 10},
        }
        cluster.call(cluster.emulator.put, lease)
        result = invoke("resync", "gi/trace-exec", "--kubeconfig", kubeconfig)
        assert result.exit_code == 0, result.output
        assert leader.control.intents == [pb.Intent(resync=pb.ResyncIntent(resource=GI))]
        assert standby.control.intents == []
        forwarded = [r for r in cluster.emulator.requests if r.subresource == "portforward"]
        assert [(r.namespace, r.name) for r in forwarded] == [
            ("gadget-operator-system", "aaa-standby-pod"),
            ("gadget-operator-system", "leader-pod"),
        ]

        # The user may not port-forward: exit 3 with the API server's reason and the right to ask for.
        cluster.call(cluster.emulator.deny, "create", "pods", "portforward")
        result = invoke("state", "--kubeconfig", kubeconfig)
        assert result.exit_code == ctl.EXIT_UNREACHABLE
        assert "cannot reach the operator's control API at pod gadget-operator-system/leader-pod" in result.output
        assert "you need create on pods/portforward in gadget-operator-system" in " ".join(result.output.split())


def test_ctl_says_when_no_operator_pod_runs(tmp_path: Path) -> None:
    with EmulatorThread() as cluster:
        kubeconfig = write_kubeconfig(tmp_path, cluster.url)
        result = invoke("state", "--kubeconfig", kubeconfig, "--operator-namespace", "elsewhere")
        assert result.exit_code == ctl.EXIT_UNREACHABLE
        assert "no Running operator pod in namespace elsewhere" in result.output
