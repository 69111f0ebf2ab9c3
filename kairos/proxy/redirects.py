"""Response headers that name the backend, mapped back to the gateway (nginx's ``proxy_redirect
default``, plus ``proxy_cookie_path`` / ``proxy_cookie_domain`` behind an option).

A backend behind a prefix route (``/hb/{*rest}`` -> ``/{rest}``) redirects in its own terms:
``Location: /relative-redirect/2`` or ``Location: http://10.0.0.5:8080/get``. Passed on as they
are, the first sends ``curl -L`` out of the route and the second sends clients to an internal
address. So ``Location``, ``Content-Location`` and ``Refresh`` are rewritten:

- an absolute URL (or a ``//host`` reference) whose origin is one of the route's backends becomes a
  path on the gateway; one on another origin (a login provider, a CDN) is left alone;
- its path, and a path-absolute reference (``/x``), is mapped from ``internal_path`` to
  ``external_path``: matched against the internal template (its parameter holding the external
  catch-all takes the rest of the path), the parameters put into the external template; a
  parameter only the external path has takes this request's value. A path the route's internal
  template does not cover is left as it is (it is not this route's to map);
- under a mount prefix (``root_path``) the prefix is put back in front.

The rewritten reference is relative (``/hb/get``), never rebuilt from the client's ``Host``: the
client resolves it against the URL it asked for, which is the gateway's address whatever proxies
stand in front, and a cached redirect can never carry one client's ``Host`` to another (a cache
poisoning the absolute form would invite). Relative references are valid in all three headers
(RFC 9110 §10.2.2, §8.7).

With ``rewrite_cookies`` a ``Set-Cookie`` ``Path`` is mapped the same way (a path that covers the
route's internal prefix becomes the external prefix) and a ``Domain`` naming a backend host is
dropped, so the cookie belongs to the gateway's host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from kairos.config.path_template import CatchAll, Literal, Param, PathTemplate, Pattern

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_HTTP_OF = {"ws": "http", "wss": "https"}
_ROOT_SAFE = "/!$&'()*+,;=:@-._~"


@dataclass(frozen=True, slots=True)
class RedirectRewriter:
    """One route's mapping from the backend's URL space to the gateway's, built at config load."""

    origins: frozenset[tuple[str, str, int]]  # (http scheme, host, port) of the route's backends
    hosts: frozenset[str]  # the backends' host names, lower-case (for cookie domains)
    internal: PathTemplate  # with the parameter that holds the external catch-all made a catch-all
    build_external: Callable[[Mapping[str, str]], str]  # the external template's path builder
    external_names: tuple[str, ...]
    internal_prefix: str  # the internal path's literal segments up to its first parameter
    external_prefix: str
    names: frozenset[bytes]  # the response header names this rewriter looks at

    @classmethod
    def build(
        cls,
        internal: PathTemplate,
        external: PathTemplate,
        build_external: Callable[[Mapping[str, str]], str],
        backends: list[tuple[str, str, int]],
        locations: bool = True,
        cookies: bool = False,
    ) -> RedirectRewriter:
        """``build_external`` fills the external template (catch-all values inserted as they are,
        the others encoded for one segment: the route's forward builder, used backwards)."""
        tail = external.catch_all
        segments = list(internal.segments)
        if segments and isinstance(segments[-1], Param) and segments[-1].name == tail:
            segments[-1] = CatchAll(segments[-1].name)
        names: set[bytes] = set()
        if locations:
            names |= {b"location", b"content-location", b"refresh"}
        if cookies:
            names.add(b"set-cookie")
        return cls(
            origins=frozenset(
                (_HTTP_OF.get(scheme, scheme), host.lower(), port) for scheme, host, port in backends
            ),
            hosts=frozenset(host.lower() for _, host, _ in backends),
            internal=PathTemplate(internal.source, tuple(segments)),
            build_external=build_external,
            external_names=external.param_names,
            internal_prefix=_literal_prefix(internal),
            external_prefix=_literal_prefix(external),
            names=frozenset(names),
        )

    def rewrite(self, name: bytes, value: bytes, params: Mapping[str, str], root: str) -> bytes:
        """The header's new value (``value`` itself when nothing in it is the backend's)."""
        if name not in self.names:
            return value
        try:
            text = value.decode("latin-1")
            if name == b"set-cookie":
                new = self._cookie(text, root)
            elif name == b"refresh":
                new = self._refresh(text, params, root)
            else:
                new = self.reference(text, params, root)
        except ValueError:  # an unparsable URL is passed on as the backend wrote it
            return value
        return value if new is None else new.encode("latin-1")

    def reference(self, text: str, params: Mapping[str, str], root: str) -> str | None:
        """A rewritten URI reference, or None to keep it."""
        stripped = text.strip()
        if not stripped:
            return None
        try:
            parts = urlsplit(stripped)
            port = parts.port
        except ValueError:  # an unparsable URL is passed on as the backend wrote it
            return None
        if parts.netloc or parts.scheme:
            if not self._is_backend(parts.scheme, parts.hostname, port):
                return None
            path = parts.path or "/"
            mapped = self._map_path(path, params, root)
            target = mapped if mapped is not None else (_root(root) + path if root else path)
        elif stripped.startswith("/"):
            mapped = self._map_path(parts.path, params, root)
            if mapped is None:
                return None
            target = mapped
        else:
            return None  # relative to the request's own URL, which is already the gateway's
        if parts.query:
            target += "?" + parts.query
        if parts.fragment:
            target += "#" + parts.fragment
        return target

    def _is_backend(self, scheme: str, host: str | None, port: int | None) -> bool:
        if host is None:
            return False
        if not scheme:  # "//host/x": the request's scheme; accept any of the route's
            return any(
                host.lower() == origin[1] and (port is None or port == origin[2]) for origin in self.origins
            )
        scheme = _HTTP_OF.get(scheme.lower(), scheme.lower())
        effective = port if port is not None else _DEFAULT_PORTS.get(scheme)
        return (scheme, host.lower(), effective or 0) in self.origins

    def _map_path(self, path: str, params: Mapping[str, str], root: str) -> str | None:
        found = _reverse_match(self.internal, path)
        if found is None:
            return None
        values = {**params, **found}
        if any(name not in values for name in self.external_names):
            return None
        built = self.build_external(values)
        return _root(root) + built if root else built

    def _refresh(self, text: str, params: Mapping[str, str], root: str) -> str | None:
        """``Refresh: 5; url=/x`` (the HTML meta refresh form browsers honour as a header)."""
        delay, separator, rest = text.partition(";")
        if not separator:
            return None
        key, equals, url = rest.strip().partition("=")
        if not equals or key.strip().lower() != "url":
            return None
        quote_char = url[:1] if url[:1] in ("'", '"') and url.endswith(url[:1]) and len(url) > 1 else ""
        inner = url[1:-1] if quote_char else url
        new = self.reference(inner, params, root)
        if new is None:
            return None
        return f"{delay}; url={quote_char}{new}{quote_char}"

    def _cookie(self, text: str, root: str) -> str | None:
        pieces = text.split(";")
        changed = False
        kept = [pieces[0]]
        for piece in pieces[1:]:
            key, equals, value = piece.strip().partition("=")
            lowered = key.strip().lower()
            if lowered == "path" and equals:
                mapped = self._cookie_path(value.strip(), root)
                if mapped is not None:
                    kept.append(f" Path={mapped}")
                    changed = True
                    continue
            elif lowered == "domain" and equals and value.strip().lstrip(".").lower() in self.hosts:
                changed = True  # a backend's domain: dropped, the cookie is the gateway host's
                continue
            kept.append(piece)
        return ";".join(kept) if changed else None

    def _cookie_path(self, path: str, root: str) -> str | None:
        """A cookie path covers a prefix: mapped like a redirect when the template matches it,
        else by the routes' literal prefixes (a path covering the internal prefix becomes the
        external prefix)."""
        if not path.startswith("/"):
            return None
        mapped = self._map_path(path, {}, root)
        if mapped is not None:
            return mapped
        inside, outside = self.internal_prefix, self.external_prefix
        if path.startswith(inside) and (
            len(path) == len(inside) or inside.endswith("/") or path[len(inside)] == "/"
        ):
            result = (
                outside.rstrip("/") + "/" + path[len(inside) :].lstrip("/") if path != inside else outside
            )
        elif inside.startswith(path):
            result = outside
        else:
            return None
        return _root(root) + result if root else result


def _root(root: str) -> str:
    return quote(root.rstrip("/"), safe=_ROOT_SAFE)


def _literal_prefix(template: PathTemplate) -> str:
    literals: list[str] = []
    for segment in template.segments:
        if not isinstance(segment, Literal):
            return "/" + "/".join(literals) + ("/" if literals else "")
        literals.append(quote(segment.text, safe="!$&'()*+,;=:@-._~"))
    return "/" + "/".join(literals)


def _reverse_match(template: PathTemplate, path: str) -> dict[str, str] | None:
    """The parameters that would have built ``path`` from ``template``: decoded values for single
    segments, the raw rest of the path for the catch-all (as the matcher hands catch-alls on)."""
    raw_segments = path[1:].split("/") if path.startswith("/") else [path]
    found: dict[str, str] = {}
    segments = template.segments
    for position, segment in enumerate(segments):
        if isinstance(segment, CatchAll):
            found[segment.name] = "/".join(raw_segments[position:])
            return found
        if position >= len(raw_segments):
            return None
        raw = raw_segments[position]
        value = unquote(raw)
        if isinstance(segment, Literal):
            if value != segment.text:
                return None
        elif isinstance(segment, Param):
            if not value:
                return None
            found[segment.name] = value
        elif isinstance(segment, Pattern):
            values = segment.values(value)
            if values is None:
                return None
            found.update(values)
    return found if len(raw_segments) == len(segments) else None
