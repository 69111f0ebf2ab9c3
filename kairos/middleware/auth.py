"""AuthMiddleware: JWT / API-key authentication and role checks.

Inside the gateway the policy is the matched route's (``auth_required`` for every listed method,
``required_roles``, ``auth``: any / jwt / api_key): the route comes from the one matcher, so a
public ``/users/{id}`` can never let ``/users/me`` through. Standalone (a FastAPI app without the
gateway), the constructor's global policy applies. Answers 401 ``authentication_error`` with
``WWW-Authenticate`` (``Bearer error="invalid_token"``, or plain ``Bearer`` when no credentials
were sent) and 403 ``authorization_error`` when the token is valid but a required role is missing.
The verified identity goes to ``Exchange.identity`` (standalone: ``scope["state"]["identity"]``).

Authentication is synchronous on the hot path. Only when a JWT names a signing key the JWKS key set
does not have yet (key rotation, or keys still loading) does the authenticator raise
KeyRefreshNeeded: the request then awaits the shared, bounded refresh and is authenticated once more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.auth.authenticator import Authenticator, AuthFailure, Identity, KeyRefreshNeeded
from kairos.errors import reject
from kairos.exchange import SCOPE_KEY
from kairos.request import as_accessor, new_request_id, route_policy
from kairos.routing.route import AuthRule, Route


def _auth(route: Route) -> AuthRule:
    return route.auth  # a route's rule always wins, even when it requires nothing


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator | Callable[[], Authenticator | None] | None,
        *,
        required: bool = False,
        required_roles: Sequence[str] = (),
        accept: str = "any",
    ) -> None:
        self.app = app
        self._authenticator = as_accessor(authenticator)
        self._rule = as_accessor(AuthRule(required, frozenset(required_roles), accept))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rule = route_policy(scope, _auth, self._rule)
        if rule is None or not rule.required:
            await self.app(scope, receive, send)
            return
        exchange = scope.get(SCOPE_KEY)
        request_id = exchange.request_id if exchange is not None else new_request_id()
        accept = rule.accept
        authenticator = self._authenticator()
        if authenticator is None:
            await reject(scope, send, "config", "authentication is required but not configured", request_id)
            return
        try:
            try:
                identity = authenticator.authenticate(scope["headers"], accept)
            except KeyRefreshNeeded as pending:  # unknown JWKS kid: wait for the refresh, retry once
                await pending.wait()
                identity = authenticator.authenticate(scope["headers"], accept)
        except AuthFailure as failure:
            await reject(
                scope,
                send,
                "authentication_error",
                failure.message,
                request_id,
                headers=[(b"www-authenticate", _challenge(failure, accept, authenticator))],
            )
            return
        missing = rule.roles - identity.roles
        if missing:
            await reject(
                scope,
                send,
                "authorization_error",
                "missing required role(s): " + ", ".join(sorted(missing)),
                request_id,
            )
            return
        _remember(scope, identity)
        await self.app(scope, receive, send)


def _challenge(failure: AuthFailure, accept: str, authenticator: Authenticator) -> bytes:
    if accept == "api_key" or authenticator.jwt is None:
        return b'ApiKey header="' + authenticator.api_key_header + b'"'
    if failure.error is None:
        return b"Bearer"
    description = failure.message.replace('"', "'")
    return f'Bearer error="{failure.error}", error_description="{description}"'.encode("latin-1", "replace")


def _remember(scope: Scope, identity: Identity) -> None:
    exchange = scope.get(SCOPE_KEY)
    if exchange is not None:
        exchange.identity = identity
    else:
        scope.setdefault("state", {})["identity"] = identity
