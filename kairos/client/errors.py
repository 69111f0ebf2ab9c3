"""What can go wrong talking to a gateway, as exceptions that carry the gateway's error body.

``KairosError`` is the root. ``KairosConnectionError`` (``KairosTimeout``) means no answer came;
``KairosAPIError`` means the gateway answered with an error, and keeps what it said: ``status``,
``type``, ``message``, ``request_id`` (the id in the gateway's log line for that request) and, for
validation failures, every ``path: message`` problem.
"""

from __future__ import annotations

from typing import Any

import httpx


class KairosError(Exception):
    """Anything the client raises."""


class KairosConnectionError(KairosError):
    """The gateway could not be reached (refused, DNS, TLS, reset): nothing was answered."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the gateway at {url}: {reason}")
        self.url = url
        self.reason = reason


class KairosTimeout(KairosConnectionError):
    """No answer within the client's timeout."""


class UnexpectedAnswer(KairosError):
    """The gateway answered 2xx with something that is not what the endpoint documents (a
    different service on that port, or a proxy in between)."""


class KairosAPIError(KairosError):
    """The gateway answered with an error status."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "",
        request_id: str | None = None,
        body: Any = None,
        problems: list[str] | None = None,
    ) -> None:
        super().__init__(f"{status} {kind}: {message}" if kind else f"{status}: {message}")
        self.status = status
        self.message = message
        self.type = kind
        self.request_id = request_id
        self.body = body
        self.problems = problems or []


class Unauthorized(KairosAPIError):
    """401 (missing or wrong token) or 403 (a remote client while the gateway has no token set)."""


class NotFound(KairosAPIError):
    """404: no such route (or endpoint)."""


class Conflict(KairosAPIError):
    """409: the config changed under the request (read it again and resend), a duplicate route,
    or an ambiguous route path."""


class ValidationFailed(KairosAPIError):
    """400/422 with the validator's problems in ``problems`` (``path: message`` lines)."""


_BY_STATUS: dict[int, type[KairosAPIError]] = {
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
}

# What to do about a refused token: the setting, not just the status.
TOKEN_ADVICE = {
    401: "the admin token was refused: set KAIROS_ADMIN_TOKEN (or pass --token / token=) to the "
    "gateway's KAIROS_ADMIN_TOKEN",
    403: "the gateway has no KAIROS_ADMIN_TOKEN and answers only local clients: set one on the gateway "
    "and pass it here (KAIROS_ADMIN_TOKEN / --token / token=)",
}


def api_error(response: httpx.Response) -> KairosAPIError:
    """The exception for an error answer, built from the gateway's JSON error body."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    data = body if isinstance(body, dict) else {}
    message = str(data.get("message") or data.get("error") or response.text.strip() or response.reason_phrase)
    kind = str(data.get("type") or "")
    request_id = data.get("request_id") or response.headers.get("x-request-id")
    raw = data.get("errors")
    problems = [str(item) for item in raw] if isinstance(raw, list) else []
    status = response.status_code
    cls = _BY_STATUS.get(status)
    if cls is None and status in (400, 422) and (problems or kind in ("bad_request", "config")):
        cls = ValidationFailed
    if status in TOKEN_ADVICE:
        message = f"{TOKEN_ADVICE[status]} ({message})"
    return (cls or KairosAPIError)(status, message, kind, request_id, body, problems)
