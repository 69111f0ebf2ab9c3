"""(being written)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from kairos.gateway import Gateway


def endpoints(gateway: Gateway) -> list[BaseRoute]:
    return []


def stream_endpoints(gateway: Gateway) -> list[BaseRoute]:
    return []
