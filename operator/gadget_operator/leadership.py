"""Leader election with a ``coordination.k8s.io/v1`` Lease, as controller-runtime (client-go) does it.

Several replicas run; the one whose identity the Lease holds works, the others only watch. The
record is the Lease's spec (holderIdentity, leaseDurationSeconds, acquireTime, renewTime,
leaseTransitions), and every write is an optimistic-concurrency update (the resourceVersion read
before; a 409 means someone else wrote first), so two replicas can never both think they took it.

* A candidate takes the Lease when nobody holds it, or when the record it sees has not changed for
  ``lease_duration`` seconds of its *own* clock (clocks of different machines are never compared).
* The leader renews every ``retry_period``. It gives up when it cannot renew for ``renew_deadline``
  (shorter than ``lease_duration``, so it stops before anyone may take over), or at once when the Lease
  names another holder. Giving up is final: the caller stops all work (the operator exits, and
  Kubernetes restarts it as a standby), as controller-runtime does.
* A leader that stops cleanly releases the Lease (empty holder, 1 s duration): a standby takes over at
  its next attempt instead of after ``lease_duration``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from gadget_operator.kube import KubeApiError
from gadget_operator.settings import LeaderElectionSettings

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

_TRANSIENT = (KubeApiError, aiohttp.ClientError, OSError, TimeoutError)


class LeaseApi(Protocol):
    async def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def update_lease(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]: ...


def default_namespace(environ: Mapping[str, str] = os.environ, account_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """The pod's namespace: POD_NAMESPACE (downward API), else the service account's, else ``default``."""
    if environ.get("POD_NAMESPACE"):
        return environ["POD_NAMESPACE"]
    try:
        namespace = account_file.read_text().strip()
    except OSError:
        namespace = ""
    return namespace or "default"


def new_identity(environ: Mapping[str, str] = os.environ) -> str:
    """The pod name (HOSTNAME) and a random suffix, as controller-runtime's ``hostname_uuid``: two
    processes in one pod (a restart racing its predecessor) never share an identity."""
    host = environ.get("HOSTNAME") or socket.gethostname() or "gadget-operator"
    return f"{host}_{uuid.uuid4().hex[:12]}"


def micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    """One replica's side of the election over one Lease."""

    def __init__(
        self,
        api: LeaseApi,
        settings: LeaderElectionSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not settings.renew_deadline < settings.lease_duration:
            raise ValueError("the renew deadline must be shorter than the lease duration")
        if not settings.retry_period < settings.renew_deadline:
            raise ValueError("the retry period must be shorter than the renew deadline")
        self.api = api
        self.settings = settings
        self.identity = settings.identity
        self.clock = clock
        self.now = now
        self.leading = False
        self.holder = ""
        """The holder in the last record seen ('' when free or unknown)."""
        self._record: tuple[Any, ...] | None = None
        self._record_seen_at = 0.0
        self._resource_version = ""
        self._renewed_at = 0.0

    @property
    def where(self) -> str:
        return f"{self.settings.lease_namespace}/{self.settings.lease_name}"

    def _observe(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """Note the record and when this replica first saw it (its own clock); return the spec."""
        spec: dict[str, Any] = dict(lease.get("spec") or {})
        record = tuple(
            spec.get(k)
            for k in ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions")
        )
        if record != self._record:
            self._record, self._record_seen_at = record, self.clock()
        self._resource_version = str((lease.get("metadata") or {}).get("resourceVersion") or "")
        self.holder = str(spec.get("holderIdentity") or "")
        return spec

    def _body(self, spec: Mapping[str, Any], resource_version: str | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.settings.lease_name, "namespace": self.settings.lease_namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": dict(spec)}

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: True when this replica holds the Lease afterwards. API errors propagate, except
        the 409s of a lost race (someone else created or wrote it first), which answer False."""
        settings = self.settings
        now = micro_time(self.now())
        lease = await self.api.get_lease(settings.lease_namespace, settings.lease_name)
        if lease is None:
            fresh = {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": settings.lease_duration,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            }
            try:
                created = await self.api.create_lease(settings.lease_namespace, self._body(fresh, None))
            except KubeApiError as error:
                if error.status == 409:
                    return False
                raise
            self._observe(created)
            return True
        spec = self._observe(lease)
        duration = float(spec.get("leaseDurationSeconds") or settings.lease_duration)
        if self.holder and self.holder != self.identity and self.clock() < self._record_seen_at + duration:
            return False  # held by another replica, which renewed it within the lease duration
        taking = self.holder != self.identity
        spec |= {"holderIdentity": self.identity, "leaseDurationSeconds": settings.lease_duration, "renewTime": now}
        if taking:
            spec |= {"acquireTime": now, "leaseTransitions": int(spec.get("leaseTransitions") or 0) + 1}
        try:
            updated = await self.api.update_lease(
                settings.lease_namespace, settings.lease_name, self._body(spec, self._resource_version)
            )
        except KubeApiError as error:
            if error.status == 409:
                return False
            raise
        self._observe(updated)
        return True

    def _pause(self) -> float:
        """client-go's jitter: the retry period, plus up to 20% of it."""
        return self.settings.retry_period * (1 + 0.2 * random.random())

    async def acquire(self) -> None:
        """Return once this replica leads; retries every ``retry_period`` (cancel to give up)."""
        logger.info("leader election: waiting for lease %s as %s", self.where, self.identity)
        announced = ""
        while True:
            try:
                async with asyncio.timeout(self.settings.renew_deadline):
                    if await self.try_acquire_or_renew():
                        self.leading = True
                        self._renewed_at = self.clock()
                        logger.info("leader election: became the leader (lease %s, %s)", self.where, self.identity)
                        return
                if self.holder and self.holder != announced:
                    announced = self.holder
                    logger.info("leader election: lease %s is held by %s; standing by", self.where, self.holder)
            except _TRANSIENT as error:
                logger.warning("leader election: cannot read or take lease %s: %s", self.where, error)
            await asyncio.sleep(self._pause())

    async def hold(self) -> str:
        """Renew until leadership is lost; return why. Cancel to stop renewing (then ``release``)."""
        while True:
            await asyncio.sleep(self._pause())
            remaining = self._renewed_at + self.settings.renew_deadline - self.clock()
            error_text = ""
            renewed = False
            if remaining > 0:
                try:
                    async with asyncio.timeout(remaining):
                        renewed = await self.try_acquire_or_renew()
                except _TRANSIENT as error:
                    error_text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                    logger.warning("leader election: renewing lease %s failed: %s", self.where, error_text)
            if renewed:
                self._renewed_at = self.clock()
                continue
            if self.holder and self.holder != self.identity:
                self.leading = False
                return f"lease {self.where} is now held by {self.holder}"
            if self.clock() >= self._renewed_at + self.settings.renew_deadline:
                self.leading = False
                detail = f" (last error: {error_text})" if error_text else ""
                return f"could not renew lease {self.where} within {self.settings.renew_deadline:g}s{detail}"

    async def release(self) -> None:
        """Give the Lease up on a clean stop, if this replica still holds it; errors are only logged."""
        if not self.leading:
            return
        self.leading = False
        now = micro_time(self.now())
        record = self._record or ()
        transitions = record[4] if len(record) > 4 and record[4] is not None else 0
        spec = {
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        try:
            async with asyncio.timeout(max(1.0, self.settings.retry_period)):
                await self.api.update_lease(
                    self.settings.lease_namespace, self.settings.lease_name, self._body(spec, self._resource_version)
                )
            logger.info("leader election: released lease %s", self.where)
        except _TRANSIENT as error:
            logger.warning("leader election: could not release lease %s: %s", self.where, error)
