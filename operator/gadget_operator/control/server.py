"""The control API's listeners: ``ControlService`` over gRPC, and the same over HTTP/JSON.

Both serve the same generated messages (``proto/control/v1/control.proto``); the HTTP/JSON one in the
proto3 JSON mapping (``google.protobuf.json_format``: lowerCamelCase names, enums by name, 64-bit
integers as numbers, fields at their default values included), so a tool without gRPC reads exactly
what a gRPC client does:

    GET  /v1/state                  State
    GET  /v1/events[?follow=false]  one LogEntry per line (application/x-ndjson): the replay, then live
    POST /v1/execute                Intent in the body (application/json); IntentResult (200 whether
                                    accepted or refused)

An error of the request itself answers 4xx with ``{"message": ...}``: 400 for a body that is not an
Intent, 415 for a body that is not JSON.

Access: by default both listen on the pod's loopback (127.0.0.1:50051 and :50052, Skaffold's ports),
so whoever may port-forward to the operator's pod may use them, and nobody else. Any other address
needs TLS (``ControlSettings.tls_cert``/``tls_key``, optionally ``tls_client_ca`` for client
certificates): the operator refuses to start otherwise (``check``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import grpc.aio
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from gadget_operator.control import events, state
from gadget_operator.control.intents import AnnotationApi, Intents
from gadget_operator.control.pb import control_pb2, control_pb2_grpc
from gadget_operator.control.state import Operator
from gadget_operator.settings import ControlSettings

logger = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""A State at scale (a thousand resources with their nodes) outgrows gRPC's default 4 MiB."""
NDJSON = "application/x-ndjson"


class ControlStartError(Exception):
    """A listener cannot start; the message says which and why, in one line."""


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) into its parts; a clear ``ValueError`` otherwise."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check(settings: ControlSettings) -> None:
    """The settings' rules, with the sentence a user sees (``ValueError``): well-formed addresses, TLS
    given as a pair, and TLS on any address beyond the loopback."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ValueError("--control-tls-cert and --control-tls-key go together")
    if settings.tls_client_ca and not settings.tls_cert:
        raise ValueError("--control-tls-client-ca needs --control-tls-cert and --control-tls-key")
    for flag, address in (("--control-address", settings.address), ("--control-http-address", settings.http_address)):
        if not address:
            continue
        try:
            host, _ = split_address(address)
        except ValueError as error:
            raise ValueError(f"{flag}: {error}") from None
        if not is_loopback(host) and not settings.tls:
            raise ValueError(
                f"{flag} {address} is not a loopback address: exposing the control API needs TLS "
                "(--control-tls-cert and --control-tls-key); keep it on 127.0.0.1 and use kubectl port-forward "
                "otherwise"
            )


class ControlServicer(control_pb2_grpc.ControlServiceServicer):
    """``ControlService``: the three calls, without any transport concern (tests call it directly)."""

    def __init__(self, op: Operator, intents: Intents) -> None:
        self.op = op
        self.intents = intents

    async def GetState(self, request: control_pb2.StateRequest, context: Context) -> control_pb2.State:
        return state.build(self.op)

    async def Events(self, request: control_pb2.EventsRequest, context: Context) -> AsyncIterator[control_pb2.LogEntry]:
        async for entry in self.entries(request):
            yield entry

    async def Execute(self, request: control_pb2.Intent, context: Context) -> control_pb2.IntentResult:
        return await self.intents.execute(request)

    async def entries(self, request: control_pb2.EventsRequest) -> AsyncIterator[control_pb2.LogEntry]:
        follow = request.follow if request.HasField("follow") else True
        async for delivery in self.op.recorder.journal.follow(live=follow):
            yield events.log_entry(delivery)


def to_json(message: Message) -> str:
    return json_format.MessageToJson(
        message, indent=None, always_print_fields_with_no_presence=True, unquote_int64_if_possible=True
    )


def http_app(servicer: ControlServicer) -> web.Application:
    """The HTTP/JSON twin of ``servicer``."""

    async def get_state(_: web.Request) -> web.Response:
        return web.Response(text=to_json(state.build(servicer.op)), content_type="application/json")

    async def get_events(request: web.Request) -> web.StreamResponse:
        follow = request.query.get("follow", "true").lower()
        if follow not in ("true", "false", "1", "0"):
            return _error(400, f"follow must be true or false, got {follow!r}")
        response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            async for entry in servicer.entries(control_pb2.EventsRequest(follow=follow in ("true", "1"))):
                await response.write((to_json(entry) + "\n").encode())
        return response

    async def execute(request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            # Also what keeps a web page from posting intents through a browser on a machine that
            # port-forwards to the operator: a cross-origin request cannot send JSON without a CORS
            # preflight, which this listener never answers.
            return _error(415, f"the body must be an Intent as application/json, not {request.content_type!r}")
        try:
            intent = json_format.Parse(await request.text(), control_pb2.Intent())
        except json_format.ParseError as error:
            return _error(400, f"the body is not an Intent (proto3 JSON): {error}")
        result = await servicer.intents.execute(intent)
        return web.Response(text=to_json(result), content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/state", get_state)
    app.router.add_get("/v1/events", get_events)
    app.router.add_post("/v1/execute", execute)
    return app


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


class ControlServer:
    """Both listeners of one operator; ``start`` binds them (``ControlStartError`` if it cannot)."""

    def __init__(self, op: Operator, api: AnnotationApi, settings: ControlSettings) -> None:
        self.settings = settings
        self.servicer = ControlServicer(op, Intents(op, api))
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None

    async def start(self) -> None:
        settings = self.settings
        try:
            check(settings)
        except ValueError as error:
            raise ControlStartError(str(error)) from None
        try:
            if settings.address:
                await self._start_grpc(settings.address)
            if settings.http_address:
                await self._start_http(settings.http_address)
        except BaseException:
            await self.stop()
            raise
        tls = " with TLS" if settings.tls else ""
        logger.info(
            "control API%s: gRPC on %s, HTTP/JSON on %s", tls, settings.address or "off", settings.http_address or "off"
        )

    async def _start_grpc(self, address: str) -> None:
        host, port = split_address(address)
        _check_free(address, host, port)
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        control_pb2_grpc.add_ControlServiceServicer_to_server(self.servicer, server)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if self.settings.tls:
                self.grpc_port = server.add_secure_port(target, self._grpc_credentials())
            else:
                self.grpc_port = server.add_insecure_port(target)
        except RuntimeError as error:
            raise ControlStartError(f"control API: cannot listen on {address} (gRPC): {error}") from None
        await server.start()
        self._grpc = server

    def _grpc_credentials(self) -> grpc.ServerCredentials:
        settings = self.settings
        assert settings.tls_cert is not None
        assert settings.tls_key is not None
        key, cert = Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes()
        client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=bool(client_ca)
        )

    def _ssl_context(self) -> ssl.SSLContext | None:
        settings = self.settings
        if not settings.tls:
            return None
        assert settings.tls_cert is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca:
            context.load_verify_locations(settings.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def _start_http(self, address: str) -> None:
        host, port = split_address(address)
        runner = web.AppRunner(http_app(self.servicer), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._http = runner
        site = web.TCPSite(runner, host, port, ssl_context=self._ssl_context())
        try:
            await site.start()
        except OSError as error:
            raise ControlStartError(f"control API: cannot listen on {address} (HTTP): {_reason(error)}") from None
        addresses = runner.addresses  # the bound port, when port 0 was asked for
        self.http_port = int(addresses[0][1]) if addresses else port

    async def stop(self) -> None:
        """Stop listening; streams that follow the event log end (the log is closed by its owner)."""
        grpc_server, self._grpc = self._grpc, None
        runner, self._http = self._http, None
        if grpc_server is not None:
            await grpc_server.stop(grace=1.0)
        if runner is not None:
            await runner.cleanup()


def _check_free(address: str, host: str, port: int) -> None:
    """Fail as the HTTP listener does (errno and all) when the port is taken: gRPC only says it could
    not bind, which a person (and a test that picks free ports) cannot tell from other failures."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise ControlStartError(f"control API: cannot listen on {address} (gRPC): {_reason(error)}") from None


def _reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()
