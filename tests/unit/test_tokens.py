"""Tokens for IG's multi-tenancy: the right account per namespace, one TokenRequest at a time, renewed
before they expire, refusals reported with what to do, and never the token itself in a repr."""

from __future__ import annotations

import asyncio

import pytest

from gadget_operator import errors, tokens
from gadget_operator.tokens import IssuedToken, ServiceAccount, TokenSource

OPERATOR = ServiceAccount("gadget-operator", "gadget-operator")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class TokenApi:
    """TokenRequest as the API server answers it: a fresh token per request, or the refusal given."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.requests: list[tuple[ServiceAccount, str, int]] = []
        self.refuse: dict[ServiceAccount, str] = {}
        self.gate: asyncio.Event | None = None

    async def __call__(self, account: ServiceAccount, audience: str, seconds: int) -> IssuedToken:
        self.requests.append((account, audience, seconds))
        if self.gate is not None:
            await self.gate.wait()
        if account in self.refuse:
            raise RuntimeError(self.refuse[account])
        return IssuedToken(f"token-{len(self.requests)}", self.clock.now + seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def api(clock: Clock) -> TokenApi:
    return TokenApi(clock)


def source(api: TokenApi, clock: Clock, lifetime: int = 3600) -> TokenSource:
    return TokenSource(api, operator=OPERATOR, tenant_account="gadget-tenant", lifetime=lifetime, clock=clock)


async def test_a_namespace_speaks_as_its_tenant_account_and_none_as_the_operator(api: TokenApi, clock: Clock) -> None:
    tokens_ = source(api, clock)
    assert await tokens_.token("team-a") == "token-1"
    assert await tokens_.token(None) == "token-2"
    assert [(str(account), audience) for account, audience, _ in api.requests] == [
        ("team-a/gadget-tenant", "inspektor-gadget"),
        ("gadget-operator/gadget-operator", "inspektor-gadget"),
    ]


async def test_a_token_is_reused_until_most_of_its_lifetime_has_passed(api: TokenApi, clock: Clock) -> None:
    tokens_ = source(api, clock, lifetime=1000)
    assert await tokens_.token("team-a") == "token-1"
    clock.now += 799
    assert await tokens_.token("team-a") == "token-1"
    clock.now += 2
    assert await tokens_.token("team-a") == "token-2"
    assert [seconds for _, _, seconds in api.requests] == [1000, 1000]


async def test_concurrent_calls_share_one_token_request(api: TokenApi, clock: Clock) -> None:
    tokens_ = source(api, clock)
    api.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(tokens_.token("team-a")) for _ in range(20)]
    await asyncio.sleep(0)
    api.gate.set()
    assert set(await asyncio.gather(*waiting)) == {"token-1"}
    assert len(api.requests) == 1


async def test_a_refused_request_says_which_account_and_what_to_do_and_is_not_repeated_at_once(
    api: TokenApi, clock: Clock
) -> None:
    tokens_ = source(api, clock)
    api.refuse[ServiceAccount("team-a", "gadget-tenant")] = '404: serviceaccounts "gadget-tenant" not found'
    for _ in range(3):
        with pytest.raises(tokens.TokenUnavailable) as refused:
            await tokens_.token("team-a")
    assert isinstance(refused.value, errors.DaemonRejected)  # a failed call for that resource, not a hung daemon
    assert "no token for ServiceAccount team-a/gadget-tenant (audience inspektor-gadget)" in refused.value.message
    assert 'serviceaccounts "gadget-tenant" not found' in refused.value.message
    assert "create that ServiceAccount" in refused.value.message
    assert len(api.requests) == 1
    del api.refuse[ServiceAccount("team-a", "gadget-tenant")]
    clock.now += tokens.RETRY_AFTER
    assert await tokens_.token("team-a") == "token-2"


async def test_one_namespace_refused_does_not_affect_another(api: TokenApi, clock: Clock) -> None:
    tokens_ = source(api, clock)
    api.refuse[ServiceAccount("team-a", "gadget-tenant")] = "forbidden"
    with pytest.raises(tokens.TokenUnavailable):
        await tokens_.token("team-a")
    assert await tokens_.token("team-b") == "token-2"


async def test_a_failed_renewal_keeps_the_current_token_until_it_expires(api: TokenApi, clock: Clock) -> None:
    tokens_ = source(api, clock, lifetime=1000)
    assert await tokens_.token("team-a") == "token-1"
    api.refuse[ServiceAccount("team-a", "gadget-tenant")] = "the API server is restarting"
    clock.now += 900  # past the renewal point, before expiry
    assert await tokens_.token("team-a") == "token-1"
    assert await tokens_.token("team-a") == "token-1"  # no new request within the retry interval
    assert len(api.requests) == 2
    clock.now += 100  # expired: nothing left to send
    with pytest.raises(tokens.TokenUnavailable, match="the API server is restarting"):
        await tokens_.token("team-a")


def test_the_token_never_shows_in_a_repr() -> None:
    assert "s3cret" not in repr(IssuedToken("s3cret", 0.0))


def test_lifetimes_below_the_api_servers_minimum_are_refused(api: TokenApi, clock: Clock) -> None:
    with pytest.raises(ValueError, match="at least 600"):
        source(api, clock, lifetime=599)


@pytest.mark.parametrize("text", ["team-a", "/name", "ns/", "a/b/c"])
def test_a_service_account_flag_must_be_namespace_slash_name(text: str) -> None:
    with pytest.raises(ValueError, match="NAMESPACE/NAME"):
        ServiceAccount.parse(text)
