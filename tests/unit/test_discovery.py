"""Topology knows which nodes can be planned: a Node object and a daemon endpoint, both seen."""

from __future__ import annotations

from typing import Any

import pytest

from gadget_operator.daemon.address import parse_address
from gadget_operator.daemon.portforward import PodPort
from gadget_operator.discovery import Topology, pod_endpoint, replace_daemon_pods
from gadget_operator.settings import DaemonTransport, DiscoveryMode, DiscoverySettings

POD_IP = DiscoverySettings(transport=DaemonTransport.POD_IP, daemon_port=8080)
PORT_FORWARD = DiscoverySettings(transport=DaemonTransport.PORT_FORWARD, daemon_port=8080)


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


def pod(
    name: str,
    node_name: str | None,
    *,
    uid: str | None = None,
    ip: str | None = "10.0.0.7",
    phase: str = "Running",
    namespace: str | None = "gadget",
    deleting: bool = False,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "uid": uid or f"uid-{name}"}
    if namespace is not None:
        metadata["namespace"] = namespace
    if deleting:
        metadata["deletionTimestamp"] = "2024-05-01T12:00:00Z"
    status: dict[str, Any] = {"phase": phase}
    if ip is not None:
        status["podIP"] = ip
    spec = {"nodeName": node_name} if node_name else {}
    return {"metadata": metadata, "spec": spec, "status": status}


class Recorder:
    """An ``on_change`` listener that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[set[str]] = []

    def __call__(self, nodes: set[str]) -> None:
        self.calls.append(set(nodes))

    def take(self) -> list[set[str]]:
        calls, self.calls = self.calls, []
        return calls


def topology(settings: DiscoverySettings = POD_IP) -> tuple[Topology, Recorder]:
    recorder = Recorder()
    return Topology(settings, on_change=recorder), recorder


# -- readiness -----------------------------------------------------------------------------------------


def test_a_node_is_ready_only_once_both_its_node_object_and_its_daemon_are_known() -> None:
    topo, _ = topology()
    topo.apply_node("ADDED", node("n1"))
    assert topo.ready_nodes() == {}
    topo.apply_pod("ADDED", pod("gadget-a", "n2"))
    assert topo.ready_nodes() == {}
    topo.apply_pod("ADDED", pod("gadget-b", "n1", ip="10.0.0.1"))
    topo.apply_node("ADDED", node("n2"))
    assert topo.ready_nodes() == {"n1": "tcp://10.0.0.1:8080", "n2": "tcp://10.0.0.7:8080"}


def test_a_deleted_node_is_no_longer_ready_though_its_daemon_is() -> None:
    topo, recorder = topology()
    topo.apply_node("ADDED", node("n1"))
    topo.apply_pod("ADDED", pod("gadget-a", "n1"))
    recorder.take()
    topo.apply_node("DELETED", node("n1"))
    assert recorder.take() == [{"n1"}]
    assert topo.ready_nodes() == {}
    topo.apply_node("DELETED", node("n1"))  # a repeated delete changes nothing
    assert recorder.take() == []


def test_static_discovery_knows_every_endpoint_at_once() -> None:
    settings = DiscoverySettings(mode=DiscoveryMode.STATIC, static_nodes={"n1": "unix:///run/ig.sock"})
    topo, _ = topology(settings)
    assert topo.endpoints_listed
    assert topo.ready_nodes() == {}
    topo.apply_node("ADDED", node("n1"))
    assert topo.ready_nodes() == {"n1": "unix:///run/ig.sock"}


# -- change notifications ------------------------------------------------------------------------------


def test_node_changes_are_reported_only_when_the_labels_change() -> None:
    topo, recorder = topology()
    topo.apply_node("ADDED", node("n1", zone="a"))
    topo.apply_node("MODIFIED", node("n1", zone="a"))  # a status update: same labels
    topo.apply_node(None, node("n1", zone="b"))  # kopf's initial listing has no event type
    assert recorder.take() == [{"n1"}, {"n1"}]
    assert topo.labels == {"n1": {"zone": "b"}}


def test_a_node_without_labels_is_still_reported() -> None:
    topo, recorder = topology()
    topo.apply_node("ADDED", {"metadata": {"name": "n1", "labels": None}})
    assert recorder.take() == [{"n1"}]
    assert topo.labels == {"n1": {}}


def test_replacing_endpoints_reports_exactly_the_nodes_whose_endpoint_changed() -> None:
    topo, recorder = topology()
    topo.replace_endpoints({"n1": "tcp://a:1", "n2": "tcp://b:1"}, {"n1": "u1", "n2": "u2"})
    assert recorder.take() == [{"n1", "n2"}]
    assert topo.endpoints_listed
    topo.replace_endpoints({"n1": "tcp://a:1", "n2": "tcp://b:2", "n3": "tcp://c:1"}, {})
    assert recorder.take() == [{"n2", "n3"}]
    topo.replace_endpoints({"n2": "tcp://b:2", "n3": "tcp://c:1"}, {})
    assert recorder.take() == [{"n1"}]
    topo.replace_endpoints({"n2": "tcp://b:2", "n3": "tcp://c:1"}, {})
    assert recorder.take() == []


def test_pod_events_report_the_node_when_its_daemon_pod_or_endpoint_appears_moves_or_goes() -> None:
    topo, recorder = topology()
    topo.apply_pod("ADDED", pod("gadget-a", "n1", phase="Pending", ip=None))
    assert recorder.take() == [{"n1"}]  # a daemon, not usable yet
    topo.apply_pod("MODIFIED", pod("gadget-a", "n1", phase="Pending", ip=None))
    assert recorder.take() == []
    topo.apply_pod("MODIFIED", pod("gadget-a", "n1", ip="10.0.0.1"))
    assert recorder.take() == [{"n1"}]
    topo.apply_pod("MODIFIED", pod("gadget-a", "n1", ip="10.0.0.1"))
    assert recorder.take() == []
    topo.apply_pod("MODIFIED", pod("gadget-a", "n1", ip="10.0.0.1", deleting=True))
    assert recorder.take() == [{"n1"}]
    assert topo.endpoints == {}
    assert topo.has_daemon("n1")  # the pod still exists while it terminates
    topo.apply_pod("DELETED", pod("gadget-a", "n1", ip="10.0.0.1", deleting=True))
    assert recorder.take() == [{"n1"}]
    assert not topo.has_daemon("n1")


def test_pods_not_scheduled_on_a_node_are_ignored() -> None:
    topo, recorder = topology()
    topo.apply_pod("ADDED", pod("gadget-a", None))
    topo.apply_pod("DELETED", pod("gadget-a", None))
    assert recorder.take() == []
    assert topo.endpoints == {}


def test_a_late_deleted_event_of_a_replaced_pod_keeps_the_replacements_endpoint() -> None:
    topo, recorder = topology()
    topo.apply_pod("ADDED", pod("gadget-old", "n1", ip="10.0.0.1"))
    topo.apply_pod("ADDED", pod("gadget-new", "n1", ip="10.0.0.2"))
    assert recorder.take() == [{"n1"}, {"n1"}]
    topo.apply_pod("DELETED", pod("gadget-old", "n1", ip="10.0.0.1"))
    assert recorder.take() == []
    assert topo.endpoints == {"n1": "tcp://10.0.0.2:8080"}
    topo.apply_pod("DELETED", pod("gadget-new", "n1", ip="10.0.0.2"))
    assert recorder.take() == [{"n1"}]
    assert topo.endpoints == {}


def test_a_late_deleted_event_after_a_relist_is_ignored_too() -> None:
    topo, recorder = topology()
    topo.replace_endpoints({"n1": "tcp://10.0.0.2:8080"}, {"n1": "uid-gadget-new"})
    recorder.take()
    topo.apply_pod("DELETED", pod("gadget-old", "n1", ip="10.0.0.1"))
    assert recorder.take() == []
    assert topo.ready_nodes() == {}  # and still no Node object
    assert topo.endpoints == {"n1": "tcp://10.0.0.2:8080"}


# -- daemon pods that are not usable yet ---------------------------------------------------------------


@pytest.mark.parametrize(
    "unusable",
    [
        pod("gadget-a", "n1", phase="Pending", ip=None),
        pod("gadget-a", "n1", phase="Failed"),
        pod("gadget-a", "n1", ip=None),
        pod("gadget-a", "n1", deleting=True),
    ],
    ids=["pending", "not-running", "no-ip", "deleting"],
)
def test_a_daemon_pod_that_is_not_usable_yet_gives_its_node_a_daemon_but_no_endpoint(
    unusable: dict[str, Any],
) -> None:
    topo, _ = topology()
    topo.apply_node("ADDED", node("n1"))
    topo.apply_pod("ADDED", unusable)
    assert topo.has_daemon("n1")
    assert topo.daemon_nodes() == {"n1"}
    assert topo.endpoints == {}
    assert topo.ready_nodes() == {}


def test_a_node_keeps_its_daemon_while_its_pod_is_replaced() -> None:
    topo, recorder = topology()
    topo.apply_pod("ADDED", pod("gadget-old", "n1", ip="10.0.0.1"))
    recorder.take()
    # A DaemonSet rollout: the old pod terminates, the new one is created before the old one is gone.
    topo.apply_pod("MODIFIED", pod("gadget-old", "n1", ip="10.0.0.1", deleting=True))
    topo.apply_pod("ADDED", pod("gadget-new", "n1", phase="Pending", ip=None))
    topo.apply_pod("DELETED", pod("gadget-old", "n1", ip="10.0.0.1", deleting=True))
    assert recorder.take() == [{"n1"}]  # the endpoint went; the node never was without a daemon
    assert topo.has_daemon("n1")
    topo.apply_pod("MODIFIED", pod("gadget-new", "n1", ip="10.0.0.2"))
    assert recorder.take() == [{"n1"}]
    assert topo.endpoints == {"n1": "tcp://10.0.0.2:8080"}


def test_a_relist_reports_the_nodes_whose_daemon_pod_appeared_or_went() -> None:
    topo, recorder = topology()
    replace_daemon_pods(topo, [pod("gadget-a", "n1", ip="10.0.0.1"), pod("gadget-b", "n2", phase="Pending", ip=None)])
    assert recorder.take() == [{"n1", "n2"}]
    assert topo.endpoints == {"n1": "tcp://10.0.0.1:8080"}
    assert topo.daemon_nodes() == {"n1", "n2"}
    # n1's pod restarts (not Running), n2's is gone, n3 gets a pod that is not usable yet.
    replace_daemon_pods(
        topo, [pod("gadget-a", "n1", phase="Pending", ip=None), pod("gadget-c", "n3", phase="Pending", ip=None)]
    )
    assert recorder.take() == [{"n1", "n2", "n3"}]
    assert topo.endpoints == {}
    assert topo.daemon_nodes() == {"n1", "n3"}
    replace_daemon_pods(
        topo, [pod("gadget-a", "n1", phase="Pending", ip=None), pod("gadget-c", "n3", phase="Pending", ip=None)]
    )
    assert recorder.take() == []


def test_pods_without_a_node_give_no_node_a_daemon() -> None:
    topo, recorder = topology()
    replace_daemon_pods(topo, [pod("gadget-a", None, phase="Pending", ip=None)])
    topo.apply_pod("ADDED", pod("gadget-b", None, phase="Pending", ip=None))
    assert recorder.take() == []
    assert topo.daemon_nodes() == set()


def test_with_static_discovery_the_daemons_are_the_configured_endpoints() -> None:
    settings = DiscoverySettings(mode=DiscoveryMode.STATIC, static_nodes={"n1": "unix:///run/ig.sock"})
    topo, _ = topology(settings)
    assert topo.has_daemon("n1")
    assert not topo.has_daemon("n2")
    assert topo.daemon_nodes() == {"n1"}


# -- endpoints of daemon pods ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "address"),
    [("10.0.0.7", "tcp://10.0.0.7:8080"), ("fd00::7", "tcp://[fd00::7]:8080")],
)
def test_pod_ip_transport_dials_the_pod_ip_with_brackets_for_ipv6(ip: str, address: str) -> None:
    assert pod_endpoint(pod("gadget-a", "n1", ip=ip), POD_IP) == ("n1", address)


def test_the_daemon_port_comes_from_the_settings() -> None:
    settings = DiscoverySettings(transport=DaemonTransport.POD_IP, daemon_port=9443)
    assert pod_endpoint(pod("gadget-a", "n1"), settings) == ("n1", "tcp://10.0.0.7:9443")


def test_port_forward_transport_names_the_pod_and_port() -> None:
    node_name, address = pod_endpoint(pod("gadget-a", "n1", namespace="ig"), PORT_FORWARD)
    assert (node_name, address) == ("n1", "portforward://ig/gadget-a:8080")
    assert address is not None
    assert PodPort.parse(address) == PodPort("ig", "gadget-a", 8080)


def test_port_forward_falls_back_to_the_daemon_namespace_when_the_pod_has_none() -> None:
    settings = DiscoverySettings(transport=DaemonTransport.PORT_FORWARD, daemon_namespace="gadget-system")
    assert pod_endpoint(pod("gadget-a", "n1", namespace=None), settings) == (
        "n1",
        "portforward://gadget-system/gadget-a:8080",
    )


@pytest.mark.parametrize("settings", [POD_IP, PORT_FORWARD], ids=["pod-ip", "port-forward"])
@pytest.mark.parametrize(
    "unusable",
    [
        pod("gadget-a", "n1", phase="Pending"),
        pod("gadget-a", "n1", phase="Failed"),
        pod("gadget-a", "n1", ip=None),
        pod("gadget-a", "n1", ip=""),
        pod("gadget-a", "n1", deleting=True),
    ],
    ids=["pending", "failed", "no-ip", "empty-ip", "deleting"],
)
def test_a_daemon_pod_that_is_not_usable_has_a_node_but_no_address(
    settings: DiscoverySettings, unusable: dict[str, Any]
) -> None:
    assert pod_endpoint(unusable, settings) == ("n1", None)


def test_a_pod_without_a_node_has_no_endpoint() -> None:
    assert pod_endpoint(pod("gadget-a", None), POD_IP) == (None, None)
    assert pod_endpoint({"metadata": {"name": "bare"}}, PORT_FORWARD) == (None, None)


# -- port-forward addresses ----------------------------------------------------------------------------


def test_port_forward_addresses_round_trip() -> None:
    target = PodPort("gadget", "gadget-x7k2p", 8080)
    assert target.address == "portforward://gadget/gadget-x7k2p:8080"
    assert PodPort.parse(target.address) == target


@pytest.mark.parametrize(
    "address",
    [
        "tcp://gadget/gadget-a:8080",
        "portforward://gadget-a:8080",
        "portforward:///gadget-a:8080",
        "portforward://gadget/:8080",
        "portforward://gadget/gadget-a",
        "portforward://gadget/gadget-a:http",
    ],
)
def test_malformed_port_forward_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match="expected portforward://"):
        PodPort.parse(address)


# -- daemon addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "target", "is_unix"),
    [
        ("unix:///run/gadgetservice.socket", "unix:///run/gadgetservice.socket", True),
        ("tcp://10.0.0.7:8080", "10.0.0.7:8080", False),
        ("tcp://[fd00::7]:8080", "[fd00::7]:8080", False),
        ("tcp://node-1.example:0", "node-1.example:0", False),
    ],
)
def test_daemon_addresses_in_both_ig_forms_are_parsed(raw: str, target: str, is_unix: bool) -> None:
    parsed = parse_address(raw)
    assert (parsed.raw, parsed.target, parsed.is_unix) == (raw, target, is_unix)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("unix://run/ig.sock", "must be absolute"),
        ("tcp://node-1", "expected tcp://host:port"),
        ("tcp://:8080", "expected tcp://host:port"),
        ("tcp://node-1:http", "expected tcp://host:port"),
        ("tcp://node-1:65536", "expected tcp://host:port"),
        ("http://node-1:8080", "must start with unix:// or tcp://"),
        ("node-1:8080", "must start with unix:// or tcp://"),
    ],
)
def test_malformed_daemon_addresses_are_refused_with_the_reason(raw: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_address(raw)


def test_the_start_up_node_list_is_one_change_for_every_node_that_differs() -> None:
    changes: list[set[str]] = []
    topology = Topology(DiscoverySettings(mode=DiscoveryMode.STATIC, static_nodes={"a": "unix:///a", "b": "unix:///b"}))
    topology.on_change = changes.append
    topology.apply_node("ADDED", {"metadata": {"name": "gone", "labels": {}}})
    changes.clear()

    topology.replace_nodes([{"metadata": {"name": "a", "labels": {"x": "1"}}}, {"metadata": {"name": "b"}}])

    assert changes == [{"a", "b", "gone"}]
    assert set(topology.ready_nodes()) == {"a", "b"}
