"""Auth rules: 403 without an admin token configured, 401 for a missing or wrong credential, API keys
from either header, and no secret in any message."""

from __future__ import annotations

import hmac

import pytest

from graft.service.auth import Auth
from graft.service.errors import Forbidden, Unauthorized

ADMIN, KEYS = "s3cret-admin-token", ("key-one", "key-two")


def messages(error: Exception) -> str:
    return " ".join(str(part) for part in (error, error.expected, error.got, error.headers))


def test_admin_routes_are_forbidden_until_a_token_is_configured():
    for token in (None, ""):
        with pytest.raises(Forbidden) as caught:
            Auth(token, KEYS).require_admin(f"Bearer {ADMIN}")
        assert caught.value.status == 403
        assert "GRAFT_ADMIN_TOKEN" in caught.value.message and "Authorization: Bearer" in caught.value.message


def test_admin_token_accepted():
    auth = Auth(ADMIN, ())
    auth.require_admin(f"Bearer {ADMIN}")
    auth.require_admin(f"bearer   {ADMIN} ")  # the scheme is case-insensitive (RFC 7235); padding is ignored
    assert auth.admin_enabled and not auth.api_keys_enabled


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", f"Basic {ADMIN}", ADMIN, "Bearer wrong", f"Bearer {ADMIN}x",
    f"Bearer {ADMIN[:-1]}", "Bearer \udcff", "Bearer é",
])
def test_admin_refuses_missing_or_wrong_tokens(header):
    with pytest.raises(Unauthorized) as caught:
        Auth(ADMIN, KEYS).require_admin(header)
    error = caught.value
    assert error.status == 401 and error.headers["WWW-Authenticate"].startswith("Bearer")
    sent = header.partition(" ")[2].strip() if header else ""
    assert ADMIN[:6] not in messages(error) and (len(sent) < 3 or sent not in messages(error))


def test_api_keys_are_optional():
    Auth(ADMIN, ()).require_api_key(None, None)
    Auth(None, ["", ""]).require_api_key(None, None)  # GRAFT_API_KEYS="," configures nothing


@pytest.mark.parametrize("authorization, x_api_key", [
    ("Bearer key-one", None), ("Bearer key-two", None), (None, "key-two"), ("Bearer wrong", "key-one"),
    ("Basic xyz", "key-one"),
])
def test_api_key_accepted_from_either_header(authorization, x_api_key):
    Auth(None, KEYS).require_api_key(authorization, x_api_key)


@pytest.mark.parametrize("authorization, x_api_key", [
    (None, None), ("Bearer wrong", None), (None, "wrong"), ("key-one", None), ("Bearer key-on", "key-tw"),
    (f"Bearer {ADMIN}", None),  # the admin token is not an API key
])
def test_api_key_refused(authorization, x_api_key):
    with pytest.raises(Unauthorized) as caught:
        Auth(ADMIN, KEYS).require_api_key(authorization, x_api_key)
    text = messages(caught.value)
    assert caught.value.status == 401 and "WWW-Authenticate" in caught.value.headers
    assert "X-API-Key" in caught.value.expected
    for secret in (*KEYS, ADMIN, "wrong", "key-on", "key-tw"):
        assert secret not in text


def test_every_key_is_compared(monkeypatch):
    """No early exit: a match on the first key still compares the rest (timing must not say which matched)."""
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    Auth(None, ("a", "b", "c")).require_api_key("Bearer a", None)
    assert len(calls) == 3
    calls.clear()
    Auth(None, ("a", "b", "c")).require_api_key("Bearer a", "b")
    assert len(calls) == 6
