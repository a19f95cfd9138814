"""``gadget-operator ctl``: the operator's control API from a terminal or a script.

    gadget-operator ctl state                       # every resource, node entry and daemon, now
    gadget-operator ctl events [--follow]           # what the operator did since it started (then live)
    gadget-operator ctl resync gi/NAME|cgi/NAME|node/NAME|all
    gadget-operator ctl rollout next|pause|resume gi/NAME|cgi/NAME

The operator is found through the kubeconfig: its leader pod (``control.locate``), reached through the
API server's port-forward, as ``kubectl port-forward`` would; ``--address`` connects directly instead
(gRPC ``host:port``, or the HTTP/JSON listener at ``http(s)://host:port``).

Output is a human rendering by default (``rich``), or with ``-o json`` the proto3 JSON of the very
messages the API returns (``State``, one ``LogEntry`` per line, ``IntentResult``), for scripts.

Exit codes: 0 done; 1 the operator refused the intent (``IntentResult.accepted`` false); 2 bad usage;
3 the operator could not be found or reached; 4 it answered with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, TypeVar

import click
from google.protobuf import json_format
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from gadget_operator import resource
from gadget_operator.control import client, locate
from gadget_operator.control.pb import control_pb2

T = TypeVar("T")

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3
EXIT_FAILED = 4

PHASE_STYLE = {
    "Running": "green",
    "Suspended": "cyan",
    "Pending": "yellow",
    "Degraded": "red",
    "Failed": "red",
    "Terminating": "magenta",
}
NODE_STATE_STYLE = {"Running": "green", "Pending": "yellow", "Failed": "red", "Unreachable": "red", "Removing": "cyan"}


class CtlFailure(click.ClickException):
    """A one-line error; each subclass has its own exit code."""


class Refused(CtlFailure):
    exit_code = EXIT_REFUSED


class NotReached(CtlFailure):
    exit_code = EXIT_UNREACHABLE


class Failed(CtlFailure):
    exit_code = EXIT_FAILED


# -- targets -------------------------------------------------------------------------------------------

_KIND_WORDS: dict[str, resource.Kind] = {}
for _kind in resource.KINDS:
    for _word in (_kind.short_name, _kind.kind.lower(), _kind.plural, f"{_kind.plural}.{resource.GROUP}"):
        _KIND_WORDS[_word] = _kind
_NODE_WORDS = frozenset({"node", "nodes", "no"})
RESOURCE_TARGETS = "gi/NAME or cgi/NAME"
RESYNC_TARGETS = "gi/NAME, cgi/NAME, node/NAME or all"


def resource_ref(target: str, namespace: str) -> control_pb2.ResourceRef:
    """``gi/NAME`` (in ``namespace``) or ``cgi/NAME``, with kubectl's other spellings of the kinds."""
    word, sep, name = target.partition("/")
    kind = _KIND_WORDS.get(word.lower())
    if not sep or kind is None or not name or "/" in name:
        raise click.BadParameter(f"{target!r}: expected {RESOURCE_TARGETS}", param_hint="TARGET")
    return control_pb2.ResourceRef(kind=kind.kind, namespace=namespace if kind.namespaced else "", name=name)


def resync_intent(target: str, namespace: str) -> control_pb2.Intent:
    """The intent of ``ctl resync TARGET``."""
    if target == "all":
        return control_pb2.Intent(resync=control_pb2.ResyncIntent(all=True))
    word, sep, name = target.partition("/")
    if word.lower() in _NODE_WORDS:
        if not sep or not name or "/" in name:
            raise click.BadParameter(f"{target!r}: expected node/NAME", param_hint="TARGET")
        return control_pb2.Intent(resync=control_pb2.ResyncIntent(node=name))
    if word.lower() not in _KIND_WORDS:
        raise click.BadParameter(f"{target!r}: expected {RESYNC_TARGETS}", param_hint="TARGET")
    return control_pb2.Intent(resync=control_pb2.ResyncIntent(resource=resource_ref(target, namespace)))


ROLLOUT_ACTIONS = {
    "next": control_pb2.RolloutIntent.NEXT,
    "pause": control_pb2.RolloutIntent.PAUSE,
    "resume": control_pb2.RolloutIntent.RESUME,
}


def rollout_intent(action: str, target: str, namespace: str) -> control_pb2.Intent:
    """The intent of ``ctl rollout ACTION TARGET``."""
    return control_pb2.Intent(
        rollout=control_pb2.RolloutIntent(action=ROLLOUT_ACTIONS[action], resource=resource_ref(target, namespace))
    )


def needs_namespace(target: str) -> bool:
    """Whether ``target`` names a namespaced resource (so the default namespace must be looked up)."""
    kind = _KIND_WORDS.get(target.partition("/")[0].lower())
    return kind is not None and kind.namespaced


# -- rendering -----------------------------------------------------------------------------------------


def to_json(message: Any, *, indent: int | None = 2) -> str:
    """The proto3 JSON of ``message`` as the HTTP/JSON listener writes it: every field present (scripts
    never miss a key that is false or zero), 64-bit integers as numbers."""
    return json_format.MessageToJson(
        message, indent=indent, always_print_fields_with_no_presence=True, unquote_int64_if_possible=True
    )


def ref_text(ref: control_pb2.ResourceRef | control_pb2.ResourceState) -> str:
    if ref.kind == resource.CLUSTER_KIND:
        return f"cgi/{ref.name}"
    return f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name


def age(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _timestamp(value: Any) -> datetime | None:
    """A ``google.protobuf.Timestamp`` as a datetime; None when unset."""
    if not value.seconds and not value.nanos:
        return None
    moment: datetime = value.ToDatetime(tzinfo=UTC)
    return moment


def _rollout_text(rollout: control_pb2.RolloutState) -> Text:
    total = rollout.updated_nodes + rollout.updating_nodes + rollout.waiting_nodes
    text = Text(f"{rollout.strategy or 'rollout'} {rollout.updated_nodes}/{total}")
    if rollout.updating_nodes:
        text.append(f" (+{rollout.updating_nodes})")
    if rollout.halted:
        text.append(" halted", style="red")
    if rollout.paused:
        text.append(" paused", style="yellow")
    return text


def render_state(state: control_pb2.State, *, now: datetime | None = None) -> RenderableType:
    """``ctl state``: who the operator is, then its resources, the nodes not running, and the daemons."""
    now = now or datetime.now(UTC)
    operator = state.operator
    started = _timestamp(operator.started)
    header = Text.assemble(
        ("gadget-operator ", "bold"),
        operator.version or "?",
        "  ",
        (operator.role or "?", "green" if operator.role == "leader" else "yellow"),
        "  ",
        operator.identity,
        f"  up {age(started, now)}" if started else "",
    )
    parts: list[RenderableType] = [header]
    if operator.settings:
        parts.append(Text("  ".join(f"{k}={v}" for k, v in sorted(operator.settings.items())), style="dim"))

    resources = Table(title="resources", title_justify="left", box=box.SIMPLE, expand=False)
    for column in ("KIND", "NAME", "PHASE", "READY", "GENERATION", "ROLLOUT", "MESSAGE"):
        resources.add_column(column, overflow="fold")
    for item in state.resources:
        running = sum(1 for entry in item.nodes if entry.state == "Running")
        kind = resource.CLUSTER_SHORT_NAME if item.kind == resource.CLUSTER_KIND else resource.SHORT_NAME
        behind = item.observed_generation != item.generation
        resources.add_row(
            kind,
            ref_text(item).removeprefix("cgi/"),
            Text(item.phase, style=PHASE_STYLE.get(item.phase, "")),
            f"{running}/{len(item.nodes)}",
            Text(f"{item.observed_generation}/{item.generation}", style="yellow" if behind else ""),
            _rollout_text(item.rollout) if item.HasField("rollout") else "",
            item.message,
        )
    parts.append(resources if state.resources else Text("no GadgetInstances or ClusterGadgetInstances", style="dim"))

    unwell = [(item, entry) for item in state.resources for entry in item.nodes if entry.state != "Running"]
    if unwell:
        nodes = Table(title="nodes not running", title_justify="left", box=box.SIMPLE, expand=False)
        for column in ("RESOURCE", "NODE", "STATE", "INSTANCE", "MESSAGE"):
            nodes.add_column(column, overflow="fold")
        for item, entry in unwell:
            nodes.add_row(
                ref_text(item),
                entry.node,
                Text(entry.state, style=NODE_STATE_STYLE.get(entry.state, "")),
                entry.instance_id[:12],
                entry.message,
            )
        parts.append(nodes)

    daemons = Table(title="daemons", title_justify="left", box=box.SIMPLE, expand=False)
    for column in ("NODE", "ADDRESS", "TRANSPORT", "REACHABLE", "INSTANCES", "LAST CONTACT", "LAST ERROR"):
        daemons.add_column(column, overflow="fold")
    for daemon in state.daemons:
        contact = _timestamp(daemon.last_contact)
        daemons.add_row(
            daemon.node,
            daemon.address,
            daemon.transport,
            Text("yes", style="green") if daemon.reachable else Text("no", style="red"),
            str(daemon.instances),
            f"{age(contact, now)} ago" if contact else "never",
            daemon.last_error,
        )
    parts.append(daemons if state.daemons else Text("no daemons", style="dim"))
    return Group(*parts)


_INSTANCE_STYLE = {"FAILED": "red", "RUNNING": "green", "CREATED": "cyan", "REMOVED": "blue"}
_NODE_STYLE = {"UNREACHABLE": "red", "LEFT": "yellow", "JOINED": "green", "REACHABLE": "green"}
_ROLLOUT_STYLE = {"HALTED": "red", "PAUSED": "yellow", "RESUMED": "cyan", "COMPLETE": "green", "STEP": "cyan"}


def _action(message: Any) -> str:
    """The name of a message's ``action`` enum value (``CREATED``, ...)."""
    field = message.DESCRIPTOR.fields_by_name["action"]
    value = field.enum_type.values_by_number.get(message.action)
    return value.name if value is not None else str(message.action)


def describe_intent(intent: control_pb2.Intent) -> str:
    """``resync gi/default/x``, ``rollout pause cgi/y``: an intent as a person would type it."""
    which = intent.WhichOneof("intent")
    if which == "resync":
        target = intent.resync.WhichOneof("target")
        if target == "all":
            return "resync all"
        if target == "node":
            return f"resync node/{intent.resync.node}"
        return f"resync {ref_text(intent.resync.resource)}"
    if which == "rollout":
        return f"rollout {_action(intent.rollout).lower()} {ref_text(intent.rollout.resource)}"
    return "(empty intent)"


def entry_summary(entry: control_pb2.LogEntry) -> str:
    """The operator's own one-line summary, or one made from the event when it sent none."""
    if entry.summary:
        return entry.summary
    which = entry.WhichOneof("event")
    if which == "instance":
        instance = entry.instance
        detail = f": {instance.message}" if instance.message else ""
        what = f"instance {instance.instance_id[:12]} {_action(instance).lower()}"
        return f"{ref_text(instance.resource)} on {instance.node}: {what}{detail}"
    if which == "node":
        detail = f": {entry.node.message}" if entry.node.message else ""
        return f"node {entry.node.node} {_action(entry.node).lower()}{detail}"
    if which == "resource":
        changed = entry.resource
        detail = f": {changed.message}" if changed.message else ""
        return f"{ref_text(changed.resource)} {changed.previous_phase or '-'} -> {changed.phase}{detail}"
    if which == "rollout":
        rollout = entry.rollout
        nodes = f" ({', '.join(rollout.nodes)})" if rollout.nodes else ""
        return (
            f"{ref_text(rollout.resource)} rollout {_action(rollout).lower()}: "
            f"{rollout.updated_nodes}/{rollout.total_nodes} updated{nodes}"
        )
    if which == "leadership":
        return f"{entry.leadership.identity} is {entry.leadership.role}"
    if which == "intent":
        result = entry.intent.result
        verdict = "accepted" if result.accepted else "refused"
        detail = f": {result.message}" if result.message else ""
        return f"{describe_intent(entry.intent.intent)} {verdict}{detail}"
    return "(unknown event)"


def entry_style(entry: control_pb2.LogEntry) -> str:
    which = entry.WhichOneof("event")
    if which == "instance":
        return _INSTANCE_STYLE.get(_action(entry.instance), "")
    if which == "node":
        return _NODE_STYLE.get(_action(entry.node), "")
    if which == "resource":
        return PHASE_STYLE.get(entry.resource.phase, "")
    if which == "rollout":
        return _ROLLOUT_STYLE.get(_action(entry.rollout), "")
    if which == "leadership":
        return "magenta"
    if which == "intent":
        return "green" if entry.intent.result.accepted else "red"
    return ""


def render_entry(entry: control_pb2.LogEntry, *, tz: tzinfo | None = None) -> Text:
    """One line: local time, what kind of event, the summary (coloured by what happened)."""
    moment = _timestamp(entry.timestamp)
    clock = moment.astimezone(tz).strftime("%H:%M:%S.%f")[:-3] if moment else "--:--:--.---"
    which = entry.WhichOneof("event") or "event"
    return Text.assemble((clock, "dim"), " ", (f"{which:<10}", entry_style(entry)), " ", entry_summary(entry))


class Gaps:
    """Notes, between entries, what the operator's bounded buffer lost (``dropped``, sequence gaps)."""

    def __init__(self) -> None:
        self.last = 0

    def before(self, entry: control_pb2.LogEntry) -> int:
        """How many entries were lost just before ``entry``."""
        lost = entry.dropped if self.last == 0 else max(0, entry.sequence - self.last - 1)
        self.last = entry.sequence
        return lost


# -- connecting ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the control API is, from the connection options every ``ctl`` command takes."""

    address: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    operator_namespace: str = locate.DEFAULT_NAMESPACE
    lease_name: str = locate.DEFAULT_LEASE
    selector: str = locate.DEFAULT_SELECTOR
    port: int | None = None
    timeout: float = 10.0
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None
    verbose: bool = False

    def client_tls(self) -> client.ClientTLS | None:
        wanted = self.tls or any((self.tls_ca, self.tls_cert, self.tls_key, self.tls_server_name))
        if not wanted and not (self.address or "").startswith("https://"):
            return None
        return client.ClientTLS(self.tls_ca, self.tls_cert, self.tls_key, self.tls_server_name)

    def default_namespace(self) -> str:
        """The kubeconfig's namespace (of ``--context`` or the current context), else ``default``."""
        return locate.current_namespace(self.kubeconfig, self.context) or "default"


@contextlib.asynccontextmanager
async def connect(connection: Connection) -> AsyncIterator[client.ControlApi]:
    """The control API at ``--address``, else in the operator's pod through a port-forward."""
    tls = connection.client_tls()
    if connection.address:
        address = connection.address
        direct: client.ControlApi
        if address.startswith(("http://", "https://")):
            direct = client.HttpControl(address, tls=tls, timeout=connection.timeout)
        else:
            direct = client.GrpcControl(address.removeprefix("grpc://"), tls=tls, timeout=connection.timeout)
        try:
            yield direct
        finally:
            await direct.close()
        return
    api = await locate.kube_api(connection.kubeconfig, connection.context)
    try:
        try:
            async with asyncio.timeout(connection.timeout):
                pod = await locate.find_operator(
                    api,
                    namespace=connection.operator_namespace,
                    lease=connection.lease_name,
                    selector=connection.selector,
                    port=connection.port,
                )
        except TimeoutError:
            raise client.Unreachable(
                f"the Kubernetes API server at {api.host} did not answer within {connection.timeout:g}s"
            ) from None
        if connection.verbose:
            click.echo(f"operator: pod {pod.namespace}/{pod.name} ({pod.why}), port {pod.port}", err=True)
        async with locate.through_port_forward(api, pod, tls=tls, call_timeout=connection.timeout) as control:
            yield control
    finally:
        await api.close()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine; the control API's failures become one line and an exit code."""
    try:
        return asyncio.run(coroutine)
    except (client.Unreachable, locate.NotFound) as error:
        raise NotReached(str(error)) from None
    except client.ControlError as error:
        raise Failed(str(error)) from None


# -- commands ------------------------------------------------------------------------------------------

_CONNECTION_OPTIONS = (
    click.option(
        "--address",
        metavar="HOST:PORT|URL",
        help="Connect straight to the control API: gRPC at HOST:PORT (e.g. a `kubectl port-forward`), or "
        "the HTTP/JSON listener at http(s)://HOST:PORT. Default: find the operator pod through the "
        "kubeconfig and port-forward to it.",
    ),
    click.option("--kubeconfig", type=click.Path(dir_okay=False), help="Default: KUBECONFIG, else ~/.kube/config."),
    click.option("--context", help="The kubeconfig context (default: its current context)."),
    click.option(
        "--operator-namespace",
        "--namespace-of-operator",
        default=locate.DEFAULT_NAMESPACE,
        show_default=True,
        help="Where the operator runs.",
    ),
    click.option(
        "--lease-name",
        default=locate.DEFAULT_LEASE,
        show_default=True,
        help="The operator's leader-election Lease: its holder is the pod asked.",
    ),
    click.option(
        "--selector",
        default=locate.DEFAULT_SELECTOR,
        show_default=True,
        help="Labels of the operator's pods (when no Lease names one of them).",
    ),
    click.option(
        "--port",
        type=click.IntRange(1, 65535),
        default=None,
        help=f"The control API's port in the pod (default: the pod's --control-address, else {locate.DEFAULT_PORT}).",
    ),
    click.option(
        "--timeout",
        default=10.0,
        show_default=True,
        type=click.FloatRange(min=0.1),
        help="Seconds for finding the operator, for each call, and for the events replay.",
    ),
    click.option("--tls", is_flag=True, help="TLS to the control API (implied by the --tls-* options and https://)."),
    click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), help="CA of the control API's certificate."),
    click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Client certificate (mutual TLS)."),
    click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Client key (mutual TLS)."),
    click.option("--tls-server-name", help="The name expected in the control API's certificate."),
    click.option("--verbose", "-v", is_flag=True, help="Say which operator pod is asked, and why, on stderr."),
)
_CONNECTION_FIELDS = frozenset(Connection.__dataclass_fields__)

_OUTPUT = click.option(
    "--output",
    "-o",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: for people; json: the API's messages in proto3 JSON (events: one per line).",
)
_NAMESPACE = click.option(
    "--namespace", "-n", default=None, help="The namespace of gi/NAME (default: the kubeconfig's, else default)."
)


def _with_connection(command: Callable[..., None]) -> Callable[..., None]:
    """Add the connection options to ``command``, which receives them as one ``Connection``."""

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        connection = Connection(**{name: kwargs.pop(name) for name in list(kwargs) if name in _CONNECTION_FIELDS})
        command(connection, **kwargs)

    for option in reversed(_CONNECTION_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def _console(*, soft_wrap: bool = False) -> Console:
    """soft_wrap: one event per line, however long (a terminal wraps it; ``grep`` gets it whole)."""
    return Console(highlight=False, soft_wrap=soft_wrap)


@click.group("ctl", context_settings={"auto_envvar_prefix": "GADGET_OPERATOR_CTL"})
def group() -> None:
    """Ask the running operator: its state, its events, and intents (resync, rollout).

    The operator is found through the kubeconfig: the pod holding its Lease (else a Running operator
    pod), reached through the API server's port-forward. --address connects directly.

    \b
    Exit codes: 0 done, 1 intent refused, 2 bad usage,
                3 operator not found or not reached, 4 it answered with an error.
    """


@group.command()
@_OUTPUT
@_with_connection
def state(connection: Connection, output: str) -> None:
    """Everything the operator handles, now: resources, nodes that are not running, daemons."""

    async def get() -> control_pb2.State:
        async with connect(connection) as control:
            return await control.state()

    snapshot = run(get())
    if output == "json":
        click.echo(to_json(snapshot))
    else:
        _console().print(render_state(snapshot))


@group.command()
@click.option("--follow", "-f", is_flag=True, help="After the replay, keep printing events as they happen.")
@_OUTPUT
@_with_connection
def events(connection: Connection, follow: bool, output: str) -> None:
    """What the operator did since it started (a bounded buffer), then, with --follow, live."""
    console = _console(soft_wrap=True)

    async def stream() -> None:
        gaps = Gaps()
        async with connect(connection) as control:
            async for entry in control.events(follow=follow):
                lost = gaps.before(entry)
                if output == "json":
                    click.echo(to_json(entry, indent=None))
                    continue
                if lost:
                    console.print(Text(f"... {lost} earlier event(s) dropped by the operator's buffer", style="dim"))
                console.print(render_entry(entry))
        if follow:
            raise client.Unreachable("the operator ended the event stream (it is stopping or lost its lease?)")

    with contextlib.suppress(KeyboardInterrupt):  # the normal end of --follow
        run(stream())


def _execute(connection: Connection, intent: control_pb2.Intent, output: str) -> None:
    async def call() -> control_pb2.IntentResult:
        async with connect(connection) as control:
            return await control.execute(intent)

    result = run(call())
    if output == "json":
        click.echo(to_json(result))
        if not result.accepted:
            raise click.exceptions.Exit(EXIT_REFUSED)
        return
    what = describe_intent(intent)
    if not result.accepted:
        raise Refused(f"{what}: refused: {result.message or 'no reason given'}")
    click.echo(f"{what}: accepted" + (f": {result.message}" if result.message else ""))


def _namespace(connection: Connection, namespace: str | None, target: str) -> str:
    if namespace or not needs_namespace(target):
        return namespace or ""
    return connection.default_namespace()


@group.command()
@click.argument("target", metavar="TARGET")
@_NAMESPACE
@_OUTPUT
@_with_connection
def resync(connection: Connection, target: str, namespace: str | None, output: str) -> None:
    """Look at the daemons again now: TARGET is gi/NAME, cgi/NAME, node/NAME or all."""
    intent = resync_intent(target, _namespace(connection, namespace, target))
    _execute(connection, intent, output)


@group.command()
@click.argument("action", type=click.Choice(sorted(ROLLOUT_ACTIONS)))
@click.argument("target", metavar="TARGET")
@_NAMESPACE
@_OUTPUT
@_with_connection
def rollout(connection: Connection, action: str, target: str, namespace: str | None, output: str) -> None:
    """Drive a rolling update by hand: next (admit the next batch; updateStrategy Manual), pause, resume.

    TARGET is gi/NAME or cgi/NAME."""
    intent = rollout_intent(action, target, _namespace(connection, namespace, target))
    _execute(connection, intent, output)
