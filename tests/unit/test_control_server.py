"""Who may reach the control API: loopback by default, TLS (optionally mutual) for anything else, and
the flags that say so, refused before the operator starts when they would expose it in the clear."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
import trustme
from google.protobuf import json_format

from gadget_operator.control import server
from gadget_operator.control.pb import control_pb2, control_pb2_grpc
from gadget_operator.control.recorder import Recorder
from gadget_operator.discovery import Topology
from gadget_operator.settings import ControlSettings, Settings
from tests.unit.test_cli import invoke, settings_of, started  # noqa: F401 (the fixture)


class Standby:
    """An operator that stands by: enough for GetState and a refused intent."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.topology = Topology(self.settings.discovery)
        self.reconciler = None
        self.elector = None
        self.recorder = Recorder()
        self.started = 1700000000.0


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        (ControlSettings(address="0.0.0.0:50051"), "needs TLS"),
        (ControlSettings(http_address="10.1.2.3:8080"), "--control-http-address 10.1.2.3:8080"),
        (ControlSettings(address="50051"), "not host:port"),
        (ControlSettings(tls_cert="cert.pem"), "go together"),
        (ControlSettings(tls_client_ca="ca.pem"), "needs --control-tls-cert"),
    ],
)
def test_settings_that_would_expose_the_api_in_the_clear_or_cannot_work_are_refused(
    settings: ControlSettings, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        server.check(settings)


@pytest.mark.parametrize(
    "settings",
    [
        ControlSettings(),
        ControlSettings(address="[::1]:1", http_address="localhost:2"),
        ControlSettings(address="", http_address=""),
        ControlSettings(address="0.0.0.0:50051", tls_cert="c", tls_key="k"),
    ],
)
def test_loopback_or_tls_settings_are_accepted(settings: ControlSettings) -> None:
    server.check(settings)


def test_the_run_flags_configure_the_control_api_and_refuse_an_address_beyond_loopback_without_tls(
    started: list[dict[str, Any]],  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    result = invoke("run", "--control-address", "0.0.0.0:50051")
    assert result.exit_code == 2
    assert "needs TLS" in result.output
    assert not started

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    result = invoke(
        "run",
        *("--control-address", "0.0.0.0:50051", "--control-http-address", "off"),
        *("--control-tls-cert", str(cert), "--control-tls-key", str(key), "--control-event-buffer", "50"),
    )
    assert result.exit_code == 0, result.output
    control = settings_of(started[-1]).control
    assert (control.address, control.http_address, control.tls, control.event_buffer) == ("0.0.0.0:50051", "", True, 50)

    assert invoke("run").exit_code == 0
    assert settings_of(started[-1]).control == ControlSettings()  # loopback, Skaffold's ports


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    authority = trustme.CA()
    served = authority.issue_cert("127.0.0.1", "localhost")
    client = authority.issue_cert("ctl@example.com")
    files = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "cert.pem",
        "key": tmp_path / "key.pem",
        "client_cert": tmp_path / "client.pem",
        "client_key": tmp_path / "client-key.pem",
    }
    authority.cert_pem.write_to_path(str(files["ca"]))
    served.cert_chain_pems[0].write_to_path(str(files["cert"]))
    served.private_key_pem.write_to_path(str(files["key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return files


@pytest.fixture
async def tls_server(pki: dict[str, Path]) -> AsyncIterator[server.ControlServer]:
    settings = ControlSettings(
        address="127.0.0.1:0",
        http_address="127.0.0.1:0",
        tls_cert=str(pki["cert"]),
        tls_key=str(pki["key"]),
        tls_client_ca=str(pki["ca"]),
    )
    listening = server.ControlServer(Standby(), api=None, settings=settings)  # type: ignore[arg-type]
    await listening.start()
    try:
        yield listening
    finally:
        await listening.stop()


async def test_with_mutual_tls_a_client_with_a_certificate_is_served_and_one_without_is_not(
    tls_server: server.ControlServer, pki: dict[str, Path]
) -> None:
    def credentials(with_certificate: bool) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=pki["ca"].read_bytes(),
            private_key=pki["client_key"].read_bytes() if with_certificate else None,
            certificate_chain=pki["client_cert"].read_bytes() if with_certificate else None,
        )

    target = f"127.0.0.1:{tls_server.grpc_port}"
    async with grpc.aio.secure_channel(target, credentials(True)) as channel:
        state = await control_pb2_grpc.ControlServiceStub(channel).GetState(control_pb2.StateRequest(), timeout=5)
        assert state.operator.role == "leader"
    async with grpc.aio.secure_channel(target, credentials(False)) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await control_pb2_grpc.ControlServiceStub(channel).GetState(control_pb2.StateRequest(), timeout=5)

    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
    url = f"https://127.0.0.1:{tls_server.http_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v1/state", ssl=context) as response:
            assert response.status == 200
            assert json_format.Parse(await response.text(), control_pb2.State()).operator.role == "leader"
        json_body = {"Content-Type": "application/json"}
        async with session.post(f"{url}/v1/execute", data="{not json", ssl=context, headers=json_body) as response:
            assert response.status == 400
            assert "not an Intent" in (await response.json())["message"]
        form = {"Content-Type": "text/plain"}  # what a web page may post across origins without asking
        async with session.post(
            f"{url}/v1/execute", data='{"resync": {"all": true}}', ssl=context, headers=form
        ) as response:
            assert response.status == 415
        async with session.post(
            f"{url}/v1/execute", data='{"resync": {"all": true}}', ssl=context, headers=json_body
        ) as response:
            assert response.status == 200
            result = json_format.Parse(await response.text(), control_pb2.IntentResult())
            assert not result.accepted  # a standby
            assert "stands by" in result.message
        plain = ssl.create_default_context(cafile=str(pki["ca"]))
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"{url}/v1/state", ssl=plain) as response:
                await response.read()
        with pytest.raises(aiohttp.ClientError):  # no TLS at all
            async with session.get(f"http://127.0.0.1:{tls_server.http_port}/v1/state") as response:
                await response.read()


async def test_a_port_already_taken_stops_the_start_with_the_reason() -> None:
    first = server.ControlServer(Standby(), api=None, settings=ControlSettings(address="127.0.0.1:0", http_address=""))  # type: ignore[arg-type]
    await first.start()
    try:
        taken = f"127.0.0.1:{first.grpc_port}"
        for settings in (
            ControlSettings(address=taken, http_address=""),
            ControlSettings(address="", http_address=taken),
        ):
            second = server.ControlServer(Standby(), api=None, settings=settings)  # type: ignore[arg-type]
            with pytest.raises(server.ControlStartError, match="address already in use"):
                await second.start()
    finally:
        await first.stop()
