"""Who may call what: an admin token for state-changing routes, optional API keys for inference.

- `GRAFT_ADMIN_TOKEN` guards head management (`POST /heads`, `DELETE /heads/{name}`). Unset, those
  routes answer 403 saying how to enable them: refusing is safer than an open default.
- `GRAFT_API_KEYS` (comma-separated), when set, guards the inference routes: a key is accepted as
  `Authorization: Bearer KEY` or `X-API-Key: KEY`. Unset, inference is open.

Secrets are compared in constant time: both sides are hashed to fixed-length digests first (so not
even a length leaks), and every configured key is compared, with no early exit on a match. No
message, log line or error field ever contains a token or a header's value.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Sequence

from graft.service.errors import Forbidden, Unauthorized

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="graft"'}


def _digest(secret: str) -> bytes:
    # surrogatepass: a header decoded as latin-1 or odd client bytes must compare unequal, not raise.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def _bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header (scheme case-insensitive), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _describe(authorization: str | None) -> str:
    """What the client sent, in words that never include the secret itself."""
    if not authorization:
        return "no Authorization header"
    if _bearer(authorization) is None:
        return "an Authorization header that is not 'Bearer <token>'"
    return "a bearer token that does not match"


class Auth:
    """The service's credentials, checked per request.

    Args:
        admin_token: `GRAFT_ADMIN_TOKEN`; None or empty disables the admin routes (403).
        api_keys: `GRAFT_API_KEYS`; empty leaves the inference routes open.
    """

    def __init__(self, admin_token: str | None, api_keys: Sequence[str]) -> None:
        self._admin = _digest(admin_token) if admin_token else None
        self._keys = tuple(_digest(key) for key in api_keys if key)

    @property
    def admin_enabled(self) -> bool:
        return self._admin is not None

    @property
    def api_keys_enabled(self) -> bool:
        return bool(self._keys)

    def require_admin(self, authorization: str | None) -> None:
        """Allow the request only with `Authorization: Bearer <GRAFT_ADMIN_TOKEN>`.

        Raises:
            Forbidden: no admin token is configured (the message says how to configure one).
            Unauthorized: the header is missing, not a bearer token, or the wrong token.
        """
        if self._admin is None:
            raise Forbidden(
                "head management is disabled: set GRAFT_ADMIN_TOKEN on the server and send "
                "'Authorization: Bearer <token>' to enable it",
                expected="a server started with GRAFT_ADMIN_TOKEN set", got="GRAFT_ADMIN_TOKEN unset",
            )
        token = _bearer(authorization)
        if token is None or not hmac.compare_digest(_digest(token), self._admin):
            raise Unauthorized(expected="'Authorization: Bearer <admin token>' matching GRAFT_ADMIN_TOKEN",
                               got=_describe(authorization), headers=CHALLENGE)

    def require_api_key(self, authorization: str | None, x_api_key: str | None) -> None:
        """Allow the request if no API keys are configured, or it carries one of them.

        Raises:
            Unauthorized: keys are configured and neither header holds one.
        """
        if not self._keys:
            return
        candidates = [_digest(value) for value in (_bearer(authorization), x_api_key) if value]
        matched = False
        for candidate in candidates:
            for key in self._keys:
                # `|=`, not `or`: every key is compared whatever matched before.
                matched |= hmac.compare_digest(candidate, key)
        if not matched:
            sent = "an X-API-Key header that does not match" if x_api_key else _describe(authorization)
            raise Unauthorized(expected="an API key from GRAFT_API_KEYS as 'Authorization: Bearer <key>' or "
                               "'X-API-Key: <key>'", got=sent, headers=CHALLENGE)
