"""IpFilterMiddleware: allow/deny lists of CIDRs, top level and per route, answered 403 ``forbidden``.

Checks ``Exchange.client_ip`` (the peer, or the client behind a trusted proxy), so a forged
``X-Forwarded-For`` cannot slip past a deny list. A route's ``ip_filter`` replaces the global one.
Filters are compiled once per distinct config and the verdict per address is cached, so the hot
path is a dict lookup.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from kairos.config.model import IpFilterConfig
from kairos.errors import reject
from kairos.request import as_accessor, request_id_and_ip, route_policy

if TYPE_CHECKING:
    from kairos.routing.route import Route

_CACHE_LIMIT = 10_000


class IpFilter:
    __slots__ = ("_allow", "_deny", "_verdicts")

    def __init__(self, config: IpFilterConfig) -> None:
        self._allow = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in config.allow)
        self._deny = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in config.deny)
        self._verdicts: dict[str, bool] = {}

    def admits(self, ip: str) -> bool:
        verdict = self._verdicts.get(ip)
        if verdict is None:
            verdict = self._decide(ip)
            if len(self._verdicts) >= _CACHE_LIMIT:
                self._verdicts.clear()
            self._verdicts[ip] = verdict
        return verdict

    def _decide(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return not self._allow  # an unparsable address can never match an allow list
        if any(address in network for network in self._deny):
            return False
        return not self._allow or any(address in network for network in self._allow)


def _ip_filter(route: Route) -> IpFilterConfig | None:
    return route.config.ip_filter


class IpFilterMiddleware:
    def __init__(
        self, app: ASGIApp, global_filter: IpFilterConfig | Callable[[], IpFilterConfig | None] | None = None
    ) -> None:
        self.app = app
        self._global = as_accessor(global_filter)
        self._compiled: dict[IpFilterConfig, IpFilter] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        config = route_policy(scope, _ip_filter, self._global)
        if config is None:
            await self.app(scope, receive, send)
            return
        compiled = self._compiled.get(config)
        if compiled is None:
            if len(self._compiled) > 1000:
                self._compiled.clear()
            compiled = self._compiled[config] = IpFilter(config)
        request_id, ip = request_id_and_ip(scope)
        if not compiled.admits(ip):
            await reject(scope, send, "forbidden", f"Client address {ip} is not allowed", request_id)
            return
        await self.app(scope, receive, send)
