"""Tests of the test provider itself (tests/provider_server), run as a real process.

Nothing here touches the test process's database.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests

from tests.provider_server.fixture import ProviderError, ProviderHandle, start_provider

# One worker runs the module (``--dist loadgroup``): the provider process below
# starts once, not on every worker that got one of these tests.
pytestmark = pytest.mark.xdist_group("provider_server")


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderHandle]:
    with start_provider(tmp_path_factory.mktemp("provider")) as handle:
        yield handle


@pytest.fixture(autouse=True)
def _fresh_provider_state(provider: ProviderHandle) -> Iterator[None]:
    provider.control(reset=True, delay_ms=0, access_token_lifetime=30, serialize=True)
    yield
    provider.control(delay_ms=0, access_token_lifetime=30, serialize=True)


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _assert_invalid_grant(response: requests.Response) -> None:
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def _refresh_token_of(response: requests.Response) -> str:
    assert response.status_code == 200, response.json().get("error")
    token: str = response.json()["refresh_token"]
    return token


def test_password_grant_returns_tokens_and_a_signed_id_token(provider: ProviderHandle) -> None:
    tokens = provider.password_grant()

    assert tokens["token_type"] == "Bearer"
    assert tokens["access_token"]
    assert tokens["refresh_token"]
    assert tokens["expires_in"] == 30
    assert set(tokens["scope"].split()) == {"openid", "profile", "email", "read"}
    discovery = provider.discovery()
    signing_key = jwt.PyJWKClient(discovery["jwks_uri"]).get_signing_key_from_jwt(
        tokens["id_token"]
    )
    claims: dict[str, Any] = jwt.decode(
        tokens["id_token"],
        signing_key.key,
        algorithms=["RS256"],
        audience=provider.client_id,
        issuer=discovery["issuer"],
    )
    assert claims["email"] == provider.email
    assert claims["preferred_username"] == provider.username


def test_public_client_password_grant(provider: ProviderHandle) -> None:
    tokens = provider.password_grant(client="public")

    assert tokens["refresh_token"]
    assert tokens["id_token"]
    refreshed = provider.refresh(tokens["refresh_token"], client="public")
    assert _refresh_token_of(refreshed) != tokens["refresh_token"]


def test_password_grant_error_reports_status_and_code(provider: ProviderHandle) -> None:
    with pytest.raises(ProviderError, match=r"HTTP 400 invalid_scope"):
        provider.password_grant(scope="no-such-scope")


def test_refresh_rotates_the_refresh_token(provider: ProviderHandle) -> None:
    tokens = provider.password_grant()

    response = provider.refresh(tokens["refresh_token"])

    body = response.json()
    assert response.status_code == 200
    assert body["refresh_token"] != tokens["refresh_token"]
    assert body["access_token"] != tokens["access_token"]
    assert body["expires_in"] == 30
    assert body["id_token"]
    assert _refresh_token_of(provider.refresh(body["refresh_token"]))


def test_replaying_a_rotated_refresh_token_revokes_the_family(provider: ProviderHandle) -> None:
    old = provider.password_grant()["refresh_token"]
    new = _refresh_token_of(provider.refresh(old))

    _assert_invalid_grant(provider.refresh(old))
    # Reuse protection: the replay revoked the whole family, the new token included.
    _assert_invalid_grant(provider.refresh(new))


def test_revoked_refresh_token_is_refused(provider: ProviderHandle) -> None:
    refresh_token = provider.password_grant()["refresh_token"]

    provider.revoke(refresh_token)

    _assert_invalid_grant(provider.refresh(refresh_token))


def test_revoking_the_access_token_also_revokes_its_refresh_token(
    provider: ProviderHandle,
) -> None:
    tokens = provider.password_grant()

    provider.revoke(tokens["access_token"], token_type_hint="access_token")

    _assert_invalid_grant(provider.refresh(tokens["refresh_token"]))


def test_discovery_document(provider: ProviderHandle) -> None:
    discovery = provider.discovery()

    assert discovery["issuer"] == provider.server_url
    assert discovery["token_endpoint"] == provider.token_url
    assert discovery["token_endpoint"] == f"http://127.0.0.1:{provider.port}/o/token/"
    assert discovery["jwks_uri"] == f"{provider.server_url}/.well-known/jwks.json"
    assert {"client_secret_post", "client_secret_basic"} <= set(
        discovery["token_endpoint_auth_methods_supported"]
    )
    assert "RS256" in discovery["id_token_signing_alg_values_supported"]
    keys = requests.get(discovery["jwks_uri"], timeout=10).json()["keys"]
    assert [key["kty"] for key in keys] == ["RSA"]


def test_userinfo(provider: ProviderHandle) -> None:
    access_token = provider.password_grant()["access_token"]

    response = requests.get(
        provider.discovery()["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=10,
    )

    assert response.status_code == 200
    assert response.json()["email"] == provider.email


def test_stats_count_token_and_refresh_calls_exactly(provider: ProviderHandle) -> None:
    first = provider.password_grant()["refresh_token"]
    second = _refresh_token_of(provider.refresh(first))
    third = _refresh_token_of(provider.refresh(second))
    _assert_invalid_grant(provider.refresh(first))

    stats = provider.stats()

    assert stats["token_calls"] == 4
    assert stats["refresh_calls"] == 3
    assert stats["refresh_tokens_seen"] == [_sha256(first), _sha256(second), _sha256(first)]
    assert _sha256(third) not in stats["refresh_tokens_seen"]
    assert provider.reset()["token_calls"] == 0
    assert provider.stats() == {
        **stats,
        "token_calls": 0,
        "refresh_calls": 0,
        "refresh_tokens_seen": [],
    }


def test_control_rejects_unknown_or_invalid_settings(provider: ProviderHandle) -> None:
    url = f"{provider.base_url}/_control"
    for payload in (
        {"nope": 1},
        {"delay_ms": -1},
        {"delay_ms": "5"},
        {"reset": 1},
        {"access_token_lifetime": 0},
    ):
        response = requests.post(url, json=payload, timeout=10)
        assert response.status_code == 400, payload
    assert provider.stats()["delay_ms"] == 0


def test_access_token_lifetime_can_be_changed(provider: ProviderHandle) -> None:
    provider.set_access_token_lifetime(5)

    tokens = provider.password_grant()
    assert tokens["expires_in"] == 5
    assert provider.refresh(tokens["refresh_token"]).json()["expires_in"] == 5


def test_delay_applies_before_the_token_endpoint_answers(provider: ProviderHandle) -> None:
    refresh_token = provider.password_grant()["refresh_token"]
    provider.set_delay(200)

    started = time.monotonic()
    response = provider.refresh(refresh_token)
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert elapsed >= 0.2


def _refresh_concurrently(
    provider: ProviderHandle, refresh_tokens: list[str]
) -> tuple[list[requests.Response], float]:
    responses: list[requests.Response | None] = [None] * len(refresh_tokens)
    barrier = threading.Barrier(len(refresh_tokens))

    def worker(index: int) -> None:
        barrier.wait()
        responses[index] = provider.refresh(refresh_tokens[index])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(refresh_tokens))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.monotonic() - started
    done = [response for response in responses if response is not None]
    assert len(done) == len(refresh_tokens)
    return done, elapsed


def test_concurrent_refreshes_are_served_in_parallel(provider: ProviderHandle) -> None:
    refresh_tokens = [provider.password_grant()["refresh_token"] for _ in range(4)]
    provider.set_delay(500)

    responses, elapsed = _refresh_concurrently(provider, refresh_tokens)

    assert [response.status_code for response in responses] == [200] * 4
    assert elapsed >= 0.5
    # One at a time would take at least 4 x 0.5 s.
    assert elapsed < 1.6
    assert provider.stats()["refresh_calls"] == 4


def test_concurrent_reuse_of_one_refresh_token_is_detected(provider: ProviderHandle) -> None:
    refresh_token = provider.password_grant()["refresh_token"]
    provider.set_delay(200)

    responses, _ = _refresh_concurrently(provider, [refresh_token] * 3)

    winners = [response for response in responses if response.status_code == 200]
    assert len(winners) == 1
    for response in responses:
        if response.status_code != 200:
            _assert_invalid_grant(response)
    provider.set_delay(0)
    # The losers' reuse revoked the family, the winner's new refresh token included.
    _assert_invalid_grant(provider.refresh(_refresh_token_of(winners[0])))
