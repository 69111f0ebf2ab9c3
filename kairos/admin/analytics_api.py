"""``GET /analytics/llm``: the LLM routes' request analytics, aggregated by the database.

Query parameters: ``group_by`` (``consumer``, ``model``, ``day``, ``route``, ``provider``; default
``model``), ``since`` / ``until`` (RFC 3339; ``since`` inclusive, ``until`` exclusive), ``consumer``
and ``model`` filters, ``limit`` (1-1000). 404 when no analytics store runs (no ``llm`` route, or
``KAIROS_ANALYTICS=false``); 503 when its database cannot answer now.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from kairos.admin.responses import answer, error_response
from kairos.api_models import LlmAnalytics, LlmAnalyticsRow

if TYPE_CHECKING:
    from kairos.gateway import Gateway

GROUPS = ("consumer", "model", "day", "route", "provider")


def endpoints(gateway: Gateway) -> list[BaseRoute]:
    return [Route("/analytics/llm", AnalyticsApi(gateway).llm, methods=["GET"])]


def _instant(name: str, text: str | None) -> datetime | None:
    if text is None or text == "":
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"query parameter `{name}`: an RFC 3339 time such as 2026-12-01T00:00:00Z (got {text!r})"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class AnalyticsApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def llm(self, request: Request) -> Response:
        from kairos.analytics.store import AnalyticsUnavailable

        params = request.query_params
        group_by = params.get("group_by", "model")
        limit_text = params.get("limit", "100")
        try:
            if group_by not in GROUPS:
                raise ValueError(f"query parameter `group_by`: one of {', '.join(GROUPS)} (got {group_by!r})")
            if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
                raise ValueError(f"query parameter `limit`: an integer from 1 to 1000 (got {limit_text!r})")
            since = _instant("since", params.get("since"))
            until = _instant("until", params.get("until"))
        except ValueError as exc:
            return error_response(str(exc), 400, "bad_request")
        store = self.gateway.llm.analytics
        if store is None:
            return error_response(
                "no LLM analytics here: no `llm` route runs, or KAIROS_ANALYTICS=false", 404, "not_found"
            )
        try:
            rows: list[dict[str, Any]] = await store.aggregate(
                group_by,  # type: ignore[arg-type]  # checked against GROUPS above
                since=since,
                until=until,
                consumer=params.get("consumer") or None,
                model=params.get("model") or None,
                limit=int(limit_text),
            )
        except AnalyticsUnavailable as exc:
            return error_response(
                f"the analytics database cannot answer now: {exc}", 503, "upstream_unavailable"
            )
        stats = store.stats
        return answer(
            LlmAnalytics(
                group_by=group_by,
                since=since.isoformat() if since else None,
                until=until.isoformat() if until else None,
                backend=stats.backend,
                written=stats.written,
                dropped=stats.dropped,
                queue_depth=stats.queue_depth,
                last_error=stats.last_error,
                rows=[LlmAnalyticsRow.model_validate({**row, "key": str(row["key"])}) for row in rows],
            )
        )
