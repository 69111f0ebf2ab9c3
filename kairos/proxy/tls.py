"""Client TLS settings for upstream connections (``tls_ca_file`` / ``tls_verify`` on a backend).

Built once when the route table is compiled, never per request. ``None`` means the engines'
default: verify against the system trust store.
"""

from __future__ import annotations

import ssl


def client_context(ca_file: str | None, verify: bool, http2: bool = False) -> ssl.SSLContext | None:
    """ALPN offers h2 only for backends marked ``http2`` (served by the HTTP/2 engine); the HTTP/1.1
    engines must never be handed an h2 connection."""
    if ca_file is None and verify:
        return None
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    return context
