"""``gadget-operator run`` refuses bad flags before the operator starts, with a message that says why."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click
import kopf
import pytest
from click.testing import CliRunner, Result

from gadget_operator import cli
from gadget_operator.settings import DiscoveryMode, Settings


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Stands in for the operator: records what ``run`` would start it with, and starts nothing."""
    calls: list[dict[str, Any]] = []

    async def operator(**kwargs: Any) -> None:
        raise AssertionError("the operator must not really start in a unit test")

    def fake_operator(**kwargs: Any) -> Coroutine[Any, Any, None]:
        calls.append(kwargs)
        return operator(**kwargs)

    def fake_asyncio_run(coroutine: Coroutine[Any, Any, None]) -> None:
        coroutine.close()

    monkeypatch.setattr(kopf, "operator", fake_operator)
    monkeypatch.setattr(asyncio, "run", fake_asyncio_run)
    monkeypatch.setattr(cli, "configure_logging", lambda log_format, verbose: None)
    return calls


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli.main, list(args), env=env)


def settings_of(call: dict[str, Any]) -> Settings:
    settings = call["memo"].operator_settings
    assert isinstance(settings, Settings)
    return settings


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, str]:
    """Existing files for the TLS flags (their content is read only once the operator runs)."""
    return {name: write(tmp_path / f"{name}.pem", "not read here\n") for name in ("cert", "key", "ca")}


# -- validation errors ---------------------------------------------------------------------------------


def assert_usage_error(result: Result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Usage: " in result.stderr
    assert message in result.stderr


def test_static_discovery_without_a_static_nodes_file_is_refused(started: list[dict[str, Any]]) -> None:
    assert_usage_error(invoke("run", "--discovery", "static"), "Error: --discovery static needs --static-nodes FILE")
    assert started == []


def test_static_discovery_set_through_the_environment_is_checked_the_same_way(started: list[dict[str, Any]]) -> None:
    result = invoke("run", env={"GADGET_OPERATOR_DISCOVERY": "static"})
    assert_usage_error(result, "--discovery static needs --static-nodes FILE")
    assert started == []


@pytest.mark.parametrize(
    "given",
    [("cert",), ("key",), ("cert", "key"), ("cert", "ca"), ("key", "ca")],
    ids=lambda given: "+".join(given),
)
def test_mutual_tls_needs_certificate_key_and_ca_together(
    given: tuple[str, ...], pem_files: dict[str, str], started: list[dict[str, Any]]
) -> None:
    args = [arg for name in given for arg in (f"--tls-{name}", pem_files[name])]
    result = invoke("run", *args)
    assert_usage_error(result, "mutual TLS needs --tls-cert, --tls-key and --tls-ca together")
    assert started == []


def test_a_tls_file_that_does_not_exist_is_refused(tmp_path: Path, started: list[dict[str, Any]]) -> None:
    result = invoke("run", "--tls-cert", str(tmp_path / "missing.pem"))
    assert_usage_error(result, "Invalid value for '--tls-cert'")
    assert "does not exist" in result.stderr
    assert started == []


def test_namespaces_and_all_namespaces_exclude_each_other(started: list[dict[str, Any]]) -> None:
    assert_usage_error(invoke("run", "-n", "team-a", "-A"), "--namespace and --all-namespaces exclude each other")
    result = invoke("run", "--all-namespaces", env={"GADGET_OPERATOR_NAMESPACES": "team-a team-b"})
    assert_usage_error(result, "--namespace and --all-namespaces exclude each other")
    assert started == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("node-1: [tcp://a:1\n", "Invalid value for --static-nodes: cannot read"),
        ("", "must map node names to daemon addresses"),
        ("- tcp://a:1\n", "must map node names to daemon addresses"),
        ("node-1: 8080\n", "entry 'node-1': 8080 is not a string pair"),
        ("node-1: http://a:1\n", "node node-1: daemon address 'http://a:1': must start with unix:// or tcp://"),
    ],
    ids=["bad-yaml", "empty", "a-list", "port-only", "http"],
)
def test_a_bad_static_nodes_file_is_refused_before_the_operator_starts(
    tmp_path: Path, content: str, message: str, started: list[dict[str, Any]]
) -> None:
    path = write(tmp_path / "nodes.yaml", content)
    result = invoke("run", "--discovery", "static", "--static-nodes", path)
    assert_usage_error(result, message)
    assert started == []


def test_a_missing_static_nodes_file_is_refused(tmp_path: Path, started: list[dict[str, Any]]) -> None:
    missing = tmp_path / "nodes.yaml"
    result = invoke("run", "--discovery", "static", "--static-nodes", str(missing))
    assert_usage_error(result, f"Invalid value for --static-nodes: cannot read {missing}")
    assert started == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--daemon-port", "0"), "Invalid value for '--daemon-port': 0 is not in the range 1<=x<=65535"),
        (("--metrics-port", "70000"), "Invalid value for '--metrics-port'"),
        (("--discovery", "dns"), "Invalid value for '--discovery'"),
        (("--daemon-transport", "ssh"), "Invalid value for '--daemon-transport'"),
        (("--rpc-timeout", "0"), "Invalid value for '--rpc-timeout'"),
        (("--resync-interval", "0.5"), "Invalid value for '--resync-interval'"),
        (("--max-concurrency", "0"), "Invalid value for '--max-concurrency'"),
        (("--node-concurrency", "0"), "Invalid value for '--node-concurrency'"),
        (("--log-format", "xml"), "Invalid value for '--log-format'"),
    ],
)
def test_out_of_range_values_are_refused(args: tuple[str, ...], message: str, started: list[dict[str, Any]]) -> None:
    assert_usage_error(invoke("run", *args), message)
    assert started == []


# -- what valid flags start ----------------------------------------------------------------------------


def test_valid_static_flags_start_the_operator_with_those_settings(
    tmp_path: Path, pem_files: dict[str, str], started: list[dict[str, Any]]
) -> None:
    nodes = write(tmp_path / "nodes.yaml", "node-1: tcp://10.0.0.1:8080\nnode-2: unix:///run/ig.sock\n")
    result = invoke(
        "run",
        "--discovery",
        "static",
        "--static-nodes",
        nodes,
        *("--tls-cert", pem_files["cert"], "--tls-key", pem_files["key"], "--tls-ca", pem_files["ca"]),
        *("--node-concurrency", "2", "--rpc-timeout", "1.5"),
    )
    assert result.exit_code == 0, result.output
    [call] = started
    settings = settings_of(call)
    assert settings.discovery.mode is DiscoveryMode.STATIC
    assert settings.discovery.static_nodes == {"node-1": "tcp://10.0.0.1:8080", "node-2": "unix:///run/ig.sock"}
    assert settings.discovery.tls.enabled
    assert (settings.executor.node_concurrency, settings.executor.rpc_timeout) == (2, 1.5)
    assert call["clusterwide"] is True


def test_namespaces_from_the_environment_may_be_space_or_comma_separated(started: list[dict[str, Any]]) -> None:
    result = invoke("run", env={"GADGET_OPERATOR_NAMESPACES": "team-a,team-b team-c"})
    assert result.exit_code == 0, result.output
    [call] = started
    assert call["namespaces"] == ("team-a", "team-b", "team-c")
    assert call["clusterwide"] is False


# -- IG's multi-tenancy ----------------------------------------------------------------------------------


def test_ig_multi_tenancy_sends_tokens_of_the_accounts_named(started: list[dict[str, Any]]) -> None:
    result = invoke(
        "run",
        env={
            "GADGET_OPERATOR_IG_MULTI_TENANCY": "true",
            "GADGET_OPERATOR_OPERATOR_SERVICE_ACCOUNT": "gadget-operator-system/gadget-operator",
            "GADGET_OPERATOR_TENANT_SERVICE_ACCOUNT": "ig-client",
            "GADGET_OPERATOR_TOKEN_LIFETIME": "1200",
        },
    )
    assert result.exit_code == 0, result.output
    tokens = settings_of(started[0]).tenancy.daemon_tokens
    assert tokens is not None
    assert (str(tokens.operator_account), tokens.tenant_account, tokens.lifetime) == (
        "gadget-operator-system/gadget-operator",
        "ig-client",
        1200,
    )


def test_without_ig_multi_tenancy_no_token_is_sent(started: list[dict[str, Any]]) -> None:
    assert invoke("run").exit_code == 0
    assert settings_of(started[0]).tenancy.daemon_tokens is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--operator-service-account", "gadget-operator"), "expected NAMESPACE/NAME"),
        (("--token-lifetime", "599"), "599 is not in the range x>=600"),
        (("--daemon-transport", "pod-ip"), "would send ServiceAccount tokens over the network in plaintext"),
    ],
    ids=["account", "lifetime", "plaintext"],
)
def test_ig_multi_tenancy_refuses_what_cannot_work_or_would_leak_tokens(
    args: tuple[str, ...], message: str, started: list[dict[str, Any]]
) -> None:
    assert_usage_error(invoke("run", "--ig-multi-tenancy", *args), message)
    assert started == []


def test_ig_multi_tenancy_with_static_tcp_daemons_needs_mutual_tls(
    tmp_path: Path, pem_files: dict[str, str], started: list[dict[str, Any]]
) -> None:
    nodes = write(tmp_path / "nodes.yaml", "node-1: tcp://10.0.0.1:8080\n")
    static = ("run", "--ig-multi-tenancy", "--discovery", "static", "--static-nodes", nodes)
    assert_usage_error(invoke(*static), "in plaintext")
    tls = ("--tls-cert", pem_files["cert"], "--tls-key", pem_files["key"], "--tls-ca", pem_files["ca"])
    assert invoke(*static, *tls).exit_code == 0
    assert len(started) == 1


# -- help ----------------------------------------------------------------------------------------------


def test_run_help_lists_every_flag() -> None:
    result = invoke("run", "--help")
    assert result.exit_code == 0
    command = cli.main.commands["run"]
    flags = [flag for param in command.params for flag in (*param.opts, *param.secondary_opts)]
    assert len(flags) > 25
    missing = [flag for flag in flags if flag not in result.output]
    assert missing == []


def test_the_top_level_help_lists_every_command_and_the_version_is_printed() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("run", "simulate", "demo"):
        assert command in result.output
    version = invoke("--version")
    assert version.exit_code == 0
    assert version.output.startswith("gadget-operator, version ")


# -- load_static_nodes ---------------------------------------------------------------------------------


def test_load_static_nodes_reads_a_map_of_node_to_address(tmp_path: Path) -> None:
    path = write(tmp_path / "nodes.yaml", "node-1: tcp://10.0.0.1:8080\nnode-2: unix:///run/ig.sock\n")
    assert cli.load_static_nodes(path) == {"node-1": "tcp://10.0.0.1:8080", "node-2": "unix:///run/ig.sock"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("node-1: [tcp://a:1\n", "cannot read"),
        ("", "must map node names to daemon addresses"),
        ("{}\n", "must map node names to daemon addresses"),
        ("tcp://a:1\n", "must map node names to daemon addresses"),
        ("- node-1\n", "must map node names to daemon addresses"),
        ("1: tcp://a:1\n", "entry 1: 'tcp://a:1' is not a string pair"),
        ("node-1: ~\n", "entry 'node-1': None is not a string pair"),
        ("node-1: {host: a}\n", "is not a string pair"),
        ("node-1: a:1\n", "node node-1: daemon address 'a:1': must start with unix:// or tcp://"),
    ],
    ids=[
        "missing",
        "bad-yaml",
        "empty",
        "empty-map",
        "a-scalar",
        "a-list",
        "int-node",
        "null-address",
        "map-address",
        "no-scheme",
    ],
)
def test_load_static_nodes_explains_what_is_wrong(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "nodes.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(click.BadParameter, match=message.replace("[", r"\[")) as caught:
        cli.load_static_nodes(str(path))
    assert str(path) in caught.value.format_message()


@pytest.mark.parametrize("address", ["tcp://node-1", "tcp://node-1:http", "unix://run/ig.sock"])
def test_load_static_nodes_refuses_addresses_the_daemon_client_cannot_dial(tmp_path: Path, address: str) -> None:
    path = write(tmp_path / "nodes.yaml", f"node-1: {address}\n")
    with pytest.raises(click.BadParameter):
        cli.load_static_nodes(path)
