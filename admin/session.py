"""Dashboard sessions: the admin token in an encrypted, signed, HttpOnly cookie; CSRF tokens
derived from it.

Stateless on purpose: the cookie is a Fernet token (AES-128-CBC + HMAC-SHA256, from
``cryptography``, already installed with python-jose) holding the admin token and the moment it
was issued, so every dashboard process with the same key reads it (several gateway workers,
several replicas) and nothing is kept server-side. The key comes from ``KAIROS_DASHBOARD_SECRET``;
else, in the gateway, from its admin token (so rotating the token ends every session); else each
process draws its own (sessions end with the process).

The token is never trusted from the cookie alone: every page calls the admin API with it, and the
moment the gateway refuses it (rotated, revoked) the user is sent back to the login page.

CSRF: every state-changing form carries ``HMAC(key, cookie)``, checked in constant time. The
cookie is ``SameSite=Strict`` as well, which alone stops cross-site posts in current browsers; the
token covers older ones and same-site subdomains.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken

COOKIE = "kairos_session"
SESSION_SECONDS = 12 * 3600  # a working day; the gateway still checks the token on every page


@dataclass(frozen=True, slots=True)
class Session:
    token: str  # the admin token ("" when the gateway has none and the browser is local)
    issued: float


class Sessions:
    """Issues and reads session cookies, and the CSRF token that goes with each."""

    def __init__(
        self, secret: str | None = None, lifetime: float = SESSION_SECONDS, derived_from: str | None = None
    ) -> None:
        raw = secret if secret is not None else os.environ.get("KAIROS_DASHBOARD_SECRET")
        if raw:
            material = hashlib.sha256(raw.encode()).digest()
        elif derived_from:  # the admin token: every worker agrees, and rotating it ends every session
            material = hmac.new(derived_from.encode(), b"kairos dashboard sessions", hashlib.sha256).digest()
        else:
            material = os.urandom(32)
        self._fernet = Fernet(base64.urlsafe_b64encode(material))
        self._csrf_key = hashlib.sha256(b"csrf" + material).digest()
        self.lifetime = lifetime

    def issue(self, token: str) -> str:
        """The cookie value for a session holding ``token``."""
        payload = json.dumps({"t": token, "i": time.time()}).encode()
        return self._fernet.encrypt(payload).decode()

    def read(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or None when it is missing, forged, corrupted or expired."""
        if not cookie:
            return None
        try:
            payload = json.loads(self._fernet.decrypt(cookie.encode(), ttl=int(self.lifetime)))
        except (InvalidToken, ValueError):
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("t"), str):
            return None
        return Session(payload["t"], float(payload.get("i", 0)))

    def csrf(self, cookie: str) -> str:
        return hmac.new(self._csrf_key, cookie.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, cookie: str | None, sent: str | None) -> bool:
        if not cookie or not sent:
            return False
        return hmac.compare_digest(self.csrf(cookie), sent)
