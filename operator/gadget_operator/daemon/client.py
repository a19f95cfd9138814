"""An asyncio client for one node's gadget daemon, and a pool of them keyed by address.

Every call has a deadline, and every failure becomes one of the typed errors of ``errors``: the
reconciler decides on retries from the type (unreachable, hung, rejected, not found), never from
gRPC status codes or message text.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar

import grpc
import grpc.aio

from gadget_operator import errors, identity, metrics
from gadget_operator.daemon import convert, model
from gadget_operator.daemon.address import channel_credentials, parse_address
from gadget_operator.daemon.pb import api_pb2, api_pb2_grpc
from gadget_operator.daemon.portforward import SCHEME as PORTFORWARD_SCHEME
from gadget_operator.daemon.portforward import PortForwarder
from gadget_operator.settings import TLSSettings
from gadget_operator.tokens import TokenSource

T = TypeVar("T")

GADGET_INFO_USE_INSTANCE = 1
"""GetGadgetInfoRequest.flags bit: ``imageName`` names a running instance (what ``kubectl gadget attach`` uses)."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Reconnect quickly after a daemon restart: gRPC's default backoff grows to two minutes, during
# which every call to a node that is back already fails fast with UNAVAILABLE.
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.enable_retries", 0),
    # gRPC's default of 4 MiB would cut off a List long before a large cluster's: in IG's shared store
    # every daemon lists the whole cluster's instances. A realistic 1,000-resource store (selectors over
    # 1,000 nodes) lists about 41 MiB; the CRD's extremes (64 params of 4 KiB each) reach 270 KiB per
    # instance, so a bound is kept rather than none (bench/message_sizes.py has the figures).
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


class InstanceApi(Protocol):
    """What the executor needs from a daemon; the client implements it, tests may fake it."""

    def create_instance(
        self, instance: model.GadgetInstance, *, event_buffer_length: int = 0
    ) -> Awaitable[model.GadgetInstance]: ...

    def list_instances(self) -> Awaitable[list[model.GadgetInstance]]: ...

    def get_instance(self, instance_id: str) -> Awaitable[model.GadgetInstance]: ...

    def remove_instance(self, instance_id: str) -> Awaitable[None]: ...

    def get_gadget_info(
        self, image: str, params: Mapping[str, str] | None = None, *, deadline: float | None = None
    ) -> Awaitable[GadgetInfo]: ...

    def wait_initialized(self, instance_id: str, *, deadline: float) -> Awaitable[GadgetInfo]: ...

    def on_behalf_of(self, namespace: str | None) -> Self: ...


@dataclass(frozen=True, slots=True)
class GadgetParam:
    key: str
    """The full key to use in ``params``: the daemon's prefix joined with its key."""
    description: str
    default: str
    mandatory: bool


@dataclass(frozen=True, slots=True)
class GadgetInfo:
    name: str
    image: str
    params: tuple[GadgetParam, ...]


class DaemonClient:
    """One channel to one daemon, reused for every call."""

    def __init__(
        self,
        address: str,
        *,
        tls: TLSSettings | None = None,
        timeout: float = 5.0,
        dial: str | None = None,
        channel_options: Sequence[tuple[str, int | str]] = (),
        tokens: TokenSource | None = None,
    ) -> None:
        """``address`` names the daemon in errors; ``dial``, if given, is where to connect instead
        (a local port-forward listener); ``channel_options`` are added to the gRPC channel's;
        ``tokens``, if given, authenticate every call (IG's multi-tenancy)."""
        parsed = parse_address(dial or address)
        self.address = address
        self.timeout = timeout
        self._tokens = tokens
        self._tenant: str | None = None
        options = [*_CHANNEL_OPTIONS, *channel_options]
        if tls is not None and tls.enabled:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.aio.secure_channel(parsed.target, channel_credentials(tls), options=options)
        else:
            self._channel = grpc.aio.insecure_channel(parsed.target, options=options)
        self._instances = api_pb2_grpc.GadgetInstanceManagerStub(self._channel)
        self._gadgets = api_pb2_grpc.GadgetManagerStub(self._channel)

    def on_behalf_of(self, namespace: str | None) -> Self:
        """This client, speaking for a resource in ``namespace`` (None: a cluster-scoped one, or the
        operator itself): with tokens, its calls carry that namespace's tenant token. Same channel."""
        if self._tokens is None or namespace == self._tenant:
            return self
        view = copy.copy(self)
        view._tenant = namespace
        return view

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def __aenter__(self) -> DaemonClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def create_instance(
        self, instance: model.GadgetInstance, *, event_buffer_length: int = 0
    ) -> model.GadgetInstance:
        """Create ``instance`` as given: its ID and name must already follow IG's rules."""
        identity.validate_instance_id(instance.id)
        identity.validate_instance_name(instance.name)
        request = api_pb2.CreateGadgetInstanceRequest(
            gadgetInstance=convert.to_pb(instance), eventBufferLength=event_buffer_length
        )
        response = await self._call(self._instances.CreateGadgetInstance, request)
        if response.result != 0:
            raise errors.DaemonRejected(f"create answered result {response.result}", address=self.address)
        if response.HasField("gadgetInstance") and response.gadgetInstance.id:
            return convert.from_pb(response.gadgetInstance)
        return instance

    async def list_instances(self) -> list[model.GadgetInstance]:
        response = await self._call(self._instances.ListGadgetInstances, api_pb2.ListGadgetInstancesRequest())
        return [convert.from_pb(item) for item in response.gadgetInstances]

    async def get_instance(self, instance_id: str) -> model.GadgetInstance:
        response = await self._call(self._instances.GetGadgetInstance, api_pb2.GadgetInstanceId(id=instance_id))
        return convert.from_pb(response)

    async def remove_instance(self, instance_id: str) -> None:
        """Remove one instance; ``InstanceNotFound`` when the daemon does not know it (result 1)."""
        response = await self._call(self._instances.RemoveGadgetInstance, api_pb2.GadgetInstanceId(id=instance_id))
        if response.result == 0:
            return
        if "not found" in response.message.lower():
            raise errors.InstanceNotFound(response.message, address=self.address)
        raise errors.DaemonRejected(
            response.message or f"remove answered result {response.result}", address=self.address
        )

    async def get_gadget_info(
        self, image: str, params: Mapping[str, str] | None = None, *, deadline: float | None = None
    ) -> GadgetInfo:
        """A dry run: the daemon pulls ``image`` and prepares the gadget with ``params`` without running
        it, and answers with its info or with the gadget's own error (bad image, bad parameter)."""
        request = api_pb2.GetGadgetInfoRequest(
            imageName=image, paramValues=dict(params or {}), version=model.PROTOCOL_VERSION
        )
        return await self._gadget_info(request, deadline)

    async def wait_initialized(self, instance_id: str, *, deadline: float) -> GadgetInfo:
        """The info of the gadget that instance ``instance_id`` runs on this daemon. IG answers only once
        the gadget has initialized (image pulled, programs loaded); a run that failed before that never
        answers, so ``timeout`` ends the wait with ``DaemonDeadlineExceeded``."""
        request = api_pb2.GetGadgetInfoRequest(
            imageName=instance_id, version=model.PROTOCOL_VERSION, flags=GADGET_INFO_USE_INSTANCE
        )
        return await self._gadget_info(request, deadline)

    async def _gadget_info(self, request: api_pb2.GetGadgetInfoRequest, deadline: float | None) -> GadgetInfo:
        info = (await self._call(self._gadgets.GetGadgetInfo, request, deadline=deadline)).gadgetInfo
        return GadgetInfo(
            name=info.name,
            image=info.imageName,
            params=tuple(
                GadgetParam(p.prefix + p.key, p.description, p.defaultValue, p.isMandatory) for p in info.params
            ),
        )

    async def _call(self, method: Callable[..., Awaitable[T]], request: object, *, deadline: float | None = None) -> T:
        seconds = self.timeout if deadline is None else deadline
        name = getattr(method, "_method", b"").decode().rpartition("/")[2] or "unknown"
        metadata = None
        if self._tokens is not None:
            metadata = (("authorization", "Bearer " + await self._tokens.token(self._tenant)),)
        started = time.perf_counter()
        try:
            response = await method(request, timeout=seconds, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            translated = self._translate(error, seconds)
            _observe(name, type(translated).__name__, started)
            raise translated from error
        _observe(name, "ok", started)
        return response

    def _translate(self, error: grpc.aio.AioRpcError, deadline: float) -> errors.DaemonError:
        code = error.code()
        message = error.details() or code.name
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return errors.DaemonDeadlineExceeded(f"no answer within {deadline:g}s", address=self.address)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return errors.DaemonUnavailable(f"unreachable: {message}", address=self.address)
        if code is grpc.StatusCode.UNIMPLEMENTED:
            return errors.DaemonRejected(f"the daemon does not serve this call: {message}", address=self.address)
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return errors.CallerRefused(self._refusal(code, message), address=self.address)
        lowered = message.lower()
        if "already exists" in lowered:
            return errors.InstanceAlreadyExists(message, address=self.address)
        if "not found" in lowered:
            return errors.InstanceNotFound(message, address=self.address)
        return errors.DaemonRejected(message, address=self.address)

    def _refusal(self, code: grpc.StatusCode, message: str) -> str:
        """IG's multi-tenancy refused the call: say as whom it was made, or that no token was sent."""
        if self._tokens is None:
            return (
                f"the daemon refused the call ({message}): it runs Inspektor Gadget's multi-tenancy, "
                f"start the operator with --ig-multi-tenancy"
            )
        account = self._tokens.account_for(self._tenant)
        verb = "did not accept the token" if code is grpc.StatusCode.UNAUTHENTICATED else "denied it"
        return f"the daemon {verb} of ServiceAccount {account}: {message}"


class _ForwardedClient(DaemonClient):
    """A client of a ``portforward://`` address: its calls mark the pod's tunnel busy, and its
    "unreachable" errors carry why the tunnel failed (RBAC, pod gone, kubelet error) when the
    forwarder knows, instead of gRPC's "failed to connect to all addresses"."""

    def __init__(self, address: str, forwarder: PortForwarder, **kwargs: Any) -> None:
        self.forwarder = forwarder
        super().__init__(address, dial=forwarder.local_address(address), **kwargs)

    async def _call(self, method: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        started = self.forwarder.clock()
        with self.forwarder.in_use(self.address):
            try:
                return await super()._call(method, *args, **kwargs)
            except errors.DaemonUnavailable:
                # The forwarder closed this pod's idle tunnel just as the call went out: once more.
                if not self.forwarder.closed_since(self.address, started - 1.0):
                    raise
            return await super()._call(method, *args, **kwargs)

    def _translate(self, error: grpc.aio.AioRpcError, *args: Any, **kwargs: Any) -> errors.DaemonError:
        translated = super()._translate(error, *args, **kwargs)
        cause = self.forwarder.last_error(self.address)
        if cause is None or not isinstance(translated, errors.DaemonUnreachable):
            return translated
        if isinstance(translated, errors.DaemonDeadlineExceeded):
            return errors.DaemonDeadlineExceeded(f"{translated.message}: {cause}", address=self.address)
        return errors.DaemonUnavailable(f"unreachable: {cause}", address=self.address)


def _observe(method: str, result: str, started: float) -> None:
    metrics.DAEMON_CALL_SECONDS.labels(method=method, result=result).observe(time.perf_counter() - started)


class DaemonPool:
    """One ``DaemonClient`` per address, created on first use and kept for reuse.

    Clients of ``portforward://`` addresses go through ``forwarder``; their gRPC channel goes idle
    (closing its connection, hence its tunnel) after half the forwarder's ``idle_timeout`` without a
    call, and reconnects on the next call.
    """

    def __init__(
        self,
        *,
        tls: TLSSettings | None = None,
        timeout: float = 5.0,
        forwarder: PortForwarder | None = None,
        tokens: TokenSource | None = None,
    ) -> None:
        self.tls = tls
        self.timeout = timeout
        self.forwarder = forwarder
        self.tokens = tokens
        self._clients: dict[str, DaemonClient] = {}

    def get(self, address: str) -> DaemonClient:
        client = self._clients.get(address)
        if client is None:
            if address.startswith(PORTFORWARD_SCHEME):
                if self.forwarder is None:
                    raise ValueError(f"{address}: port-forward addresses need a PortForwarder")
                idle_ms = max(1, int(self.forwarder.idle_timeout * 500))
                client = _ForwardedClient(
                    address,
                    self.forwarder,
                    tls=self.tls,
                    timeout=self.timeout,
                    channel_options=[("grpc.client_idle_timeout_ms", idle_ms)],
                    tokens=self.tokens,
                )
            else:
                client = DaemonClient(address, tls=self.tls, timeout=self.timeout, tokens=self.tokens)
            self._clients[address] = client
        return client

    def addresses(self) -> set[str]:
        return set(self._clients)

    async def discard(self, address: str) -> None:
        client = self._clients.pop(address, None)
        if client is not None:
            await client.close()
        if self.forwarder is not None and address.startswith(PORTFORWARD_SCHEME):
            await self.forwarder.forget(address)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
        if self.forwarder is not None:
            await self.forwarder.close()
