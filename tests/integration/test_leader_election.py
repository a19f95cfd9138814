"""High availability: several operator processes, one Lease (coordination.k8s.io/v1), one of them works.

Each replica is a real ``gadget-operator run --leader-elect`` process with its own HOSTNAME, so its
holder identity (``<HOSTNAME>_<random>``) names it in the Lease and in the User-Agent of its own API
calls. Each replica reaches the daemons through sockets of its own that forward to the simulated daemons
and count what passes, so a test knows which replica called a daemon.

The tests read the Lease and the GadgetInstances through the Kubernetes API, so they run against the
emulator and, with ``GADGET_E2E_KUBECONFIG``, against a real API server (in a namespace of their own,
which also holds the Lease). Those that read the emulator's request log (which replica wrote what) or
make it fail on purpose run against the emulator only.

Timings are short (a lease of a few seconds) so that takeovers are quick; the durations asserted are
generous bounds on what a user waits for, not benchmarks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig
from kubernetes.aio.client.exceptions import ApiException

from gadget_operator import identity, kube
from gadget_operator.daemon.client import DaemonPool
from gadget_operator.leadership import Elector, micro_time
from gadget_operator.settings import LeaderElectionSettings
from gadget_operator.simulator.configmap_store import ConfigMapStore
from gadget_operator.simulator.server import Fleet
from gadget_operator.testing.kube_emulator import WRITE_VERBS, KubeEmulator, RecordedRequest
from gadget_operator.testing.operator_process import OperatorProcess
from tests.integration.conftest import QUICK, api_server
from tests.integration.harness import (
    E2E_KUBECONFIG,
    Cluster,
    Nodes,
    emulator_client,
    eventually,
    load_crds,
)
from tests.packaging.conftest import HA_OVERLAY, k8s_binaries, load_documents, one, run

EMULATOR_ONLY_LOG = pytest.mark.skipif(
    bool(E2E_KUBECONFIG), reason="reads the emulator's request log (which replica made which API call)"
)

NODE_COUNT = 3
LEASE_NAME = "gadget-operator"
TIMINGS = ("--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5")
NO_PORTS = ("--liveness", "", "--metrics-port", "0")
FAST_TIMINGS = ("--lease-duration", "3", "--renew-deadline", "2", "--retry-period", "0.3")


# -- the set-up ----------------------------------------------------------------------------------------------


class Proxies:
    """One replica's own way to the daemons: a unix socket per node, forwarding to that node's daemon
    and counting the connections and bytes that pass."""

    def __init__(self, directory: Path, fleet: Fleet, tag: str) -> None:
        self.directory = directory
        self.fleet = fleet
        self.tag = tag
        self.connections = 0
        self.bytes = 0
        self._servers: list[asyncio.Server] = []
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> Path:
        addresses = {}
        for name, node in self.fleet.nodes.items():
            path = self.directory / f"{self.tag}-{name}.sock"
            target = node.address.removeprefix("unix://")

            async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str = target) -> None:
                task = asyncio.current_task()
                assert task is not None
                self._pipes.add(task)
                try:
                    await self._pipe(reader, writer, target)
                finally:
                    self._pipes.discard(task)

            self._servers.append(await asyncio.start_unix_server(accept, path=str(path)))
            addresses[name] = f"unix://{path}"
        static_nodes = self.directory / f"{self.tag}-nodes.yaml"
        static_nodes.write_text(yaml.safe_dump(addresses))
        return static_nodes

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_unix_connection(target)
        except OSError:
            writer.close()
            return

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    self.bytes += len(data)
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                sink.close()

        await asyncio.gather(copy(reader, upstream_writer), copy(upstream_reader, writer))

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()


@dataclass
class Replica:
    name: str
    """Its HOSTNAME: the holder identity and the User-Agent start with it."""
    process: OperatorProcess
    proxies: Proxies | None = None

    def holds(self, lease: dict[str, Any] | None) -> bool:
        holder = ((lease or {}).get("spec") or {}).get("holderIdentity") or ""
        return str(holder).startswith(f"{self.name}_")

    def requests(self, emulator: KubeEmulator) -> list[RecordedRequest]:
        """The API calls the operator made itself (its User-Agent names its identity)."""
        return [r for r in emulator.requests if f"({self.name}_" in r.user_agent]

    def writes(self, emulator: KubeEmulator, *, leases: bool = False) -> list[RecordedRequest]:
        return [r for r in self.requests(emulator) if r.verb in WRITE_VERBS and (leases or r.resource != "leases")]

    @property
    def alive(self) -> bool:
        process = self.process.process
        return process is not None and process.returncode is None


async def read_lease(cluster: Cluster, name: str = LEASE_NAME) -> dict[str, Any] | None:
    """The Lease in the test's namespace, as ``kubectl get lease -o yaml`` shows it (None: there is none)."""
    try:
        lease: dict[str, Any] = await cluster.custom.get_namespaced_custom_object(
            "coordination.k8s.io", "v1", cluster.namespace, "leases", name
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return lease


async def take_lease(cluster: Cluster, holder: str) -> None:
    """Make ``holder`` the Lease's holder, as another candidate would (an update at the resourceVersion read;
    again on a 409, when a renewal came first)."""
    while True:
        lease = await read_lease(cluster)
        assert lease is not None
        now = micro_time(datetime.now(UTC))
        lease["spec"] |= {"holderIdentity": holder, "acquireTime": now, "renewTime": now}
        try:
            await cluster.custom.replace_namespaced_custom_object(
                "coordination.k8s.io", "v1", cluster.namespace, "leases", LEASE_NAME, lease
            )
            return
        except ApiException as error:
            if error.status != 409:
                raise


async def lease_api(cluster: Cluster) -> kube.KubeApi:
    """The operator's own API client (what its elector uses), for the test's API server."""
    if cluster.server:
        return await kube.KubeApi.connect(cluster.server)
    configuration = kclient.Configuration()
    await kconfig.load_kube_config(config_file=cluster.kubeconfig, client_configuration=configuration)
    return kube.KubeApi(configuration)


@dataclass
class HA:
    cluster: Cluster
    emulator: KubeEmulator | None
    fleet: Fleet
    nodes: Nodes
    directory: Path
    static_nodes: Path
    replicas: list[Replica] = field(default_factory=list)

    async def start(
        self,
        name: str,
        *extra: str,
        proxied: bool = False,
        timings: Sequence[str] = TIMINGS,
        kubeconfig: str | None = None,
    ) -> Replica:
        """A replica; ``kubeconfig``: its own credentials on a real API server (default: the test's)."""
        proxies = Proxies(self.directory, self.fleet, name) if proxied else None
        static_nodes = await proxies.start() if proxies is not None else self.static_nodes
        process = OperatorProcess(
            static_nodes,
            kube_server=self.cluster.server,
            kubeconfig=kubeconfig or self.cluster.kubeconfig,
            log_dir=self.directory,
            extra_args=[
                "--daemon-store",
                "per-node",
                "--namespace",
                self.cluster.namespace,
                *QUICK,
                *("--leader-elect", "--lease-namespace", self.cluster.namespace),
                *timings,
                *extra,
            ],
        )
        replica = Replica(name, process, proxies)
        self.replicas.append(replica)
        previous = os.environ.get("HOSTNAME")
        os.environ["HOSTNAME"] = name  # the child's environment is copied when it is spawned, in start()
        try:
            await process.start()
        finally:
            if previous is None:
                os.environ.pop("HOSTNAME", None)
            else:
                os.environ["HOSTNAME"] = previous
        return replica

    @property
    def lease_path(self) -> str:
        """How the operator names its Lease in its log: ``<namespace>/<name>``."""
        return f"{self.cluster.namespace}/{LEASE_NAME}"

    async def lease(self) -> dict[str, Any] | None:
        return await read_lease(self.cluster)

    async def leader(self, *, within: float = 20.0) -> Replica:
        """The live replica that holds the Lease (waits until one does)."""
        seen: list[dict[str, Any] | None] = [None]

        async def probe() -> Replica | None:
            seen[0] = lease = await self.lease()
            return next((r for r in self.replicas if r.alive and r.holds(lease)), None)

        return await eventually(probe, within=within, what=f"a live replica holds the lease: {seen}")

    def logs(self) -> str:
        return "\n".join(f"==== {r.name}\n{r.process.logs()[-8000:]}" for r in self.replicas)


@contextlib.asynccontextmanager
async def ha_cluster() -> AsyncIterator[HA]:
    """The API server with the CRD (the emulator, or a namespace of the real one), three simulated standalone
    daemons (per-node store) and their Nodes, no operator yet."""
    async with api_server() as (cluster, emulator):
        directory = Path(tempfile.mkdtemp(prefix="ha-"))
        fleet = Fleet(directory, stored=False)
        pool = DaemonPool(timeout=2.0)
        ha = HA(cluster, emulator, fleet, Nodes(fleet, pool), directory, directory / "nodes.yaml")
        try:
            await fleet.start(NODE_COUNT, prefix=cluster.node_prefix)
            for name in fleet.nodes:
                await cluster.add_node(name)
            fleet.write_static_nodes(ha.static_nodes)
            yield ha
        finally:
            for replica in ha.replicas:
                await replica.process.kill()
                if replica.proxies is not None:
                    await replica.proxies.stop()
            if E2E_KUBECONFIG:  # no operator left to release the finalizers: drop them, or the namespace stays
                await drop_finalizers(cluster)
            await pool.close()
            await fleet.stop()
            shutil.rmtree(directory, ignore_errors=True)


async def drop_finalizers(cluster: Cluster) -> None:
    listed = await cluster.custom.list_namespaced_custom_object(
        "gadget-operator.io", "v1alpha1", cluster.namespace, "gadgetinstances"
    )
    for item in listed["items"]:
        with contextlib.suppress(ApiException):
            await cluster.custom.patch_namespaced_custom_object(
                "gadget-operator.io",
                "v1alpha1",
                cluster.namespace,
                "gadgetinstances",
                item["metadata"]["name"],
                {"metadata": {"finalizers": None}},
                _content_type="application/merge-patch+json",
            )


@pytest.fixture
async def ha() -> AsyncIterator[HA]:
    async with ha_cluster() as test_ha:
        yield test_ha


def daemon_calls(fleet: Fleet) -> collections.Counter[str]:
    calls: collections.Counter[str] = collections.Counter()
    for node in fleet.nodes.values():
        calls.update(node.calls)
    return calls


async def settled(ha: HA, live: dict[str, int], gone: set[str]) -> str | None:
    """None when every resource in ``live`` (name -> logLevel) is Running at its generation with exactly
    one instance of its current spec on every node, every name in ``gone`` is deleted, and no node runs
    an instance of a resource that does not exist (an orphan); else what is still wrong."""
    uids: dict[str, str] = {}
    for name in live:
        body = await ha.cluster.get(name)
        if body is None:
            return f"{name} is missing"
        status = body.get("status") or {}
        if status.get("observedGeneration") != body["metadata"]["generation"] or status.get("phase") != "Running":
            return f"{name}: {status.get('phase')} at generation {status.get('observedGeneration')}"
        if (status.get("desiredNodes"), status.get("runningNodes")) != (NODE_COUNT, NODE_COUNT):
            return f"{name}: {status.get('ready')}"
        uids[body["metadata"]["uid"]] = name
    for name in gone:
        if await ha.cluster.get(name) is not None:
            return f"{name} is not deleted yet"
    for node_name, node in ha.fleet.nodes.items():
        owners: collections.Counter[str] = collections.Counter()
        for instance in node.running().values():
            owner = identity.parse_ownership(instance.tags)
            if owner is None:
                continue
            if owner.resource_uid not in uids:
                return f"{node_name}: orphan {instance.name} of {owner.resource}"
            owners[owner.resource_uid] += 1
            wanted = live[uids[owner.resource_uid]]
            if instance.log_level != wanted:
                return f"{node_name}: {instance.name} has logLevel {instance.log_level}, not {wanted}"
        for uid, name in uids.items():
            if owners[uid] != 1:
                return f"{node_name}: {owners[uid]} instances of {name}"
    return None


async def wait_settled(ha: HA, live: dict[str, int], gone: Collection[str] = (), *, within: float = 30.0) -> None:
    last: list[str | None] = [None]

    async def probe() -> bool:
        last[0] = await settled(ha, live, set(gone))
        return last[0] is None

    try:
        await eventually(probe, within=within, what="one instance per node and resource, no orphan, Running")
    except AssertionError as error:
        raise AssertionError(f"{error}\nstill: {last[0]}\n{ha.logs()}") from None


# -- the elector itself, against the API server ---------------------------------------------------------------


def elector_settings(cluster: Cluster, name: str, **overrides: Any) -> LeaderElectionSettings:
    base = LeaderElectionSettings(
        enabled=True, lease_namespace=cluster.namespace, identity=f"{name}_x", lease_duration=4, renew_deadline=3
    )
    return dataclasses.replace(base, **overrides)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_candidates_racing_for_the_lease_elect_exactly_one(cluster: tuple[Cluster, KubeEmulator | None]) -> None:
    server = cluster[0]
    apis = [await lease_api(server) for _ in range(4)]
    try:
        clock = Clock()
        electors = [Elector(api, elector_settings(server, f"c{i}"), clock=clock) for i, api in enumerate(apis)]
        for _ in range(3):  # the first attempt races on create, later ones on update
            won = await asyncio.gather(*(e.try_acquire_or_renew() for e in electors))
            holder = (await read_lease(server))["spec"]["holderIdentity"]  # type: ignore[index]
            assert sum(won) == 1, won
            assert electors[won.index(True)].identity == holder
        leader = electors[won.index(True)]
        others = [e for e in electors if e is not leader]
        # The standbys take over only once the record has not changed for the lease duration, on their clock.
        assert not any(await asyncio.gather(*(e.try_acquire_or_renew() for e in others)))  # they see the last renewal
        clock.now += 3.9
        assert not any(await asyncio.gather(*(e.try_acquire_or_renew() for e in others)))
        clock.now += 0.2
        won = await asyncio.gather(*(e.try_acquire_or_renew() for e in others))
        assert sum(won) == 1
        lease = await read_lease(server)
        assert lease is not None
        assert lease["spec"]["leaseTransitions"] == 1
        # The old leader sees another holder: it has lost, at once.
        leader.leading = True
        leader._renewed_at = clock.now
        reason = await asyncio.wait_for(leader.hold(), 5)
        assert "is now held by c" in reason
        assert not leader.leading
    finally:
        for api in apis:
            await api.close()


async def test_a_released_lease_is_taken_at_once(cluster: tuple[Cluster, KubeEmulator | None]) -> None:
    server = cluster[0]
    first, second = await lease_api(server), await lease_api(server)
    try:
        a = Elector(first, elector_settings(server, "a", retry_period=0.1))
        b = Elector(second, elector_settings(server, "b", retry_period=0.1))
        await asyncio.wait_for(a.acquire(), 5)
        assert not await b.try_acquire_or_renew()
        await a.release()
        lease = await read_lease(server)
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == ""
        await asyncio.wait_for(b.acquire(), 5)  # no lease duration to wait for
        assert (await read_lease(server))["spec"]["holderIdentity"] == "b_x"  # type: ignore[index]
    finally:
        await first.close()
        await second.close()


# -- two replicas ---------------------------------------------------------------------------------------------


async def two_replicas_at_work(ha: HA) -> tuple[Replica, Replica]:
    """A leader and a standby, each with its own way to the daemons; resources applied, changed and deleted
    (each time until every node runs what it should), then one more drift check of the leader."""
    first = await ha.start("replica-a", proxied=True)
    assert await ha.leader() is first
    second = await ha.start("replica-b", proxied=True)
    await ha.cluster.apply("everywhere", {"image": "trace_exec"})
    await ha.cluster.apply("verbose", {"image": "trace_exec", "logLevel": 2})
    await wait_settled(ha, {"everywhere": 0, "verbose": 2})
    await ha.cluster.patch_spec("verbose", {"logLevel": 3})
    await ha.cluster.delete("everywhere")
    await wait_settled(ha, {"verbose": 3}, {"everywhere"})
    assert first.proxies is not None
    # The leader goes on with its drift checks (every second) while the standby keeps standing by.
    seen = first.proxies.bytes

    async def resynced() -> bool:
        return first.proxies is not None and first.proxies.bytes > seen

    await eventually(resynced, what="the leader's next drift check")
    assert await ha.leader() is first
    return first, second


async def test_two_replicas_only_the_leader_calls_daemons(ha: HA) -> None:
    first, second = await two_replicas_at_work(ha)
    assert first.proxies is not None
    assert second.proxies is not None
    assert first.proxies.connections > 0
    assert (second.proxies.connections, second.proxies.bytes) == (0, 0), "the standby called a daemon"
    # Both replicas are alive: the standby waits, it does not crash-loop.
    assert first.alive
    assert second.alive


@EMULATOR_ONLY_LOG
async def test_two_replicas_only_the_leader_writes(ha: HA) -> None:
    first, second = await two_replicas_at_work(ha)
    assert ha.emulator is not None
    assert second.writes(ha.emulator, leases=True) == [], "the standby wrote"
    assert {r.resource for r in second.requests(ha.emulator)} <= {"leases", "nodes", None}
    assert first.writes(ha.emulator), "the leader wrote nothing"
    assert {(r.resource, r.subresource) for r in first.writes(ha.emulator)} >= {
        ("gadgetinstances", None),
        ("gadgetinstances", "status"),
    }
    kopf_writes = [r for r in ha.emulator.requests if r.user_agent.startswith("kopf/") and r.verb in WRITE_VERBS]
    assert kopf_writes == []


async def test_the_leader_killed_the_standby_takes_over_within_the_lease_duration(ha: HA) -> None:
    first = await ha.start("replica-a", proxied=True)
    assert await ha.leader() is first
    second = await ha.start("replica-b", proxied=True)
    await ha.cluster.apply("trace", {"image": "trace_exec"})
    await ha.cluster.apply("other", {"image": "trace_exec", "logLevel": 1})
    await wait_settled(ha, {"trace": 0, "other": 1})
    assert second.proxies is not None
    assert second.proxies.connections == 0

    await first.process.kill()
    killed = time.monotonic()
    assert await ha.leader(within=15) is second
    takeover = time.monotonic() - killed
    assert takeover < 15, f"took {takeover:.1f}s"
    # The new leader works: what changed while nobody led, and what changes now.
    await ha.cluster.patch_spec("other", {"logLevel": 4})
    await ha.cluster.apply("late", {"image": "trace_exec"})
    # Running at the new generation, with what each node runs: written by the new leader, the only one alive.
    await wait_settled(ha, {"trace": 0, "other": 4, "late": 0})
    assert second.proxies.connections > 0
    await ha.cluster.delete("trace")
    await wait_settled(ha, {"other": 4, "late": 0}, {"trace"})


async def test_a_leader_that_stops_cleanly_hands_over_at_once(ha: HA) -> None:
    first = await ha.start("replica-a", "--lease-duration", "30", "--renew-deadline", "20")
    assert await ha.leader() is first
    second = await ha.start("replica-b", "--lease-duration", "30", "--renew-deadline", "20")
    await ha.cluster.apply("trace", {"image": "trace_exec"})
    await wait_settled(ha, {"trace": 0})
    assert await first.process.stop() == 0
    lease = await ha.lease()
    assert lease is not None
    # Released (or already taken by the standby): no 30 s wait for the next leader.
    assert lease["spec"]["holderIdentity"] == "" or second.holds(lease)
    assert await ha.leader(within=10) is second
    await ha.cluster.patch_spec("trace", {"logLevel": 5})
    await wait_settled(ha, {"trace": 5})


# -- losing the lease -----------------------------------------------------------------------------------------


async def lose_the_lease(ha: HA) -> Replica:
    """A leader at work whose Lease another candidate takes (as after a partition the leader did not
    notice); returns once the leader has exited, as it must, with 1."""
    leader = await ha.start("replica-a", proxied=True)
    assert await ha.leader() is leader
    await ha.cluster.apply("trace", {"image": "trace_exec"})
    await wait_settled(ha, {"trace": 0})
    process = leader.process.process
    assert process is not None
    await take_lease(ha.cluster, "someone-else")
    code = await asyncio.wait_for(process.wait(), 10)
    assert code == 1
    return leader


async def test_a_leader_whose_lease_is_taken_stops_at_once(ha: HA) -> None:
    leader = await lose_the_lease(ha)
    assert f"lost leadership (lease {ha.lease_path} is now held by someone-else); exiting" in leader.process.logs()
    assert leader.proxies is not None
    calls, passed = daemon_calls(ha.fleet), leader.proxies.bytes
    # Its drift checks ran every second; after the loss, not one more daemon call.
    await asyncio.sleep(3)
    assert (daemon_calls(ha.fleet), leader.proxies.bytes) == (calls, passed)
    assert (await ha.lease())["spec"]["holderIdentity"] == "someone-else"  # type: ignore[index]


@EMULATOR_ONLY_LOG
async def test_a_leader_whose_lease_is_taken_writes_nothing_after(ha: HA) -> None:
    leader = await lose_the_lease(ha)
    assert ha.emulator is not None
    requests = ha.emulator.requests
    # The test's own update of the Lease (the official client's User-Agent) is when it was lost.
    taken_at = max(
        i
        for i, r in enumerate(requests)
        if r.resource == "leases" and r.verb == "update" and r.user_agent.startswith("OpenAPI-Generator/")
    )
    late_writes = [r for r in leader.writes(ha.emulator) if requests.index(r) > taken_at]
    assert late_writes == []


@pytest.mark.skipif(bool(E2E_KUBECONFIG), reason="makes the emulator refuse the renewals")
async def test_a_leader_that_cannot_renew_stops_within_the_renew_deadline(ha: HA) -> None:
    leader = await ha.start("replica-a")
    assert await ha.leader() is leader
    await ha.cluster.apply("trace", {"image": "trace_exec"})
    await wait_settled(ha, {"trace": 0})
    assert ha.emulator is not None
    ha.emulator.deny("update", "leases")  # the renewals fail (the API server refuses, or cannot be reached)
    process = leader.process.process
    assert process is not None
    code = await asyncio.wait_for(process.wait(), 10)
    assert code == 1
    logs = leader.process.logs()
    assert f"lost leadership (could not renew lease {ha.lease_path} within 3s" in logs


# -- the shipped RBAC, where it is enforced ---------------------------------------------------------------------

HA_RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def ha_overlay_rbac(namespace: str) -> list[dict[str, Any]]:
    """The ServiceAccount and RBAC objects ``kubectl kustomize manifests/overlays/ha`` renders, moved into the
    test's namespace (which stands for gadget-operator-system, where the Lease is, and for IG's namespace
    `gadget`, where the shared store is); cluster-wide objects get names of their own."""
    binaries = k8s_binaries.ensure()
    rendered = load_documents(run([binaries["kubectl"], "kustomize", str(HA_OVERLAY)]).stdout)
    # The roles to hand out to users (user-roles.yaml) are bound to nobody: not the operator's.
    bound = {o["roleRef"]["name"] for o in rendered if o["kind"] in ("ClusterRoleBinding", "RoleBinding")}
    objects = []
    for obj in rendered:
        if obj["kind"] not in HA_RBAC_KINDS or (obj["kind"] == "ClusterRole" and obj["metadata"]["name"] not in bound):
            continue
        if obj["kind"].startswith("Cluster"):
            obj["metadata"]["name"] = f"{namespace}-{obj['metadata']['name']}"
        else:
            obj["metadata"]["namespace"] = namespace
        if obj["kind"] == "ClusterRoleBinding":
            obj["roleRef"]["name"] = f"{namespace}-{obj['roleRef']['name']}"
        for subject in obj.get("subjects", []):
            subject["namespace"] = namespace
        objects.append(obj)
    assert sorted(o["kind"] for o in objects) == sorted([*HA_RBAC_KINDS, "Role", "RoleBinding"])
    return objects


async def create_rbac(cluster: Cluster, obj: dict[str, Any]) -> None:
    rbac = kclient.RbacAuthorizationV1Api(cluster.api)
    namespace = obj["metadata"].get("namespace", "")
    create = {
        "ServiceAccount": lambda: cluster.core.create_namespaced_service_account(namespace, obj),
        "ClusterRole": lambda: rbac.create_cluster_role(obj),
        "ClusterRoleBinding": lambda: rbac.create_cluster_role_binding(obj),
        "Role": lambda: rbac.create_namespaced_role(namespace, obj),
        "RoleBinding": lambda: rbac.create_namespaced_role_binding(namespace, obj),
    }[obj["kind"]]
    await create()


def token_kubeconfig(source: str, token: str, path: Path) -> str:
    """A kubeconfig for the same API server as ``source``, that authenticates with ``token`` only."""
    config = yaml.safe_load(Path(source).read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])["context"]
    server = dict(next(c for c in config["clusters"] if c["name"] == context["cluster"])["cluster"])
    authority = server.get("certificate-authority")
    if authority:
        server["certificate-authority"] = str(Path(source).parent / authority)
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "e2e", "cluster": server}],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [{"name": "operator", "context": {"cluster": "e2e", "user": "operator"}}],
                "current-context": "operator",
            }
        )
    )
    return str(path)


@pytest.mark.skipif(not E2E_KUBECONFIG, reason="RBAC is enforced by a real API server only (not by the emulator)")
async def test_with_the_ha_overlays_rbac_two_replicas_elect_a_leader_that_works() -> None:
    """Replicas that authenticate as the overlay's ServiceAccount, with exactly its rules: they elect a leader,
    which makes every resource Running, with no call refused; without the Lease's Role, the leader can no
    longer renew and exits, and nobody can take over until the Role is bound again."""
    async with api_server() as (cluster, _):
        namespace = cluster.namespace
        objects = ha_overlay_rbac(namespace)
        rbac = kclient.RbacAuthorizationV1Api(cluster.api)
        directory = Path(tempfile.mkdtemp(prefix="ha-rbac-"))
        fleet = Fleet(directory, stored=False, shared_store=ConfigMapStore(cluster.api, namespace))
        pool = DaemonPool(timeout=2.0)
        ha = HA(cluster, None, fleet, Nodes(fleet, pool), directory, directory / "nodes.yaml")
        try:
            for obj in objects:
                await create_rbac(cluster, obj)
            account = one(objects, "ServiceAccount")["metadata"]["name"]
            request: Any = {"spec": {"expirationSeconds": 3600}}
            issued = await cluster.core.create_namespaced_service_account_token(account, namespace, request)
            assert issued.status is not None
            assert E2E_KUBECONFIG is not None
            kubeconfig = token_kubeconfig(E2E_KUBECONFIG, issued.status.token, directory / "operator.kubeconfig")
            await fleet.start(NODE_COUNT, prefix=cluster.node_prefix)
            for name in fleet.nodes:
                await cluster.add_node(name)
            fleet.write_static_nodes(ha.static_nodes)
            # IG's DaemonSet (the overlay's set-up): its store is ConfigMaps, which the operator only watches.
            shared = ("--daemon-store", "shared", "--daemon-namespace", namespace)

            first = await ha.start("replica-a", *shared, kubeconfig=kubeconfig)
            assert await ha.leader() is first
            second = await ha.start("replica-b", *shared, kubeconfig=kubeconfig)
            await cluster.apply("trace", {"image": "trace_exec"})
            await wait_settled(ha, {"trace": 0})
            for replica in ha.replicas:
                assert "forbidden" not in replica.process.logs().lower(), replica.process.logs()

            lease_role = one(objects, "RoleBinding", "gadget-operator-leader-election")
            await rbac.delete_namespaced_role_binding(lease_role["metadata"]["name"], namespace)
            process = first.process.process
            assert process is not None
            assert await asyncio.wait_for(process.wait(), 15) == 1
            logs = first.process.logs()
            # Its renewals were refused (RBAC), and it stopped once it could not renew for the renew deadline.
            assert f"renewing lease {ha.lease_path} failed: KubeApiError: 403: " in logs
            assert f"lost leadership (could not renew lease {ha.lease_path} within 3s" in logs

            # The standby's attempts are refused too: it stays alive, standing by, and the Lease is unchanged.
            async def refused() -> bool:
                return f"cannot read or take lease {ha.lease_path}: 403: " in second.process.logs()

            await eventually(refused, what="the standby's attempt refused")
            assert first.holds(await ha.lease())
            assert second.alive

            await create_rbac(cluster, dict(lease_role))
            assert await ha.leader(within=20) is second
            await cluster.patch_spec("trace", {"logLevel": 2})
            await wait_settled(ha, {"trace": 2})
        finally:
            for replica in ha.replicas:
                await replica.process.kill()
            await drop_finalizers(cluster)
            await pool.close()
            await fleet.stop()
            shutil.rmtree(directory, ignore_errors=True)
            for obj in objects:
                with contextlib.suppress(ApiException):
                    if obj["kind"] == "ClusterRole":
                        await rbac.delete_cluster_role(obj["metadata"]["name"])
                    elif obj["kind"] == "ClusterRoleBinding":
                        await rbac.delete_cluster_role_binding(obj["metadata"]["name"])


# -- kill the leader at random points, again and again --------------------------------------------------------

ACTIONS = ("apply", "change", "delete", "none")
DELAYS = (0.0, 0.05, 0.3, 1.0)
KILLS = 20


def plan_of(drawn: Sequence[tuple[int, int]]) -> list[tuple[str, float]]:
    """Step i: what happens before the kill (apply a resource, change one's spec, delete one, nothing),
    and how long after it the leader dies. Drawn values are offsets from a cycle through every
    (action, delay) pair, so that even the simplest example (all zeros, which hypothesis tries first)
    kills at every kind of point, and shrinking still leads to a simpler plan."""
    return [
        (ACTIONS[(a + i) % len(ACTIONS)], DELAYS[(d + i // len(ACTIONS)) % len(DELAYS)])
        for i, (a, d) in enumerate(drawn)
    ]


offsets = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=KILLS, max_size=KILLS)


@pytest.mark.timeout(400)
@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(drawn=offsets, seed=st.integers(0, 2**16))
def test_killing_the_leader_at_random_points_leaves_no_duplicate_and_no_orphan(
    drawn: list[tuple[int, int]], seed: int
) -> None:
    asyncio.run(kill_leaders(plan_of(drawn), seed))


async def kill_leaders(plan: list[tuple[str, float]], seed: int) -> None:
    async with ha_cluster() as ha:
        live: dict[str, int] = {}
        gone: set[str] = set()
        count = 0
        await ha.start("r0", timings=FAST_TIMINGS)
        await ha.start("r1", timings=FAST_TIMINGS)
        for index, (action, delay) in enumerate(plan):
            leader = await ha.leader()
            if action == "apply" or (action != "none" and not live):
                count += 1
                name = f"gi-{count}"
                await ha.cluster.apply(name, {"image": "trace_exec", "logLevel": count % 3})
                live[name] = count % 3
            elif action == "change":
                name = sorted(live)[(seed + index) % len(live)]
                live[name] = (live[name] + 1) % 6
                await ha.cluster.patch_spec(name, {"logLevel": live[name]})
            elif action == "delete":
                name = sorted(live)[(seed + index) % len(live)]
                del live[name]
                gone.add(name)
                await ha.cluster.delete(name)
            await asyncio.sleep(delay)  # the random point, after the change, at which the leader dies
            await leader.process.kill()
            await ha.start(f"r{len(ha.replicas)}", timings=FAST_TIMINGS)  # Kubernetes restarts the pod
        await ha.leader()
        await wait_settled(ha, live, gone, within=60)
        # The operators' view agrees with the daemons': each node runs exactly one instance per resource.
        for node in ha.fleet.nodes:
            listed = await ha.nodes.instances(node)
            owners = collections.Counter(
                o.resource_uid for i in listed if (o := identity.parse_ownership(i.tags)) is not None
            )
            assert set(owners.values()) <= {1}
            assert len(owners) == len(live)


# -- starting -------------------------------------------------------------------------------------------------


def test_no_credentials_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    empty = tmp_path / "kubeconfig"
    empty.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    env |= {"KUBECONFIG": str(empty), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "gadget_operator", "run", "--liveness", "", "--metrics-port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: no Kubernetes credentials (in-cluster or kubeconfig): ConfigException:")


def test_an_unreachable_api_server_is_one_line_and_a_non_zero_exit() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        result = subprocess.run(
            [sys.executable, "-m", "gadget_operator", "run", "--kube-server", f"http://127.0.0.1:{port}", *NO_PORTS],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: cannot reach the Kubernetes API server at http://127.0.0.1:{port}:")


@pytest.mark.skipif(
    bool(E2E_KUBECONFIG),
    reason="needs an API server without the CRD (on a shared cluster, removing it would delete every GadgetInstance)",
)
async def test_a_start_before_the_crd_waits_for_it_then_works() -> None:
    emulator = KubeEmulator()
    url = await emulator.start()
    api = emulator_client(url)
    directory = Path(tempfile.mkdtemp(prefix="crd-"))
    fleet = Fleet(directory, stored=False)
    operator: OperatorProcess | None = None
    try:
        await fleet.start(2, prefix="node-")
        cluster = Cluster(api, "default", node_prefix="node-", server=url)
        for name in fleet.nodes:
            await cluster.add_node(name)
        operator = OperatorProcess(
            fleet.write_static_nodes(directory / "nodes.yaml"),
            kube_server=url,
            log_dir=directory,
            extra_args=["--namespace", "default", "--resync-interval", "1"],
        )
        starting = asyncio.create_task(operator.start(within=60))

        def waiting_for(plural: str) -> Callable[[], Awaitable[bool]]:
            async def waiting() -> bool:
                assert operator is not None
                return f"waiting for CRD {plural}.gadget-operator.io" in operator.logs()

            return waiting

        gadget_instances, cluster_gadget_instances = load_crds()
        await eventually(waiting_for("gadgetinstances"), what="the operator says it waits for the CRD")
        assert not starting.done()
        emulator.register_crd(gadget_instances)
        await eventually(waiting_for("clustergadgetinstances"), what="then it waits for the cluster-scoped one")
        assert not starting.done()
        emulator.register_crd(cluster_gadget_instances)
        await starting
        await cluster.apply("trace", {"image": "trace_exec"})
        await cluster.wait_phase("trace", "Running")
        assert operator.logs().count("waiting for CRD") == 2
    finally:
        if operator is not None:
            await operator.stop()
        await fleet.stop()
        await api.close()
        await emulator.stop()
        shutil.rmtree(directory, ignore_errors=True)
