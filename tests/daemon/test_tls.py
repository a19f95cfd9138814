"""Mutual TLS as ``ig daemon --tls-cert-file --tls-key-file --tls-client-ca-file`` sets it up."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from gadget_operator import errors
from gadget_operator.daemon.client import DaemonClient
from gadget_operator.settings import TLSSettings
from gadget_operator.simulator.server import Fleet, ServerTLS, SimulatedNode

SERVER_NAME = "gadget-daemon.example"


@pytest.fixture
async def tls_node(short_dir: Path, ca: trustme.CA) -> SimulatedNode:
    server_cert = ca.issue_cert(SERVER_NAME)
    tls = ServerTLS(
        cert_chain=server_cert.cert_chain_pems[0].bytes(),
        private_key=server_cert.private_key_pem.bytes(),
        client_ca=ca.cert_pem.bytes(),
    )
    fleet = Fleet(short_dir, transport="tcp", tls=tls)
    node = await fleet.add("node-1")
    yield node
    await fleet.stop()


def client_tls(directory: Path, ca: trustme.CA, issuer: trustme.CA | None) -> TLSSettings:
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    if issuer is None:
        return TLSSettings(ca_file=str(ca_file), server_name=SERVER_NAME)
    client_cert = issuer.issue_cert("gadget-operator")
    cert_file, key_file = directory / f"client-{id(issuer)}.pem", directory / f"client-{id(issuer)}.key"
    client_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    client_cert.private_key_pem.write_to_path(str(key_file))
    return TLSSettings(str(cert_file), str(key_file), str(ca_file), SERVER_NAME)


async def test_the_right_client_certificate_is_accepted(
    tls_node: SimulatedNode, short_dir: Path, ca: trustme.CA
) -> None:
    async with DaemonClient(tls_node.address, tls=client_tls(short_dir, ca, ca), timeout=3.0) as client:
        assert await client.list_instances() == []


async def test_no_client_certificate_is_refused(tls_node: SimulatedNode, short_dir: Path, ca: trustme.CA) -> None:
    async with DaemonClient(tls_node.address, tls=client_tls(short_dir, ca, None), timeout=3.0) as client:
        with pytest.raises(errors.DaemonUnavailable):
            await client.list_instances()
    assert tls_node.calls.total() == 0


async def test_a_certificate_from_another_ca_is_refused(
    tls_node: SimulatedNode, short_dir: Path, ca: trustme.CA
) -> None:
    stranger = trustme.CA()
    async with DaemonClient(tls_node.address, tls=client_tls(short_dir, ca, stranger), timeout=3.0) as client:
        with pytest.raises(errors.DaemonUnavailable):
            await client.list_instances()
    assert tls_node.calls.total() == 0


async def test_plaintext_to_a_tls_daemon_is_refused(tls_node: SimulatedNode) -> None:
    async with DaemonClient(tls_node.address, timeout=3.0) as client:
        with pytest.raises(errors.DaemonUnavailable):
            await client.list_instances()
