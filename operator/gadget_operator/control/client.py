"""A client of the operator's control API (``proto/control/v1/control.proto``), over gRPC or HTTP/JSON.

Both transports hand back the same generated messages (``State``, ``LogEntry``, ``IntentResult``):
the HTTP/JSON listener speaks the proto3 JSON mapping of them, so a reply is parsed into the message
it stands for and the caller never knows which one it used. Unknown fields are ignored, so this client
keeps working against a newer operator that added some.

Every failure is one of these, with a sentence meant for a person:

    ControlError
    ├── Unreachable     nothing answered: no listener, a tunnel that did not open, a deadline
    └── CallFailed      the operator answered with an error (an RPC status, an HTTP error)

A refused intent is not an error here: ``execute`` returns its ``IntentResult`` (``accepted`` false)
and the caller decides what that means (``ctl`` exits non-zero).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import aiohttp
import grpc
import grpc.aio
from google.protobuf import json_format

from gadget_operator.control.pb import control_pb2, control_pb2_grpc
from gadget_operator.daemon.address import channel_credentials
from gadget_operator.errors import GadgetOperatorError

M = TypeVar("M", control_pb2.State, control_pb2.LogEntry, control_pb2.IntentResult)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""A State at scale (a thousand resources with their failing nodes) outgrows gRPC's default 4 MiB."""


class ControlError(GadgetOperatorError):
    """The control API could not answer; the message says why in one line."""


class Unreachable(ControlError):
    """Nothing answered at the address (or through the tunnel to it)."""


class CallFailed(ControlError):
    """The operator answered, with an error."""


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """TLS towards a control API exposed beyond the pod; all None means plaintext."""

    ca_file: str | None = None
    """CA of the operator's serving certificate (None: the system's trust store)."""
    cert_file: str | None = None
    """Client certificate, when the listener asks for one (mutual TLS)."""
    key_file: str | None = None
    server_name: str | None = None
    """The name expected in the serving certificate, when it is not the host dialled."""

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return channel_credentials(self)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class ControlApi(Protocol):
    """The three calls of ``ControlService``, whatever the transport."""

    @property
    def where(self) -> str:
        """The address as a person would name it (in error messages)."""
        ...

    async def state(self) -> control_pb2.State: ...

    def events(self, *, follow: bool) -> AsyncIterator[control_pb2.LogEntry]: ...

    async def execute(self, intent: control_pb2.Intent) -> control_pb2.IntentResult: ...

    async def close(self) -> None: ...


Cause = Callable[[], str | None]
"""Why the transport under the connection failed, when it knows better than gRPC (a port-forward)."""


class GrpcControl:
    """``ControlService`` over gRPC at ``target`` (``host:port``)."""

    def __init__(
        self,
        target: str,
        *,
        tls: ClientTLS | None = None,
        timeout: float = 10.0,
        where: str | None = None,
        cause: Cause | None = None,
        wait_for_ready: bool = False,
    ) -> None:
        """``wait_for_ready``: a call waits (within its deadline) for the channel to connect instead of
        failing at once while it cannot; for a program that starts the operator itself (the demo),
        not for a person waiting for an answer."""
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 0),
            # Reconnect soon to an operator that (re)starts: gRPC's default backoff grows to two minutes.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if tls is not None and tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        if tls is not None:
            self._channel = grpc.aio.secure_channel(target, tls.grpc_credentials(), options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = control_pb2_grpc.ControlServiceStub(self._channel)
        self._timeout = timeout
        self._where = where or target
        self._cause = cause
        self._tls = tls is not None
        self._wait = wait_for_ready

    @property
    def where(self) -> str:
        return self._where

    async def state(self) -> control_pb2.State:
        try:
            return await self._stub.GetState(
                control_pb2.StateRequest(), timeout=self._timeout, wait_for_ready=self._wait
            )
        except grpc.aio.AioRpcError as error:
            raise self._translate(error) from None

    async def events(self, *, follow: bool) -> AsyncIterator[control_pb2.LogEntry]:
        # A replay is bounded and has a deadline; a followed stream lasts until either side hangs up.
        call = self._stub.Events(
            control_pb2.EventsRequest(follow=follow),
            timeout=None if follow else self._timeout,
            wait_for_ready=self._wait,
        )
        try:
            async for entry in call:
                yield entry
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.CANCELLED and follow:  # the server stopped under the stream
                raise Unreachable(f"the operator at {self._where} ended the event stream") from None
            raise self._translate(error) from None
        finally:
            call.cancel()

    async def execute(self, intent: control_pb2.Intent) -> control_pb2.IntentResult:
        try:
            return await self._stub.Execute(intent, timeout=self._timeout, wait_for_ready=self._wait)
        except grpc.aio.AioRpcError as error:
            raise self._translate(error) from None

    async def close(self) -> None:
        await self._channel.close(None)

    def _translate(self, error: grpc.aio.AioRpcError) -> ControlError:
        code = error.code()
        details = " ".join((error.details() or "").split())
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            cause = self._cause() if self._cause is not None else None
            if cause:
                return Unreachable(f"cannot reach the operator's control API at {self._where}: {cause}")
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                return Unreachable(f"the operator's control API at {self._where} did not answer in {self._timeout:g}s")
            hint = ""
            if "Socket closed" in details or "handshake" in details.lower():  # all gRPC says of a TLS mismatch
                hint = (
                    " (a TLS handshake that failed? check --tls-ca, --tls-server-name, --tls-cert and --tls-key)"
                    if self._tls
                    else " (if the control API serves TLS: --tls or --tls-ca)"
                )
            return Unreachable(
                f"cannot reach the operator's control API at {self._where}: {details or code.name}{hint}"
            )
        if code is grpc.StatusCode.UNIMPLEMENTED:
            return CallFailed(
                f"{self._where} does not serve the control API (gadget_operator.control.v1): {details or code.name}"
            )
        return CallFailed(f"the operator's control API at {self._where} answered {code.name}: {details}")


class HttpControl:
    """The HTTP/JSON twin of ``ControlService`` at ``base_url`` (``http://host:port`` or ``https://...``)."""

    def __init__(self, base_url: str, *, tls: ClientTLS | None = None, timeout: float = 10.0) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._ssl: ssl.SSLContext | bool = tls.ssl_context() if tls is not None else True
        self._server_name = tls.server_name if tls is not None else None
        self._session = aiohttp.ClientSession(trust_env=False)

    @property
    def where(self) -> str:
        return self._base

    async def state(self) -> control_pb2.State:
        text = await self._request("GET", "/v1/state")
        return self._parse(text, control_pb2.State())

    async def events(self, *, follow: bool) -> AsyncIterator[control_pb2.LogEntry]:
        url = f"{self._base}/v1/events"
        params = {"follow": "true" if follow else "false"}
        # The replay has the usual deadline; a followed stream waits as long as it takes between lines.
        timeout = aiohttp.ClientTimeout(total=None, connect=self._timeout, sock_read=None if follow else self._timeout)
        try:
            async with self._session.get(
                url, params=params, timeout=timeout, ssl=self._ssl, server_hostname=self._server_name
            ) as response:
                if response.status >= 400:
                    raise self._http_error(response.status, await response.text())
                async for line in response.content:
                    if line.strip():
                        yield self._parse(line.decode(), control_pb2.LogEntry())
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            raise self._unreachable(error) from None

    async def execute(self, intent: control_pb2.Intent) -> control_pb2.IntentResult:
        body = json_format.MessageToJson(intent, indent=None)
        text = await self._request("POST", "/v1/execute", body=body, accept_error=True)
        return self._parse(text, control_pb2.IntentResult())

    async def close(self) -> None:
        await self._session.close()

    async def _request(self, method: str, path: str, *, body: str | None = None, accept_error: bool = False) -> str:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(
                method,
                self._base + path,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                ssl=self._ssl,
                server_hostname=self._server_name,
            ) as response:
                text = await response.text()
                # A refused intent may come with an error status and an IntentResult body: that is an answer.
                if response.status >= 400 and not (accept_error and _is_intent_result(text)):
                    raise self._http_error(response.status, text)
                return text
        except (aiohttp.ClientConnectionError, TimeoutError) as error:
            raise self._unreachable(error) from None

    def _unreachable(self, error: BaseException) -> Unreachable:
        if isinstance(error, TimeoutError):
            return Unreachable(f"the operator's control API at {self._base} did not answer in {self._timeout:g}s")
        return Unreachable(f"cannot reach the operator's control API at {self._base}: {error}")

    def _http_error(self, status: int, text: str) -> CallFailed:
        message = " ".join(text.split())[:300]
        try:
            body = json.loads(text)
            if isinstance(body, dict) and body.get("message"):
                message = str(body["message"])
        except ValueError:
            pass
        return CallFailed(f"the operator's control API at {self._base} answered HTTP {status}: {message}")

    def _parse(self, text: str, message: M) -> M:
        try:
            return json_format.Parse(text, message, ignore_unknown_fields=True)
        except json_format.ParseError as error:
            name = message.DESCRIPTOR.name
            raise CallFailed(f"the operator's control API at {self._base} sent what is not a {name}: {error}") from None


def _is_intent_result(text: str) -> bool:
    """Whether an HTTP error's body is still an IntentResult (the operator answers 200 either way, and
    ``{"message": ...}`` alone for a request it could not read)."""
    try:
        body = json.loads(text)
    except ValueError:
        return False
    return isinstance(body, dict) and "accepted" in body and set(body) <= {"accepted", "message"}
