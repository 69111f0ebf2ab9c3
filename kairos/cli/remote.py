"""The commands that manage a running gateway, each a few calls of ``kairos.client``.

Every function takes the ``Target`` (URL, token, output) and returns the exit code documented in
kairos/cli/output.py; client errors become one line (or one JSON document) there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kairos.api_models import Backends, BackendState, Explanation
from kairos.cli.offline import write_atomically
from kairos.cli.output import FAILED, NEGATIVE, OK, Output, reporting
from kairos.cli.plan import diff_documents, plan_apply, route_key
from kairos.client import KairosClient
from kairos.client.metrics import RouteFigures

if TYPE_CHECKING:
    from kairos.cli import Target


def _client(target: Target) -> KairosClient:
    return KairosClient(target.url, target.token)


def read_document(file: Path) -> dict[str, Any]:
    """A JSON config (or route) file as written. ValueError names the file and the problem."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{file}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{file}: cannot read: {exc.strerror or exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{file}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(document, dict | list):
        raise ValueError(f"{file}: must hold a JSON object")
    return document if isinstance(document, dict) else {"routers": document}


# -- health and metrics ------------------------------------------------------------------------


def _backend_problem(backend: BackendState) -> str | None:
    if backend.circuit.state == "open":
        return f"backend {backend.key}: circuit open ({backend.circuit.consecutive_failures} failures)"
    if not backend.healthy:
        return f"backend {backend.key}: unhealthy"
    if backend.outlier.ejected:
        return f"backend {backend.key}: ejected as an outlier"
    return None


def health(target: Target, list_backends: bool) -> int:
    output = target.output
    with reporting(output), _client(target) as client:
        status = client.health()
        ready = client.ready()
        backends = client.backends()
        problems = [] if ready.status == "ready" else [f"not ready ({ready.status})"]
        problems += [p for p in (_backend_problem(b) for b in backends.backends) if p is not None]
        problems += [
            f"route {route}: panic mode (too few healthy backends)" for route in backends.panic_routes
        ]
        verdict = "degraded" if problems else "healthy"
        if output.json:
            answer: dict[str, Any] = {
                "status": verdict,
                "url": client.base_url,
                "version": status.version,
                "uptime_seconds": status.uptime,
                "ready": ready.status == "ready",
                "generation": ready.config_generation,
                "routes": ready.routes,
                "problems": problems,
            }
            if list_backends:
                answer["backends"] = [b.model_dump(mode="json") for b in backends.backends]
            output.emit(answer)
        else:
            healthy = sum(1 for b in backends.backends if _backend_problem(b) is None)
            output.line(
                f"{verdict}: kairos {status.version} at {client.base_url}, up {_duration(status.uptime)}, "
                f"generation {ready.config_generation}, {ready.routes} routes, "
                f"{healthy}/{len(backends.backends)} backends healthy",
                "bold green" if not problems else "bold yellow",
            )
            for problem in problems:
                output.line(f"  {problem}", "yellow")
            if list_backends:
                _backend_table(output, backends)
        return NEGATIVE if problems else OK


def _backend_table(output: Output, backends: Backends) -> None:
    output.table(
        ("backend", "healthy", "circuit", "in flight", "ejected", "available", "routes"),
        [
            (
                b.key,
                "yes" if b.healthy else "NO",
                b.circuit.state,
                b.in_flight,
                "yes" if b.outlier.ejected else "no",
                "yes" if b.available else "NO",
                [use.external_path for use in b.routes],
            )
            for b in backends.backends
        ],
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


FORMATS = ("table", "json", "prometheus")


def metrics(target: Target, format: str) -> int:
    output = target.output
    if format not in FORMATS:
        output.fail(f"--format: must be one of {', '.join(FORMATS)} (got {format!r})", FAILED, type="usage")
    with reporting(output), _client(target) as client:
        snapshot = client.metrics()
        if format == "prometheus":
            print(snapshot.text, end="")
            return OK
        figures = snapshot.routes()
        if output.json or format == "json":
            output.emit({"routes": [_figures(f) for f in figures]})
            return OK
        output.table(
            ("route", "requests", "5xx", "error rate", "4xx", "p50 ms", "p99 ms"),
            [
                (f.route, f.requests, f.errors, f"{f.error_rate:.2%}", f.client_errors, f.p50_ms, f.p99_ms)
                for f in figures
            ],
        )
        if not figures:
            output.note("no requests yet")
    return OK


def _figures(figures: RouteFigures) -> dict[str, Any]:
    return {
        "route": figures.route,
        "requests": figures.requests,
        "errors": figures.errors,
        "error_rate": round(figures.error_rate, 6),
        "client_errors": figures.client_errors,
        "p50_ms": figures.p50_ms,
        "p99_ms": figures.p99_ms,
    }


# -- config ------------------------------------------------------------------------------------


def dump(target: Target, out: Path | None) -> int:
    output = target.output
    with reporting(output), _client(target) as client:
        text = json.dumps(client.config.get(), indent=2) + "\n"
        if out is None:
            print(text, end="")
        else:
            write_atomically(out, text, replace=True)
            output.note(f"wrote the live config to {out} (secrets masked as ***)")
    return OK


def diff(target: Target, file: Path) -> int:
    output = target.output
    with reporting(output), _client(target) as client:
        wanted = read_document(file)
        result = diff_documents(client.config.get(), wanted)
        if output.json:
            output.emit(result.as_dict())
            return NEGATIVE if not result.empty else OK
        if result.empty:
            output.line(f"no differences between {file} and the live config at {client.base_url}")
            return OK
        for key in result.added:
            output.line(f"+ route {key}", "green")
        for key in result.removed:
            output.line(f"- route {key}", "red")
        for key, changes in result.changed.items():
            output.line(f"~ route {key}", "yellow")
            for change in changes:
                output.line(f"    {change.path}: {_short(change.live)} -> {_short(change.file)}")
        for change in result.settings:
            output.line(f"~ setting {change.path}: {_short(change.live)} -> {_short(change.file)}", "yellow")
        return NEGATIVE


def _short(value: Any) -> str:
    text = "(absent)" if value is None else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def apply(target: Target, file: Path, dry_run: bool, prune: bool) -> int:
    output = target.output
    with reporting(output), _client(target) as client:
        wanted = read_document(file)
        live = client.routes.list_documents()
        plan = plan_apply(live.routes, wanted, prune)
        settings = diff_documents(client.config.get(), wanted).settings
        if not plan.changes:
            result: dict[str, Any] = {"applied": False, "dry_run": dry_run, **plan.as_dict()}
            result["generation"] = live.generation
            _report_apply(output, result, settings, "nothing to apply: the live routes already match")
            return OK
        answer = client.routes.replace(plan.routes, generation=live.generation, dry_run=dry_run)
        result = {
            "applied": not dry_run,
            "dry_run": dry_run,
            **plan.as_dict(),
            "generation": answer.generation,
            "warnings": answer.warnings,
        }
        _report_apply(output, result, settings, answer.message)
    return OK


def _report_apply(output: Output, result: dict[str, Any], settings: Sequence[Any], message: str) -> None:
    if settings:
        result["settings_not_applied"] = [change.path for change in settings]
    if output.json:
        output.emit(result)
        return
    verb = "would " if result["dry_run"] else ""
    for what, sign in (("created", "+"), ("updated", "~"), ("pruned", "-")):
        for key in result[what]:
            output.line(f"{sign} {verb}{what[:-1] if verb else what} route {key}")
    if result["kept"]:
        output.note(
            f"{len(result['kept'])} live route(s) not in the file left as they are (--prune removes them)"
        )
    for warning in result.get("warnings", []):
        output.note(f"warning: {warning}")
    if settings:
        output.note(
            "settings outside routers differ and are not applied by apply (edit the gateway's config file "
            f"and run kairos reload): {', '.join(result['settings_not_applied'])}"
        )
    output.line(message)


def reload(target: Target) -> int:
    output = target.output
    with reporting(output), _client(target) as client:
        status = client.config.reload()
        if output.json:
            output.emit(status.model_dump(mode="json"))
        else:
            output.line(f"{status.message}: {status.routes} routes from {status.config_file}", "green")
    return OK


# -- routes ------------------------------------------------------------------------------------


def routes_list(target: Target) -> int:
    output = target.output
    with reporting(output), _client(target) as client:
        answer = client.routes.list_documents()
        if output.json:
            output.emit({"generation": answer.generation, "routes": answer.routes})
            return OK
        output.table(
            ("#", "methods", "path", "protocol", "backends", "auth"),
            [
                (
                    index,
                    route.get("methods"),
                    route.get("external_path"),
                    route.get("protocol") or "http",
                    _backends_of(route),
                    "yes" if route.get("auth_required") else "",
                )
                for index, route in enumerate(answer.routes)
            ],
        )
    return OK


def _backends_of(route: dict[str, Any]) -> list[str]:
    backends = route.get("backends")
    if isinstance(backends, list):
        return [f"{b.get('host')}:{b.get('port')}" for b in backends if isinstance(b, dict)]
    if route.get("host") is not None:
        return [f"{route.get('host')}:{route.get('port')}"]
    return []


def routes_show(
    target: Target, path: str, method: str | None, protocol: str | None, index: int | None
) -> int:
    output = target.output
    with reporting(output), _client(target) as client:
        answer = client.routes.get_document(path, method=method, protocol=protocol, index=index)
        if output.json:
            output.emit({"index": answer.index, "route": answer.route})
        else:
            print(json.dumps(answer.route, indent=2))
    return OK


def routes_add(target: Target, file: Path) -> int:
    output = target.output
    with reporting(output), _client(target) as client:
        document = read_document(file)
        routes = document["routers"] if set(document) == {"routers"} else [document]
        if len(routes) == 1:
            answer = client.routes.create(routes[0])
            result: dict[str, Any] = {
                "created": [route_key(answer.route)],
                "generation": answer.generation,
                "warnings": answer.warnings,
            }
            message = answer.message
        else:  # several: one atomic change, all or none
            live = client.routes.list_documents()
            replaced = client.routes.replace([*live.routes, *routes], generation=live.generation)
            result = {
                "created": [route_key(r) for r in routes if isinstance(r, dict)],
                "generation": replaced.generation,
                "warnings": replaced.warnings,
            }
            message = replaced.message
        if output.json:
            output.emit(result)
        else:
            for key in result["created"]:
                output.line(f"+ route {key}", "green")
            for warning in result["warnings"]:
                output.note(f"warning: {warning}")
            output.line(message)
    return OK


def routes_rm(target: Target, path: str, method: str | None, protocol: str | None, index: int | None) -> int:
    output = target.output
    with reporting(output), _client(target) as client:
        answer = client.routes.delete(path, method=method, protocol=protocol, index=index)
        if output.json:
            output.emit(
                {"removed": route_key(answer.route), "index": answer.index, "generation": answer.generation}
            )
        else:
            output.line(f"- route {route_key(answer.route)}", "red")
            output.line(answer.message)
    return OK


def parse_headers(lines: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, separator, value = line.partition(":")
        if not separator or not name.strip():
            raise ValueError(f"-H {line!r}: a header is 'Name: value'")
        headers[name.strip()] = value.strip()
    return headers


def routes_test(target: Target, method: str, path: str, header_lines: Sequence[str]) -> int:
    output = target.output
    with reporting(output), _client(target) as client:
        explanation = client.explain(method, path, parse_headers(header_lines))
        if output.json:
            output.emit(explanation.model_dump(mode="json", exclude_unset=True))
        else:
            _explain_text(output, explanation)
        return OK if explanation.matched else NEGATIVE


def _explain_text(output: Output, explanation: Explanation) -> None:
    request = explanation.request
    asked = f"{request.method} {request.path}" + (f"?{request.query}" if request.query else "")
    route = explanation.route
    if not explanation.matched or route is None:
        answer = f"{explanation.status} {explanation.type}" if explanation.status else explanation.served_by
        output.line(f"{asked}: no route ({answer})", "bold red")
        if explanation.reason:
            output.line(f"  {explanation.reason}")
        for candidate in explanation.candidates:
            output.line(
                f"  candidate {candidate.external_path} (routers[{candidate.index}]): {candidate.reason}"
            )
        return
    output.line(f"{asked} -> {route.external_path} (routers[{route.index}], {route.protocol})", "bold green")
    output.line(f"  {explanation.why}")
    if explanation.params:
        output.line("  params: " + ", ".join(f"{k}={v}" for k, v in explanation.params.items()))
    for other in explanation.other_matching_routes:
        output.line(f"  also matches {other.external_path} (routers[{other.index}]): {other.reason}")
    output.table(
        ("backend", "upstream URL", "healthy", "circuit", "available"),
        [
            (b.key, b.url, "yes" if b.healthy else "NO", b.circuit.state, "yes" if b.available else "NO")
            for b in explanation.backends
        ],
    )
    applied = [
        f"{name} ({policy.get('source')})"
        for name, policy in explanation.policies.items()
        if isinstance(policy, dict) and policy.get("applies")
    ]
    output.line("  policies: " + (", ".join(applied) if applied else "none"))
