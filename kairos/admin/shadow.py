"""User routes that the admin API hides.

The app sends the admin API's sections under ``KAIROS_ADMIN_PREFIX`` (``/api/routes…``,
``/api/config…``, ``/api/metrics…`` …, see ``kairos.admin.ADMIN_SECTIONS``) and the two metric
streams to the admin API before the route table is consulted, so a user route such as
``/api/config`` or ``/api/{*rest}`` can never receive those requests, whatever its methods. That
is deliberate (a config must not be able to replace ``/api/config``), but silent it would be a
trap: ``Gateway.apply`` logs this warning for every route it concerns, and the route endpoints
(create, update, validate) return it for the route they touch — including templates that merely
*can* match an admin path (``/{a}/routes``, ``/{*rest}``).
"""

from __future__ import annotations

from collections.abc import Sequence

from kairos.admin import ADMIN_SECTIONS, STREAM_PATHS
from kairos.config.path_template import CatchAll, Literal, Param, Pattern, Segment, parse_template


def _reaches(segments: Sequence[Segment], target: str, exact: bool) -> str | None:
    """How a template's segments meet ``target`` (``exact``) or the paths below it: ``"literal"``
    when its leading segments spell ``target`` (every request of the route is concerned),
    ``"pattern"`` when parameters or a catch-all merely can match it (some requests are), None when
    it cannot."""
    wanted = target.split("/")[1:]
    how = "literal"
    for position, text in enumerate(wanted):
        if position >= len(segments):
            return None
        segment = segments[position]
        if isinstance(segment, CatchAll):
            return "pattern"
        if isinstance(segment, Literal):
            if segment.text != text:
                return None
            continue
        how = "pattern"
        if isinstance(segment, Param) and not text:
            return None
        if isinstance(segment, Pattern) and not segment.regex.fullmatch(text):
            return None
    if exact and not (
        len(segments) == len(wanted)
        or (len(segments) == len(wanted) + 1 and isinstance(segments[-1], CatchAll))
    ):
        return None
    return how


def admin_shadow_warning(external_path: object, prefix: str) -> str | None:
    """A warning when requests for ``external_path`` would go to the admin API instead."""
    if not isinstance(external_path, str) or not external_path.startswith("/"):
        return None
    try:
        segments = parse_template(external_path).segments  # once: apply() checks every route
    except ValueError:
        return None
    for section in sorted(ADMIN_SECTIONS):
        target = f"{prefix}/{section}"
        how = _reaches(segments, target, exact=section == "openapi.json")
        if how == "literal":
            return (
                f"external_path {external_path} is the admin API's {target} (KAIROS_ADMIN_PREFIX={prefix}): "
                "requests there are answered by the admin API and never reach this route"
            )
        if how == "pattern":
            return (
                f"external_path {external_path} can match the admin API's {target}: those requests are "
                "answered by the admin API, not by this route"
            )
    for stream in STREAM_PATHS:
        if _reaches(segments, stream, exact=True) is not None:
            return (
                f"external_path {external_path} matches the admin stream {stream}: "
                "requests for that path are answered by the admin API and never reach this route"
            )
    return None
