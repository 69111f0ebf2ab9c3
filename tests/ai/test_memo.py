"""The context memo (kairos/ai/context.py ``ContextMemo``): a repeated request reuses the redacted
context built for it, and nothing that would change what the model sees can reuse another's (pure
logic: no server needed; the end-to-end effects are in test_ai_routing.py)."""

from __future__ import annotations

import random

import pytest

from kairos.ai.context import MEMO_MAX_ENTRY_BYTES, ContextMemo, body_bytes_used, build_context, raw_key

JSON = (b"content-type", b"application/json")
HEADERS = [(b"host", b"gw:8000"), (b"user-agent", b"client/1.0"), JSON]
BODY = b'{"message": "refund please, I am jane.doe@example.com"}'


def request(
    path: bytes = b"/ai/route",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = BODY,
    limit: int = 500,
) -> tuple[str, bytes, bytes, list[tuple[bytes, bytes]], bytes, int]:
    return ("POST", path, query, HEADERS if headers is None else headers, body, limit)


def test_a_repeat_reuses_the_context_and_its_fingerprint() -> None:
    memo = ContextMemo()
    first = memo.context(*request())
    again = memo.context(*request(body=bytes(BODY), headers=[(bytes(n), bytes(v)) for n, v in HEADERS]))
    assert again is first and memo.hits == 1 and len(memo) == 1  # equal inputs, not the same objects
    assert first == build_context(*request())
    assert first.digest == build_context(*request()).fingerprint()  # computed once, when built


def test_volatile_and_credential_headers_neither_split_nor_enter_the_key() -> None:
    memo = ContextMemo()
    first = memo.context(
        *request(headers=[*HEADERS, (b"x-request-id", b"r-1"), (b"authorization", b"Bearer a")])
    )
    again = memo.context(
        *request(headers=[*HEADERS, (b"x-request-id", b"r-2"), (b"authorization", b"Bearer b")])
    )
    assert again is first  # neither reaches the context, so neither makes a new one
    key = repr(raw_key(*request(headers=[*HEADERS, (b"cookie", b"session=s3cr3t"), (b"x-api-key", b"k3y")])))
    assert "s3cr3t" not in key and "k3y" not in key
    assert "jane.doe" not in key and b"refund" not in raw_key(*request())  # the body is a digest


def test_what_the_model_would_see_differently_never_shares_a_context() -> None:
    memo = ContextMemo()
    base = memo.context(*request())
    variants = [
        request(path=b"/ai/other"),
        request(query=b"order=7"),
        request(headers=[*HEADERS, (b"x-tenant", b"acme")]),
        request(headers=[(b"host", b"gw:8000"), (b"user-agent", b"client/2.0"), JSON]),
        request(
            headers=[(b"host", b"gw:8000"), (b"user-agent", b"client/1.0"), (b"content-type", b"image/png")]
        ),
        request(body=BODY.replace(b"refund", b"search")),
        request(limit=10),
    ]
    for variant in variants:
        context = memo.context(*variant)
        assert context == build_context(*variant)
        assert context.fingerprint() != base.fingerprint(), variant
    assert memo.hits == 0


def test_a_different_secret_is_another_entry_with_the_same_fingerprint() -> None:
    """Two e-mails redact to the same context: separate memo entries, one shared decision."""
    memo = ContextMemo()
    jane = memo.context(*request())
    john = memo.context(*request(body=BODY.replace(b"jane.doe", b"john.roe")))
    assert john is not jane and len(memo) == 2
    assert john.fingerprint() == jane.fingerprint() and "[REDACTED:email]" in john.body


def test_the_key_ignores_only_what_the_context_cuts_off() -> None:
    long_value = b"v" * 300
    cut = raw_key(*request(headers=[(b"x-long", long_value + b"1")]))
    assert cut == raw_key(*request(headers=[(b"x-long", long_value + b"2")]))  # past 200 characters
    assert raw_key(*request(headers=[(b"content-type", b"text/plain;" + long_value + b"1")])) != raw_key(
        *request(headers=[(b"content-type", b"text/plain;" + long_value + b"2")])
    )  # content-type is read whole (is it textual?)
    used = body_bytes_used(10)
    assert raw_key(*request(body=b"a" * used + b"x", limit=10)) == raw_key(
        *request(body=b"a" * used, limit=10)
    )
    assert raw_key(*request(body=b"a" * (used - 1) + b"x", limit=10)) != raw_key(
        *request(body=b"a" * used, limit=10)
    )


def test_least_recently_used_entries_go_first() -> None:
    memo = ContextMemo(max_entries=2)
    a = memo.context(*request(path=b"/a"))
    memo.context(*request(path=b"/b"))
    assert memo.context(*request(path=b"/a")) is a  # a is now the most recently used
    memo.context(*request(path=b"/c"))  # evicts b
    assert len(memo) == 2
    assert memo.context(*request(path=b"/a")) is a
    hits = memo.hits
    memo.context(*request(path=b"/b"))
    assert memo.hits == hits  # b was rebuilt
    memo.clear()
    assert len(memo) == 0


def test_a_request_too_large_to_remember_is_built_each_time() -> None:
    memo = ContextMemo()
    big = [*HEADERS, *((f"x-h{i}".encode(), b"v" * 200) for i in range(MEMO_MAX_ENTRY_BYTES // 200))]
    first = memo.context(*request(headers=big))
    again = memo.context(*request(headers=big))
    assert again == first and again is not first and len(memo) == 0
    assert memo.context(*request(query=b"q=" + b"x" * 900)) is memo.context(
        *request(query=b"q=" + b"x" * 900)
    )


PIECES = [
    "refund", "search", " ", "\n\t", "jane@example.com", "4111 1111 1111 1111", "Bearer abc.def",
    "sk-live-ZZ9aa8BB7cc6DD5ee4FF", '"password": "x"', "token=t0k", "é", "€", "😀", "\ufffd", "a" * 40,
]  # fmt: skip


Request = tuple[str, bytes, bytes, list[tuple[bytes, bytes]], bytes, int]


def random_request(rng: random.Random) -> Request:
    limit = rng.choice([0, 5, 20])
    text = "".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 12)))
    body = text.encode() + rng.choice([b"", b"\xc3", b"\xe2\x82", b"\xff"])
    headers = rng.sample(
        [(b"host", b"h"), (b"x-tenant", rng.choice([b"acme", b"beta"])), (b"x-request-id", b"1"),
         (b"content-type", rng.choice([b"application/json", b"application/octet-stream"])),
         (b"user-agent", rng.choice(PIECES).encode())],
        k=rng.randrange(0, 5),
    )  # fmt: skip
    path = rng.choice([b"/a", b"/b/jane@example.com"])
    return ("POST", path, rng.choice([b"", b"q=1"]), headers, body, limit)


@pytest.mark.parametrize("seed", range(4))
def test_memo_answers_exactly_what_build_context_builds(seed: int) -> None:
    """Random requests, repeated (equal, not identical objects) and mutated by a byte (multi-byte
    characters and secrets around the preview's cut, headers in any order): whatever the memo
    answers is what build_context builds."""
    rng = random.Random(seed)
    memo = ContextMemo(max_entries=64)
    pool = [random_request(rng) for _ in range(40)]
    for _ in range(600):
        method, path, query, headers, body, limit = rng.choice(pool)
        if body and rng.random() < 0.3:
            at = rng.randrange(len(body))
            body = body[:at] + bytes([rng.randrange(256)]) + body[at + 1 :]
        args = (method, bytes(path), bytes(query), [(bytes(n), bytes(v)) for n, v in headers], body, limit)
        context = memo.context(*args)
        assert context == build_context(*args), args
        assert context.fingerprint() == build_context(*args).fingerprint()
    assert memo.hits > 100  # the point: repeats were answered from the memo
