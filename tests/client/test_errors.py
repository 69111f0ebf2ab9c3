"""What goes wrong, as the client reports it (sync and async): a missing or wrong admin token, a
gateway that is down or never answers, reads retried and writes never, and where the admin API is
(found through ``/health``). Against the real gateway with a token, and local servers that
misbehave on purpose (tests/client/helpers.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kairos.client import (
    KairosAPIError,
    KairosConnectionError,
    KairosTimeout,
    NotFound,
    Unauthorized,
)
from tests.client.conftest import GUARDED_PREFIX, TOKEN, Flavour, Gateway
from tests.client.helpers import RESET, ScriptedServer, SilentServer
from tests.client.test_client import take
from tests.processes import backend, free_port, route

HEALTHY = (200, {"status": "healthy", "timestamp": "2026-12-02T09:00:00Z", "admin_prefix": "/api"})
UNAVAILABLE = (503, {"error": "no healthy upstream", "type": "unavailable"})
ROUTE_LIST = (
    200,
    {
        "success": True,
        "message": "Found 1 routes",
        "routes": [route("/x/{id}", "/y/{id}", [backend(8080)])],
        "generation": 4,
    },
)
PURGED = (200, {"success": True, "message": "Purged 3 cached responses", "purged": 3, "seconds": 0.001})


def healthy_at(prefix: str) -> tuple[int, dict[str, Any]]:
    return 200, {**HEALTHY[1], "admin_prefix": prefix}


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


# -- the admin token ---------------------------------------------------------------------------


def test_no_token_is_unauthorized_and_the_error_names_the_setting(flavour: Flavour, guarded: Gateway) -> None:
    kairos = flavour.connect(guarded.url)
    assert kairos.health().status == "healthy"  # /health needs no token
    with pytest.raises(Unauthorized) as refused:
        kairos.routes.list()
    assert refused.value.status == 401 and refused.value.type == "authentication_error"
    assert "KAIROS_ADMIN_TOKEN" in str(refused.value) and "KAIROS_ADMIN_TOKEN" in refused.value.message
    assert "missing" in refused.value.message
    with pytest.raises(Unauthorized) as wrong:
        flavour.connect(guarded.url, token=TOKEN + "x").config.status()
    assert wrong.value.status == 401 and "invalid token" in wrong.value.message
    assert "KAIROS_ADMIN_TOKEN" in wrong.value.message


def test_the_right_token_is_accepted(flavour: Flavour, guarded: Gateway) -> None:
    kairos = flavour.connect(guarded.url, token=TOKEN)
    assert [item.external_path for item in kairos.routes.list()] == ["/users/{id}"]
    assert kairos.config.status().success is True
    assert kairos.explain("GET", "/users/3").params == {"id": "3"}
    [event] = take(kairos.stream_metrics(), 1)  # the stream is behind the same guard
    assert event.type == "Snapshot"


def test_the_metrics_stream_without_the_token_is_unauthorized(flavour: Flavour, guarded: Gateway) -> None:
    with pytest.raises(Unauthorized) as refused:
        take(flavour.connect(guarded.url).stream_metrics(), 1)
    assert refused.value.status == 401 and "KAIROS_ADMIN_TOKEN" in refused.value.message
    with pytest.raises(Unauthorized):
        take(flavour.connect(guarded.url, token=TOKEN + "x").stream_metrics(), 1)


def test_url_and_token_from_the_environment(
    flavour: Flavour, guarded: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAIROS_URL", guarded.url + "/")
    monkeypatch.setenv("KAIROS_ADMIN_TOKEN", TOKEN)
    kairos = flavour.connect()
    assert kairos.base_url == guarded.url
    assert kairos.routes.get("/users/{id}").internal_path == "/echo/users/{id}"
    # An explicit token wins over the environment.
    with pytest.raises(Unauthorized):
        flavour.connect(token="not-the-token").routes.list()


# -- the admin prefix --------------------------------------------------------------------------


def test_the_admin_prefix_is_found_through_health(flavour: Flavour, guarded: Gateway) -> None:
    kairos = flavour.connect(guarded.url, token=TOKEN)
    assert kairos.admin_prefix == GUARDED_PREFIX
    assert kairos.routes.list_documents().generation == kairos.ready().config_generation


def test_the_admin_prefix_given_or_from_the_environment(
    flavour: Flavour, guarded: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = flavour.connect(guarded.url, token=TOKEN, admin_prefix="admin/")
    assert given.admin_prefix == "/admin" and given.routes.list()
    # A prefix given is used as given: /api/routes is no admin path on this gateway (no route there).
    with pytest.raises(NotFound) as elsewhere:
        flavour.connect(guarded.url, token=TOKEN, admin_prefix="/api").routes.list()
    assert elsewhere.value.type == "route_not_found"
    monkeypatch.setenv("KAIROS_ADMIN_PREFIX", "/admin")
    assert flavour.connect(guarded.url, token=TOKEN).admin_prefix == "/admin"


def test_the_prefix_is_asked_once_per_client(flavour: Flavour, scripted: ScriptedServer) -> None:
    scripted.script.plan("GET", "/health", healthy_at("/custom"))
    scripted.script.plan("GET", "/custom/routes", ROUTE_LIST)
    kairos = flavour.connect(scripted.url)
    assert [item.external_path for item in kairos.routes.list()] == ["/x/{id}"]
    assert kairos.routes.list_documents().generation == 4
    assert scripted.script.seen == [("GET", "/health"), ("GET", "/custom/routes"), ("GET", "/custom/routes")]


def test_finding_the_prefix_is_retried_like_any_read(flavour: Flavour, scripted: ScriptedServer) -> None:
    """/health answering 503 once (a gateway restarting behind a load balancer) must not leave the
    client on the default /api for good."""
    scripted.script.plan("GET", "/health", UNAVAILABLE, healthy_at("/custom"))
    scripted.script.plan("GET", "/custom/routes", ROUTE_LIST)
    kairos = flavour.connect(scripted.url, max_retries=2)
    assert [item.external_path for item in kairos.routes.list()] == ["/x/{id}"]
    assert scripted.script.count("GET", "/health") == 2


# -- no answer ---------------------------------------------------------------------------------


def test_a_gateway_that_is_down(flavour: Flavour) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    expected = f"cannot reach the gateway at {url}: connection refused"
    with pytest.raises(KairosConnectionError) as down:
        flavour.connect(url, max_retries=0).health()
    assert type(down.value) is KairosConnectionError and str(down.value) == expected
    assert down.value.url == url and down.value.reason == "connection refused"
    with pytest.raises(KairosConnectionError) as retried:  # reads are retried, then give up
        flavour.connect(url, admin_prefix="/api").routes.list()
    assert str(retried.value) == expected
    with pytest.raises(KairosConnectionError) as stream:
        take(flavour.connect(url).stream_metrics(), 1)
    assert str(stream.value) == expected


def test_a_gateway_that_never_answers(flavour: Flavour) -> None:
    with SilentServer() as silent:
        started = time.monotonic()
        with pytest.raises(KairosTimeout) as slow:
            flavour.connect(silent.url, timeout=0.3, max_retries=0).health()
        assert time.monotonic() - started < 5
        assert (
            str(slow.value)
            == f"cannot reach the gateway at {silent.url}: no answer within 0.3 s (ReadTimeout)"
        )
        assert len(silent.accepted) == 1
        with pytest.raises(KairosTimeout):  # a read that timed out is retried
            flavour.connect(silent.url, timeout=0.3, max_retries=1).health()
        assert len(silent.accepted) == 3


def test_a_metrics_stream_that_never_opens_times_out(flavour: Flavour) -> None:
    with SilentServer() as silent:
        started = time.monotonic()
        with pytest.raises(KairosTimeout):
            take(flavour.connect(silent.url, timeout=0.3).stream_metrics(), 1)
        assert time.monotonic() - started < 5


# -- retries -----------------------------------------------------------------------------------


def test_a_read_answered_503_is_retried(flavour: Flavour, scripted: ScriptedServer) -> None:
    scripted.script.plan("GET", "/health", UNAVAILABLE, UNAVAILABLE, HEALTHY)
    assert flavour.connect(scripted.url, max_retries=2).health().status == "healthy"
    assert scripted.script.count("GET", "/health") == 3


def test_retries_are_bounded(flavour: Flavour, scripted: ScriptedServer) -> None:
    scripted.script.plan("GET", "/health", UNAVAILABLE, UNAVAILABLE, HEALTHY)
    with pytest.raises(KairosAPIError) as failed:
        flavour.connect(scripted.url, max_retries=1).health()
    assert type(failed.value) is KairosAPIError
    assert failed.value.status == 503 and failed.value.type == "unavailable"
    assert failed.value.message == "no healthy upstream"
    assert scripted.script.count("GET", "/health") == 2


def test_no_retries_is_one_attempt(flavour: Flavour, scripted: ScriptedServer) -> None:
    scripted.script.plan("GET", "/health", UNAVAILABLE, HEALTHY)
    with pytest.raises(KairosAPIError) as failed:
        flavour.connect(scripted.url, max_retries=0).health()
    assert failed.value.status == 503
    assert scripted.script.count("GET", "/health") == 1


def test_a_read_whose_connection_is_reset_is_retried(flavour: Flavour, scripted: ScriptedServer) -> None:
    scripted.script.plan("GET", "/api/routes", RESET, RESET, ROUTE_LIST)
    kairos = flavour.connect(scripted.url, max_retries=2, admin_prefix="/api")
    assert [item.external_path for item in kairos.routes.list()] == ["/x/{id}"]
    assert scripted.script.count("GET", "/api/routes") == 3


def test_a_write_answered_503_is_sent_once(flavour: Flavour, scripted: ScriptedServer) -> None:
    scripted.script.plan("POST", "/api/cache/purge", UNAVAILABLE, PURGED)
    kairos = flavour.connect(scripted.url, max_retries=2, admin_prefix="/api")
    with pytest.raises(KairosAPIError) as failed:
        kairos.cache.purge()
    assert failed.value.status == 503
    assert scripted.script.count("POST", "/api/cache/purge") == 1
    assert kairos.cache.purge(route="/x/{id}").purged == 3  # the next call is a new request
    assert scripted.script.count("POST", "/api/cache/purge") == 2


def test_a_write_whose_connection_is_reset_is_sent_once(flavour: Flavour, scripted: ScriptedServer) -> None:
    kairos = flavour.connect(scripted.url, max_retries=2, admin_prefix="/api")
    new = route("/x/{id}", "/y/{id}", [backend(8080)])
    writes: list[tuple[str, str, Callable[[], object]]] = [
        ("POST", "/api/routes", lambda: kairos.routes.create(new)),
        ("PUT", "/api/routes/x/%7Bid%7D", lambda: kairos.routes.update(new)),
        ("DELETE", "/api/routes/x/%7Bid%7D", lambda: kairos.routes.delete("/x/{id}")),
        ("PUT", "/api/routes", lambda: kairos.routes.replace([new], generation=4)),
        ("POST", "/api/config/reload", lambda: kairos.config.reload()),
        ("POST", "/api/routes/validate", lambda: kairos.routes.validate(new)),
    ]
    for method, path, write in writes:
        scripted.script.plan(method, path, RESET, (500, {"error": "must not be reached", "type": "internal"}))
        with pytest.raises(KairosConnectionError):
            write()
        assert scripted.script.count(method, path) == 1, (method, path)


def test_arguments_are_checked(flavour: Flavour) -> None:
    with pytest.raises(ValueError, match="max_retries"):
        flavour.connect("http://127.0.0.1:1", max_retries=-1)
    with pytest.raises(ValueError, match="base_url"):
        flavour.connect("ftp://127.0.0.1:1")
