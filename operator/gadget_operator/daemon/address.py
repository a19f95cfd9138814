"""Daemon addresses as Inspektor Gadget writes them (``unix:///path``, ``tcp://host:port``) and TLS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc


@dataclass(frozen=True, slots=True)
class DaemonAddress:
    """A parsed address; ``target`` is what gRPC dials."""

    raw: str
    target: str
    is_unix: bool


def parse_address(raw: str) -> DaemonAddress:
    """Accept the two forms ``ig daemon --host`` accepts; anything else is a clear ``ValueError``."""
    if raw.startswith("unix://"):
        path = raw.removeprefix("unix://")
        if not path.startswith("/"):
            raise ValueError(f"daemon address {raw!r}: a unix socket path must be absolute (unix:///path)")
        return DaemonAddress(raw, f"unix://{path}", is_unix=True)
    if raw.startswith("tcp://"):
        hostport = raw.removeprefix("tcp://")
        host, sep, port = hostport.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"daemon address {raw!r}: expected tcp://host:port")
        return DaemonAddress(raw, hostport, is_unix=False)
    raise ValueError(f"daemon address {raw!r}: must start with unix:// or tcp://")


class ClientCertificates(Protocol):
    """PEM files of a TLS client: the CA it trusts, and its own certificate and key (mutual TLS)."""

    @property
    def ca_file(self) -> str | None: ...
    @property
    def cert_file(self) -> str | None: ...
    @property
    def key_file(self) -> str | None: ...


def channel_credentials(tls: ClientCertificates) -> grpc.ChannelCredentials:
    """gRPC client credentials from PEM files: towards ``ig daemon --tls-cert-file/--tls-key-file/
    --tls-client-ca-file``, or the operator's own control API (``ctl --tls-*``)."""

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(
        root_certificates=read(tls.ca_file),
        private_key=read(tls.key_file),
        certificate_chain=read(tls.cert_file),
    )
