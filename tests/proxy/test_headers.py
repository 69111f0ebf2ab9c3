"""Header rules of the proxy, checked directly (the integration tests cover them end to end)."""

from __future__ import annotations

import ipaddress

from kairos.proxy.headers import ClientAddress, downstream_response_headers, upstream_request_headers


def up(
    headers: list[tuple[bytes, bytes]], trusted: bool = False, websocket: bool = False
) -> dict[str, list[str]]:
    prepared = upstream_request_headers(
        headers, peer="10.0.0.9", peer_trusted=trusted, scheme="https", request_id="rid", websocket=websocket
    )
    grouped: dict[str, list[str]] = {}
    for name, value in prepared.headers:
        grouped.setdefault(name, []).append(value)
    return grouped


def test_connection_named_and_hop_by_hop_headers_are_dropped() -> None:
    headers = up(
        [
            (b"connection", b"keep-alive, X-Secret"),
            (b"connection", b"x-other"),
            (b"x-secret", b"1"),
            (b"x-other", b"2"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-foo", b"bar"),
            (b"te", b"trailers"),
            (b"x-kept", b"3"),
        ]
    )
    assert set(headers) == {"x-kept", "x-forwarded-for", "x-forwarded-proto", "x-request-id"}


def test_forwarded_headers_from_untrusted_and_trusted_peers() -> None:
    sent = [
        (b"host", b"api.example"),
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-forwarded-host", b"evil"),
        (b"x-forwarded-proto", b"http"),
    ]
    untrusted = up(sent)
    assert untrusted["x-forwarded-for"] == ["10.0.0.9"]
    assert untrusted["x-forwarded-host"] == ["api.example"]
    assert untrusted["x-forwarded-proto"] == ["https"]
    trusted = up(sent, trusted=True)
    assert trusted["x-forwarded-for"] == ["1.1.1.1, 10.0.0.9"]
    assert trusted["x-forwarded-host"] == ["evil"]
    assert trusted["x-forwarded-proto"] == ["http"]
    assert "host" not in trusted  # the engine sets Host from the upstream URL


def test_body_framing_is_reported_and_smuggling_shape_is_neutralised() -> None:
    sized = upstream_request_headers(
        [(b"content-length", b"12")], peer="p", peer_trusted=False, scheme="http", request_id="r"
    )
    assert (sized.content_length, sized.chunked) == (12, False)
    both = upstream_request_headers(
        [(b"content-length", b"12"), (b"transfer-encoding", b"chunked")],
        peer="p",
        peer_trusted=False,
        scheme="http",
        request_id="r",
    )
    assert both.chunked and both.content_length is None
    assert all(name not in ("content-length", "transfer-encoding") for name, _ in both.headers)


def test_websocket_handshake_headers_are_left_to_the_client_library() -> None:
    headers = up(
        [(b"sec-websocket-key", b"k"), (b"sec-websocket-protocol", b"chat"), (b"cookie", b"a=1")],
        websocket=True,
    )
    assert "sec-websocket-key" not in headers and "sec-websocket-protocol" not in headers
    assert headers["cookie"] == ["a=1"]


def test_response_headers_keep_repeats_and_drop_hop_by_hop_and_date() -> None:
    out = downstream_response_headers(
        [
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
            (b"Connection", b"X-Hop"),
            (b"X-Hop", b"1"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Date", b"Mon"),
            (b"X-Request-ID", b"upstream's"),
        ],
        b"ours",
    )
    assert out == [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"x-request-id", b"ours")]


def test_client_address_walks_the_chain_from_the_right() -> None:
    resolver = ClientAddress([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.1/32")])
    chain = [(b"x-forwarded-for", b"203.0.113.7, 198.51.100.2, 192.168.1.1")]
    assert resolver.resolve("10.1.1.1", chain) == "198.51.100.2"  # first untrusted hop from the right
    assert resolver.resolve("8.8.8.8", chain) == "8.8.8.8"  # untrusted peer: header ignored
    assert resolver.resolve("10.1.1.1", [(b"x-forwarded-for", b"10.2.2.2")]) == "10.2.2.2"
    assert resolver.resolve("10.1.1.1", []) == "10.1.1.1"
    assert resolver.resolve("10.1.1.1", [(b"x-forwarded-for", b"not-an-ip")]) == "10.1.1.1"
    garbage_left = [(b"x-forwarded-for", b"203.0.113.7, junk, 10.3.3.3")]
    assert resolver.resolve("10.1.1.1", garbage_left) == "10.3.3.3"  # last address vouched for
    assert resolver.resolve("10.1.1.1", [(b"x-forwarded-for", b"2001:db8::1")]) == "2001:db8::1"


def test_source_address_headers_pass_only_from_a_trusted_proxy() -> None:
    sent = [(b"x-real-ip", b"6.6.6.6"), (b"forwarded", b"for=6.6.6.6"), (b"true-client-ip", b"6.6.6.6")]
    assert not {"x-real-ip", "forwarded", "true-client-ip"} & set(up(sent))
    trusted = up(sent, trusted=True)
    assert trusted["x-real-ip"] == ["6.6.6.6"] and trusted["forwarded"] == ["for=6.6.6.6"]


def test_forwarded_element_for_this_hop() -> None:
    def element(peer: str, headers: list[tuple[bytes, bytes]], trusted: bool) -> str:
        prepared = upstream_request_headers(
            headers, peer=peer, peer_trusted=trusted, scheme="https", request_id="r", emit_forwarded=True
        )
        return dict(prepared.headers)["forwarded"]

    assert element("10.0.0.9", [(b"host", b"api")], False) == "for=10.0.0.9;host=api;proto=https"
    assert element("::1", [(b"host", b"a:8")], False) == 'for="[::1]";host="a:8";proto=https'
    assert element("unix-socket", [], False) == "for=unknown;proto=https"
    spoofed = [(b"forwarded", b"for=6.6.6.6"), (b"host", b"h")]
    assert element("10.0.0.9", spoofed, False) == "for=10.0.0.9;host=h;proto=https"
    assert element("10.0.0.9", spoofed, True) == "for=6.6.6.6, for=10.0.0.9;host=h;proto=https"
    assert element("10.0.0.9", [(b"host", b'a"b\\')], False) == 'for=10.0.0.9;host="a\\"b\\\\";proto=https'


def test_the_upstreams_server_header_is_dropped() -> None:
    out = downstream_response_headers([(b"Server", b"nginx/1.2"), (b"x-a", b"1")], b"rid")
    assert out == [(b"x-a", b"1"), (b"x-request-id", b"rid")]
