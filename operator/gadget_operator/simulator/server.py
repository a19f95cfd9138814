"""Simulated gadget daemons on real sockets: one gRPC server per node, many nodes per process.

A ``SimulatedNode`` serves a ``Daemon`` over the IG wire protocol on ``unix://`` or ``tcp://`` with
optional mutual TLS, and takes faults (latency, failing or hanging calls, restart, going away). The
daemon is ``ig daemon`` with its per-node store (``DaemonState``) or a pod of IG's DaemonSet on the
shared ConfigMap store (``SharedStoreDaemon``). A ``Fleet`` runs many of them and hands out the
node -> address map that static discovery reads. With ``Fleet(multi_tenancy=MultiTenancy(...))`` every
node authenticates and confines each call as IG's multitenancy branch does (``simulator.multitenancy``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

import grpc
import grpc.aio
import yaml

from gadget_operator.daemon import convert, model
from gadget_operator.daemon.address import parse_address
from gadget_operator.daemon.pb import api_pb2, api_pb2_grpc
from gadget_operator.simulator.configmap_store import ConfigMapStore, SharedStoreDaemon
from gadget_operator.simulator.multitenancy import (
    MultiTenancy,
    PolicyError,
    PolicyScope,
    authorize_param_values,
    enforce_policy_scope,
    visible,
)
from gadget_operator.simulator.state import (
    DEFAULT_TIMING,
    Daemon,
    DaemonCallError,
    DaemonState,
    InstanceCheck,
    RunTiming,
)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """``ig daemon --tls-cert-file/--tls-key-file/--tls-client-ca-file``: client certificates required."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes


@dataclass
class Faults:
    """What goes wrong on a node's next calls; all off by default."""

    latency: float = 0.0
    fail_with: str | None = None
    """Calls fail with gRPC UNKNOWN and this message, as a daemon's own errors do."""
    fail_only: frozenset[str] | None = None
    """The methods ``fail_with`` applies to (e.g. ``{"CreateGadgetInstance"}``); None: all of them."""
    hang: bool = False
    """Calls never answer (until the fault is cleared or the node stops): the client's deadline fires."""


def _check(scope: PolicyScope | None) -> InstanceCheck | None:
    """IG's ``authorizeGadgetInstance`` for a caller confined to ``scope`` (None: no multi-tenancy)."""
    if scope is None:
        return None
    allowed = scope
    return lambda instance: authorize_param_values(allowed, instance.params)


class _Servicer(api_pb2_grpc.GadgetInstanceManagerServicer, api_pb2_grpc.GadgetManagerServicer):
    def __init__(self, node: SimulatedNode) -> None:
        self.node = node

    async def _fail(self, context: Context, method: str, error: DaemonCallError | PolicyError) -> NoReturn:
        """Answer a failed call: the policy's refusals with their own code (and counted), the daemon's
        errors with UNKNOWN unless IG's error wrapped a gRPC status."""
        if isinstance(error, PolicyError):
            self.node.denied[method] += 1
            await context.abort(error.code, error.message)
        await context.abort(grpc.StatusCode[error.code], str(error))

    async def CreateGadgetInstance(
        self, request: api_pb2.CreateGadgetInstanceRequest, context: Context
    ) -> api_pb2.CreateGadgetInstanceResponse:
        method = "CreateGadgetInstance"
        scope = await self.node.before_call(method, context)
        requested = request.gadgetInstance
        try:
            if scope is not None:
                # IG's branch checks the request and narrows its params before the ID and name are looked at.
                if not request.HasField("gadgetInstance") or not requested.HasField("gadgetConfig"):
                    raise DaemonCallError("missing gadget instance configuration")
                params = enforce_policy_scope(scope, requested.gadgetConfig.paramValues)
                requested = api_pb2.GadgetInstance()
                requested.CopyFrom(request.gadgetInstance)
                requested.gadgetConfig.paramValues.clear()
                requested.gadgetConfig.paramValues.update(params)
            created = await self.node.state.create_instance(
                convert.from_pb(requested), gadget_timeout=requested.gadgetConfig.timeout
            )
        except (DaemonCallError, PolicyError) as error:
            await self._fail(context, method, error)
        # Both of IG's stores answer with the request itself (as the policy rewrote it), the server-made ID
        # and name filled in: no state (unless the client sent one) and no creation time.
        echo = api_pb2.GadgetInstance()
        echo.CopyFrom(requested)
        echo.id, echo.name = created.id, created.name
        return api_pb2.CreateGadgetInstanceResponse(result=0, gadgetInstance=echo)

    async def ListGadgetInstances(
        self, request: api_pb2.ListGadgetInstancesRequest, context: Context
    ) -> api_pb2.ListGadgetInstanceResponse:
        method = "ListGadgetInstances"
        scope = await self.node.before_call(method, context)
        shown = None if scope is None else (lambda instance: visible(scope, instance.params))
        try:
            instances = await self.node.state.list_instances(shown)
        except DaemonCallError as error:
            await self._fail(context, method, error)
        return api_pb2.ListGadgetInstanceResponse(gadgetInstances=[convert.to_pb(instance) for instance in instances])

    async def GetGadgetInstance(self, request: api_pb2.GadgetInstanceId, context: Context) -> api_pb2.GadgetInstance:
        method = "GetGadgetInstance"
        scope = await self.node.before_call(method, context)
        try:
            return convert.to_pb(await self.node.state.get_instance(request.id, _check(scope)))
        except (DaemonCallError, PolicyError) as error:
            await self._fail(context, method, error)

    async def RemoveGadgetInstance(self, request: api_pb2.GadgetInstanceId, context: Context) -> api_pb2.StatusResponse:
        method = "RemoveGadgetInstance"
        scope = await self.node.before_call(method, context)
        try:
            result, message = await self.node.state.remove_instance(request.id, _check(scope))
        except (DaemonCallError, PolicyError) as error:
            await self._fail(context, method, error)
        return api_pb2.StatusResponse(result=result, message=message)

    async def GetGadgetInfo(
        self, request: api_pb2.GetGadgetInfoRequest, context: Context
    ) -> api_pb2.GetGadgetInfoResponse:
        method = "GetGadgetInfo"
        scope = await self.node.before_call(method, context)
        try:
            info = await self.node.state.get_gadget_info(
                request.imageName,
                dict(request.paramValues),
                version=request.version,
                flags=request.flags,
                check=_check(scope),  # only an instance's info is confined; an image's is for everyone
            )
        except (DaemonCallError, PolicyError) as error:
            await self._fail(context, method, error)
        return api_pb2.GetGadgetInfoResponse(gadgetInfo=info)

    async def RunGadget(
        self, request_iterator: AsyncIterator[api_pb2.GadgetControlRequest], context: Context
    ) -> AsyncIterator[api_pb2.GadgetEvent]:
        method = "RunGadget"
        scope = await self.node.before_call(method, context)
        if scope is not None:
            # An attach is refused as IG refuses it before streaming; what is allowed then is not simulated.
            first = await anext(aiter(request_iterator), None)
            if first is not None and first.HasField("attachRequest"):
                attach = first.attachRequest
                try:
                    if attach.version != model.PROTOCOL_VERSION:
                        raise DaemonCallError(f"expected version to be {model.PROTOCOL_VERSION}, got {attach.version}")
                    self.node.state.lookup_run(attach.id, _check(scope))
                except (DaemonCallError, PolicyError) as error:
                    await self._fail(context, method, error)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the simulator runs no gadgets, it only keeps instances")
        yield api_pb2.GadgetEvent()  # unreachable: makes this an async generator, as the servicer expects


class SimulatedNode:
    """One node's daemon: its state, its gRPC server and its faults."""

    def __init__(
        self,
        name: str,
        address: str,
        state: Daemon,
        *,
        tls: ServerTLS | None = None,
        multi_tenancy: MultiTenancy | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self.state = state
        """The daemon behind the socket: ``DaemonState`` (per-node store) or ``SharedStoreDaemon``."""
        self.tls = tls
        self.multi_tenancy = multi_tenancy
        """IG's multi-tenancy, if on: every call authenticates, then is confined to the caller's namespaces."""
        self.faults = Faults()
        self.calls: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        """Calls that multi-tenancy failed to authenticate (UNAUTHENTICATED, or UNAVAILABLE when the API
        server failed a review), by method; they count in ``calls`` too."""
        self.denied: collections.Counter[str] = collections.Counter()
        """Authenticated calls the namespace policy refused (PERMISSION_DENIED, INVALID_ARGUMENT), by method."""
        self._server: grpc.aio.Server | None = None
        self._released = asyncio.Event()

    @property
    def serving(self) -> bool:
        """Whether the socket is open (False after ``stop()`` until ``start()``)."""
        return self._server is not None

    def running(self) -> dict[str, model.GadgetInstance]:
        """What this node's local manager runs right now, with state and message, by instance ID:
        the ground truth of what runs here, whatever the store and whatever List answers."""
        return self.state.running()

    def initialized(self, instance_id: str) -> bool:
        """Whether the run of ``instance_id`` here has initialized (image pulled, operators ready)."""
        return self.state.initialized(instance_id)

    async def start(self) -> None:
        if self._server is not None:
            return
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        servicer = _Servicer(self)
        api_pb2_grpc.add_GadgetInstanceManagerServicer_to_server(servicer, server)
        api_pb2_grpc.add_GadgetManagerServicer_to_server(servicer, server)
        self._listen(server)
        await server.start()
        self._released = asyncio.Event()
        self._server = server

    def _listen(self, server: grpc.aio.Server) -> None:
        parsed = parse_address(self.address)
        if parsed.is_unix:
            Path(parsed.target.removeprefix("unix://")).unlink(missing_ok=True)  # a stale socket of a past run
        if self.tls is None:
            port = server.add_insecure_port(parsed.target)
        else:
            credentials = grpc.ssl_server_credentials(
                [(self.tls.private_key, self.tls.cert_chain)],
                root_certificates=self.tls.client_ca,
                require_client_auth=True,
            )
            port = server.add_secure_port(parsed.target, credentials)
        if not parsed.is_unix and parsed.target.endswith(":0"):
            self.address = f"tcp://{parsed.target.rsplit(':', 1)[0]}:{port}"

    async def stop(self) -> None:
        """The node goes away: its socket closes and hung calls are dropped."""
        server, self._server = self._server, None
        self._released.set()
        if server is not None:
            await server.stop(grace=None)

    async def restart(self) -> None:
        """The daemon restarts on the same address: its runs are gone; what its store holds (a file
        store, or the shared ConfigMaps) runs again, memory-only instances do not come back."""
        await self.stop()
        await self.state.restart()
        await self.start()

    def release(self) -> None:
        """Clear every fault and let hung calls go on."""
        self.faults = Faults()
        self._released.set()
        self._released = asyncio.Event()

    async def before_call(self, method: str, context: Context) -> PolicyScope | None:
        """What every call goes through first: the faults, and multi-tenancy's authentication (IG's server
        interceptor, so before the daemon's own errors). Returns the caller's namespaces, None without
        multi-tenancy."""
        self.calls[method] += 1
        faults = self.faults
        if faults.latency:
            await asyncio.sleep(faults.latency)
        if faults.hang:
            await self._released.wait()
        scope = None
        if self.multi_tenancy is not None:
            try:
                scope = await self.multi_tenancy.authenticate(context.invocation_metadata() or ())
            except PolicyError as error:
                self.refused[method] += 1
                await context.abort(error.code, error.message)
        if faults.fail_with is not None and (faults.fail_only is None or method in faults.fail_only):
            await context.abort(grpc.StatusCode.UNKNOWN, faults.fail_with)
        return scope


class Fleet:
    """Many simulated nodes in one process, each on its own socket.

    Per-node stores (``ig daemon``) by default, under ``directory/store/<node>`` unless ``stored`` is
    False; with ``shared_store`` every node is a pod of IG's DaemonSet on that ConfigMap store. With
    ``multi_tenancy`` every node runs IG's multitenancy branch (only IG's DaemonSet has it; the per-node
    store takes it too); its Kubernetes client defaults to the shared store's."""

    def __init__(
        self,
        directory: Path,
        *,
        transport: str = "unix",
        stored: bool = True,
        unknown_images: Iterable[str] = (),
        tls: ServerTLS | None = None,
        timing: RunTiming = DEFAULT_TIMING,
        shared_store: ConfigMapStore | None = None,
        multi_tenancy: MultiTenancy | None = None,
    ) -> None:
        if transport not in ("unix", "tcp"):
            raise ValueError(f"transport must be unix or tcp, not {transport!r}")
        if multi_tenancy is not None and multi_tenancy.api is None:
            if shared_store is None:
                raise ValueError("multi-tenancy enabled but no Kubernetes client provided")
            multi_tenancy.api = shared_store.api
        self.directory = directory
        self.transport = transport
        self.stored = stored
        self.unknown_images = frozenset(unknown_images)
        self.tls = tls
        self.timing = timing
        self.shared_store = shared_store
        self.multi_tenancy = multi_tenancy
        self.nodes: dict[str, SimulatedNode] = {}

    def __getitem__(self, name: str) -> SimulatedNode:
        return self.nodes[name]

    async def add(self, name: str, *, address: str | None = None) -> SimulatedNode:
        """A node's daemon, on its own socket (or on ``address``, e.g. a pod IP and the DaemonSet's port)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if address is None:
            address = f"unix://{self.directory / name}.sock" if self.transport == "unix" else "tcp://127.0.0.1:0"
        state: Daemon
        if self.shared_store is not None:
            state = SharedStoreDaemon(name, self.shared_store, timing=self.timing, unknown_images=self.unknown_images)
        else:
            state = DaemonState(
                name,
                store=self.directory / "store" / name if self.stored else None,
                unknown_images=self.unknown_images,
                timing=self.timing,
            )
        state.manager.multi_tenancy = self.multi_tenancy is not None  # before start() resumes stored runs
        await state.start()
        node = SimulatedNode(name, address, state, tls=self.tls, multi_tenancy=self.multi_tenancy)
        self.nodes[name] = node
        await node.start()
        return node

    async def start(self, count: int, *, prefix: str = "node-") -> None:
        width = len(str(count))
        await asyncio.gather(*(self.add(f"{prefix}{index:0{width}d}") for index in range(1, count + 1)))

    def addresses(self) -> dict[str, str]:
        return {name: node.address for name, node in sorted(self.nodes.items())}

    def write_static_nodes(self, path: Path) -> Path:
        """The file ``gadget-operator run --discovery static --static-nodes`` reads."""
        path.write_text(yaml.safe_dump(self.addresses()))
        return path

    async def stop(self) -> None:
        """Close every socket, end every daemon (runs, informers) and the shared watch."""
        await asyncio.gather(*(node.stop() for node in self.nodes.values()))
        await asyncio.gather(*(node.state.close() for node in self.nodes.values()))
        if self.shared_store is not None:
            await self.shared_store.stop()
