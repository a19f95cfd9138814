"""Who the operator speaks as to the gadget daemons, under Inspektor Gadget's multi-tenancy.

IG's experimental multi-tenancy (inspektor-gadget.md, "Who may trace what") authenticates every gRPC
call by a ServiceAccount token for the audience ``inspektor-gadget`` and narrows what the call may
trace to the namespaces that account may access. The operator then starts each instance as its resource's
tenant: the calls that create and probe a GadgetInstance's instances in namespace ``team-a`` carry a
token of the ServiceAccount ``team-a/<tenant account>``, so the daemon checks the tenant's rights, not
the operator's (defence in depth: the operator confines the resource too, ``tenancy``). Everything
else carries a token of the operator's own ServiceAccount: listing a node, ClusterGadgetInstances, dry
runs (IG reads an image's info outside any namespace scope) and removals. A removal only ever stops
tracing, and must not depend on the tenant: deleting a namespace deletes its ServiceAccounts before
the operator's finalizer lets its GadgetInstances go.

Tokens are short-lived (TokenRequest), kept in memory only, renewed before they expire, and never
logged (``IssuedToken`` hides its value from ``repr``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gadget_operator import errors

logger = logging.getLogger(__name__)

AUDIENCE = "inspektor-gadget"
"""The audience IG's daemons review tokens for; a token for another audience is refused."""

MIN_LIFETIME = 600
"""The API server refuses shorter TokenRequests (``expirationSeconds`` below 10 minutes)."""
RENEW_AT = 0.8
"""A token is renewed once this share of its lifetime has passed, like the kubelet renews projected tokens."""
RETRY_AFTER = 10.0
"""Seconds a failed TokenRequest is remembered, so a missing ServiceAccount costs one request per
interval, not one per daemon call."""


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> ServiceAccount:
        """``namespace/name``, as the flag takes it."""
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ValueError(f"{text!r}: expected NAMESPACE/NAME")
        return cls(namespace, name)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str = field(repr=False)
    expires: float
    """When the token expires, in seconds since the epoch (the API server's ``expirationTimestamp``)."""


RequestToken = Callable[[ServiceAccount, str, int], Awaitable[IssuedToken]]
"""TokenRequest: (account, audience, lifetime in seconds) -> the token; raises with the API's message."""


class TokenUnavailable(errors.CallerRefused):
    """No token could be had for the account that must make a daemon call: nothing was sent."""


@dataclass(slots=True)
class _Entry:
    token: str = field(default="", repr=False)
    renew_at: float = 0.0
    expires: float = 0.0
    failure: str = ""
    retry_at: float = 0.0
    pending: asyncio.Future[str] | None = None


class TokenSource:
    """The token to send for a resource's namespace (None: the operator's own), cached and renewed."""

    def __init__(
        self,
        request: RequestToken,
        *,
        operator: ServiceAccount,
        tenant_account: str,
        lifetime: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lifetime < MIN_LIFETIME:
            raise ValueError(f"token lifetime must be at least {MIN_LIFETIME} seconds, not {lifetime}")
        self._request = request
        self.operator = operator
        self.tenant_account = tenant_account
        self.lifetime = lifetime
        self._clock = clock
        self._entries: dict[ServiceAccount, _Entry] = {}

    def account_for(self, namespace: str | None) -> ServiceAccount:
        return self.operator if namespace is None else ServiceAccount(namespace, self.tenant_account)

    async def token(self, namespace: str | None) -> str:
        """A valid token of ``account_for(namespace)``; one TokenRequest at a time per account."""
        account = self.account_for(namespace)
        entry = self._entries.setdefault(account, _Entry())
        now = self._clock()
        if entry.failure and now < entry.retry_at:
            if entry.token and now < entry.expires:
                return entry.token  # a renewal failed: the current token serves until it expires
            raise TokenUnavailable(entry.failure)
        if entry.token and now < entry.renew_at:
            return entry.token
        if entry.pending is None:
            entry.pending = asyncio.ensure_future(self._renew(account, entry))
        return await asyncio.shield(entry.pending)

    async def _renew(self, account: ServiceAccount, entry: _Entry) -> str:
        try:
            issued = await self._request(account, AUDIENCE, self.lifetime)
        except Exception as error:  # the API's refusal, whatever its type: it becomes the status message
            now = self._clock()
            entry.failure = _unavailable(account, error)
            entry.retry_at = now + RETRY_AFTER
            if entry.token and now < entry.expires:
                logger.warning(
                    "renewing the token of %s failed, the current one serves until it expires: %s", account, error
                )
                return entry.token
            entry.token = ""
            raise TokenUnavailable(entry.failure) from error
        finally:
            entry.pending = None
        now = self._clock()
        entry.token, entry.expires, entry.failure = issued.token, issued.expires, ""
        entry.renew_at = now + max(0.0, issued.expires - now) * RENEW_AT
        return issued.token


def _unavailable(account: ServiceAccount, error: BaseException) -> str:
    return (
        f"no token for ServiceAccount {account} (audience {AUDIENCE}): {error}. The gadget daemons run "
        f"Inspektor Gadget's multi-tenancy: create that ServiceAccount and allow it the daemons' scope in "
        f"the namespaces it traces (README: Security model)"
    )
