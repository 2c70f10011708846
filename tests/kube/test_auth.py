"""TokenReview / SubjectAccessReview helpers against the simulated API server, as
kubeguard's service account."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx2
import msgspec
import pytest

from kubeguard.kube.auth import AuthUnavailable, DelegatingAuth, UserInfo
from kubeguard.kube.client import KubeClient
from kubeguard.sim import SimCluster

from .conftest import client_for, fixture_bytes

SA = "system:serviceaccount:kubeguard:kubeguard"


def count_posts(kube: KubeClient, path_part: str) -> list[int]:
    calls: list[int] = []

    async def hook(request: httpx2.Request) -> None:
        if request.method == "POST" and path_part in request.url.path:
            calls.append(1)

    kube.http.event_hooks["request"].append(hook)
    return calls


@pytest.fixture
async def sa_kube(cluster: SimCluster, tmp_path: Path):  # type: ignore[no-untyped-def]
    client = client_for(cluster, tmp_path, user=SA)
    yield client
    await client.aclose()


async def test_authenticate_valid_invalid_and_cached(
    cluster: SimCluster, sa_kube: KubeClient
) -> None:
    calls = count_posts(sa_kube, "tokenreviews")
    auth = DelegatingAuth(sa_kube)
    user = await auth.authenticate(cluster.token("alice"))
    assert user is not None and user.username == "alice"
    assert "dev-team" in user.groups and "system:authenticated" in user.groups
    assert await auth.authenticate(cluster.token("alice")) == user
    assert len(calls) == 1  # positive result cached

    assert await auth.authenticate("not-a-token") is None
    assert await auth.authenticate("not-a-token") is None
    assert len(calls) == 2  # negative result cached too
    assert await auth.authenticate("") is None and len(calls) == 2

    sa = await auth.authenticate(cluster.token(SA))
    assert sa is not None and sa.uid and sa.extra["authentication.kubernetes.io/credential-id"]

    # Concurrent reviews of one token share a single API call.
    bob = cluster.token("bob")
    results = await asyncio.gather(*(auth.authenticate(bob) for _ in range(5)))
    assert all(r is not None and r.username == "bob" for r in results)
    assert len(calls) == 4


async def test_negative_cache_expires(cluster: SimCluster, sa_kube: KubeClient) -> None:
    calls = count_posts(sa_kube, "tokenreviews")
    auth = DelegatingAuth(sa_kube, negative_ttl=0.0)  # 0: not cached at all
    assert await auth.authenticate("nope") is None
    assert await auth.authenticate("nope") is None
    assert len(calls) == 2


def test_review_fixtures_decode_as_documented() -> None:
    from kubeguard.kube.auth import _access_review, _token_review

    ok = _token_review.decode(fixture_bytes("api/tokenreview-serviceaccount.json")).status
    assert ok.authenticated and ok.user.username == "system:serviceaccount:demo:default"
    assert ok.user.extra["authentication.kubernetes.io/credential-id"][0].startswith("JTI=")
    bad = _token_review.decode(fixture_bytes("api/tokenreview-invalid-token.json")).status
    assert not bad.authenticated and bad.user == UserInfo() and "invalid bearer token" in bad.error
    denied = _access_review.decode(fixture_bytes("api/subjectaccessreview-denied.json")).status
    assert not denied.allowed and denied.reason == ""
    allowed = _access_review.decode(fixture_bytes("api/subjectaccessreview-allowed.json")).status
    assert allowed.allowed and "RoleBinding" in allowed.reason


async def test_authorize(cluster: SimCluster, sa_kube: KubeClient) -> None:
    calls = count_posts(sa_kube, "subjectaccessreviews")
    auth = DelegatingAuth(sa_kube)
    alice = await auth.authenticate(cluster.token("alice"))
    bob = await auth.authenticate(cluster.token("bob"))
    admin = await auth.authenticate(cluster.admin_token)
    assert alice is not None and bob is not None and admin is not None

    ok, reason = await auth.authorize(alice, "delete", "", "pods", "demo")
    assert ok and "RoleBinding" in reason
    ok, reason = await auth.authorize(alice, "delete", "", "nodes")
    assert not ok and reason == 'user "alice" cannot delete nodes'
    ok, reason = await auth.authorize(
        bob, "update", "kubeguard.io", "interception", "kubeguard-system"
    )
    assert not ok
    assert reason == (
        'user "bob" cannot update interception.kubeguard.io in namespace "kubeguard-system"'
    )
    ok, _ = await auth.authorize(
        admin, "update", "kubeguard.io", "interception", "kubeguard-system"
    )
    assert ok
    ok, _ = await auth.authorize(alice, "create", "", "pods", "demo", subresource="eviction")
    assert ok
    n = len(calls)
    await auth.authorize(alice, "delete", "", "pods", "demo")
    assert len(calls) == n  # cached


async def test_api_failure_is_unavailable_not_a_bad_token(
    cluster: SimCluster, tmp_path: Path
) -> None:
    # A server that is not there: TokenReview cannot be made.
    dead = client_for(cluster, tmp_path, user=SA, port=1)
    try:
        auth = DelegatingAuth(dead)
        with pytest.raises(AuthUnavailable):
            await auth.authenticate("some-token")
        with pytest.raises(AuthUnavailable):
            await auth.authorize(UserInfo(username="x"), "get", "", "pods", "demo")
    finally:
        await dead.aclose()
    # bob may not create TokenReviews: a 403 from the API is "unavailable" too (answer 503).
    bob = client_for(cluster, tmp_path, user="bob")
    try:
        with pytest.raises(AuthUnavailable, match="403"):
            await DelegatingAuth(bob).authenticate(cluster.token("alice"))
    finally:
        await bob.aclose()


def test_user_info_round_trips_through_msgspec() -> None:
    u = UserInfo(username="a", groups=["g"], extra={"k": ["v"]})
    assert msgspec.json.decode(msgspec.json.encode(u), type=UserInfo) == u
