"""Finding the operator's control API from outside the cluster: its pod, and a port-forward to it.

The control API listens on the pod's loopback by default, so reaching it from a workstation is what
``kubectl port-forward`` does, with the same right (``create`` on ``pods/portforward`` in the
operator's namespace) and the same tunnel code the operator uses for the gadget daemons
(``daemon.portforward.PortForwarder``). Which pod:

1. the leader: the holder of the operator's Lease (``coordination.k8s.io/v1``, ``leadership``). Its
   holder identity is ``<pod name>_<random suffix>`` (``leadership.new_identity``), so the pod is the
   part before the last ``_``. It is taken when that pod is among the Running operator pods;
2. otherwise (a standalone operator has no Lease, the user may not read Leases, or the Lease names a
   pod that is gone): a Running operator pod, by the labels every install gives it, Ready ones first.

The port is the one in the pod's own ``--control-address`` (its ``GADGET_OPERATOR_CONTROL_ADDRESS``
variable or its arguments), else the operator's default.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from kubernetes.aio import client as kclient
from kubernetes.aio import config as kconfig

from gadget_operator import kube
from gadget_operator.control import client
from gadget_operator.daemon import portforward

DEFAULT_NAMESPACE = "gadget-operator-system"
"""Where the manifests (``manifests/base``) install the operator; the chart's default release namespace."""
DEFAULT_LEASE = "gadget-operator"
"""The Lease of ``--leader-elect`` (``gadget-operator run --lease-name``, the chart's leaderElection.leaseName)."""
DEFAULT_SELECTOR = "app.kubernetes.io/name=gadget-operator,app.kubernetes.io/component=operator"
"""The labels of the operator's pods in the manifests and the chart."""
DEFAULT_PORT = 50051
"""The port of ``gadget-operator run --control-address``'s default (``127.0.0.1:50051``, Skaffold's port)."""
ADDRESS_VARIABLE = "GADGET_OPERATOR_CONTROL_ADDRESS"
ADDRESS_FLAG = "--control-address"


class NotFound(client.ControlError):
    """No operator pod to talk to, or no way to look for one."""


class ClusterApi(Protocol):
    """The two reads discovery makes (``kube.KubeApi``)."""

    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def list_pods(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], str]: ...


@dataclass(frozen=True, slots=True)
class OperatorPod:
    namespace: str
    name: str
    port: int
    why: str
    """How it was chosen, for ``--verbose`` and error messages ("holds Lease ns/name", ...)."""

    @property
    def where(self) -> str:
        return f"pod {self.namespace}/{self.name} port {self.port} (port-forward)"


def pod_of_identity(identity: str) -> str:
    """The pod name in a leader-election identity (``<pod>_<suffix>``; a pod name never holds ``_``)."""
    pod, sep, _ = identity.rpartition("_")
    return pod if sep else identity


def control_port(pod: Mapping[str, Any], default: int = DEFAULT_PORT) -> int:
    """The port of the pod's ``--control-address`` (variable or argument), else ``default``.

    Raises ``NotFound`` when the pod turned the control API off (an empty address)."""
    address: str | None = None
    for container in (pod.get("spec") or {}).get("containers") or []:
        for variable in container.get("env") or []:
            if variable.get("name") == ADDRESS_VARIABLE and "value" in variable:
                address = str(variable["value"])
        args = [str(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        for index, arg in enumerate(args):
            if arg == ADDRESS_FLAG and index + 1 < len(args):
                address = args[index + 1]  # a flag beats the variable, as click reads them
            elif arg.startswith(ADDRESS_FLAG + "="):
                address = arg.removeprefix(ADDRESS_FLAG + "=")
    if address is None:
        return default
    if not address.strip():
        name = (pod.get("metadata") or {}).get("name", "")
        raise NotFound(f"the operator in pod {name} runs with its control API off ({ADDRESS_VARIABLE} is empty)")
    _, _, port = address.rpartition(":")
    return int(port) if port.isdigit() else default


def _running(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and not (pod.get("metadata") or {}).get(
        "deletionTimestamp"
    )


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def find_operator(
    api: ClusterApi,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    lease: str = DEFAULT_LEASE,
    selector: str = DEFAULT_SELECTOR,
    port: int | None = None,
) -> OperatorPod:
    """The pod to port-forward to: the Lease holder if it runs, else a Running operator pod."""
    try:
        pods, _ = await api.list_pods(namespace, selector)
    except kube.KubeApiError as error:
        raise NotFound(f"cannot list the operator's pods in namespace {namespace}: {error}") from None
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        raise client.Unreachable(f"cannot reach the Kubernetes API server: {error or type(error).__name__}") from None
    running = {pod["metadata"]["name"]: pod for pod in pods if _running(pod)}
    holder = ""
    with contextlib.suppress(kube.KubeApiError):  # no Lease (standalone), or not allowed to read it
        record = await api.get_lease(namespace, lease)
        holder = str(((record or {}).get("spec") or {}).get("holderIdentity") or "")
    chosen: Mapping[str, Any] | None = None
    why = ""
    if holder and pod_of_identity(holder) in running:
        chosen = running[pod_of_identity(holder)]
        why = f"holds Lease {namespace}/{lease}"
    elif running:
        chosen = sorted(running.values(), key=lambda p: (not _ready(p), p["metadata"]["name"]))[0]
        why = f"a Running pod labelled {selector}" + (
            f" (the Lease {namespace}/{lease} names {holder}, which is not one of them)" if holder else ""
        )
    if chosen is None:
        seen = f"; pods there: {', '.join(p['metadata']['name'] for p in pods)} (none Running)" if pods else ""
        raise NotFound(
            f"no Running operator pod in namespace {namespace} with labels {selector}{seen} "
            "(--operator-namespace and --selector say where to look; --address connects directly)"
        )
    name = chosen["metadata"]["name"]
    return OperatorPod(namespace, name, port if port is not None else control_port(chosen), why)


async def kube_api(kubeconfig: str | None = None, context: str | None = None) -> kube.KubeApi:
    """The user's API access: ``kubeconfig`` (else KUBECONFIG, else ~/.kube/config) and ``context``, or the
    pod's service account when run in a pod without either."""
    configuration = kclient.Configuration()
    try:
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kconfig.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await kconfig.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
    except Exception as error:  # ConfigException, a missing file, a bad YAML...
        detail = " ".join(str(error).split()) or type(error).__name__
        raise NotFound(f"no Kubernetes credentials: {detail} (--kubeconfig, --context, or --address)") from None
    return kube.KubeApi(configuration)


def current_namespace(kubeconfig: str | None = None, context: str | None = None) -> str | None:
    """The namespace of the kubeconfig's current context (or of ``context``), as kubectl uses it."""
    try:
        contexts, active = kconfig.list_kube_config_contexts(kubeconfig)  # type: ignore[no-untyped-call]
    except Exception:  # no kubeconfig at all: the caller's default applies
        return None
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


class _Tunnel:
    """The API server side of the forwarder's tunnels, keeping why the last one could not open."""

    def __init__(self, api: kube.KubeApi) -> None:
        self.api = api
        self.error: str | None = None

    async def open(self, namespace: str, pod: str, port: int) -> aiohttp.ClientWebSocketResponse:
        try:
            ws = await self.api.open_portforward(namespace, pod, port)
        except portforward.TunnelRefused as error:
            self.error = _refusal(namespace, pod, error.status, error.message)
            raise
        except aiohttp.ClientResponseError as error:
            self.error = _refusal(namespace, pod, error.status, error.message)
            raise
        except (aiohttp.ClientError, OSError) as error:
            self.error = f"cannot reach the Kubernetes API server: {error or type(error).__name__}"
            raise
        self.error = None
        return ws


def _refusal(namespace: str, pod: str, status: int, message: str) -> str:
    if status == 403:
        return f"port-forward refused by RBAC: {message} (you need create on pods/portforward in {namespace})"
    if status == 404:
        return f"pod {namespace}/{pod} not found (it may have just been replaced: try again)"
    return f"port-forward to {namespace}/{pod} failed: {message} (HTTP {status})"


@contextlib.asynccontextmanager
async def through_port_forward(
    api: kube.KubeApi,
    pod: OperatorPod,
    *,
    tls: client.ClientTLS | None = None,
    call_timeout: float = 10.0,
) -> AsyncIterator[client.GrpcControl]:
    """A gRPC client of the control API in ``pod``, through a local listener of a ``PortForwarder``."""
    tunnel = _Tunnel(api)
    forwarder = portforward.PortForwarder(
        tunnel.open,
        max_tunnels=4,
        idle_timeout=24 * 3600.0,  # only this command's own connection: never closed under it
        connect_timeout=call_timeout,
    )
    address = portforward.PodPort(pod.namespace, pod.name, pod.port).address
    local = forwarder.local_address(address).removeprefix("tcp://")

    def cause() -> str | None:
        return tunnel.error or _reworded(forwarder.last_error(address), pod)

    control = client.GrpcControl(local, tls=tls, timeout=call_timeout, where=pod.where, cause=cause)
    try:
        yield control
    finally:
        await control.close()
        await forwarder.close()


def _reworded(error: str | None, pod: OperatorPod) -> str | None:
    """The forwarder's words are about daemon pods; the kubelet's message about the port is what counts."""
    if error is None:
        return None
    if "error forwarding port" in error or "connection refused" in error:
        return f"{error} (is the control API listening on port {pod.port} in the pod? --port)"
    return error
