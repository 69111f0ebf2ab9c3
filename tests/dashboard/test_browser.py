"""The dashboard in a real browser: headless Chromium driving the dashboard the gateway serves at
``/admin`` (one ``python -m kairos run`` gateway with an admin token for the module), and once the
standalone dashboard process (``uvicorn admin.app:app``) in front of that gateway.

Every test watches its page (tests/dashboard/conftest.py): nothing may be fetched from another
host and the console must stay free of errors, CSP violations included.

``KAIROS_SCREENSHOTS=1`` makes test_every_page_in_light_and_dark write the documentation's
screenshots to docs/img/dashboard/.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, StorageState, expect
from playwright.sync_api import Error as PlaywrightError

from tests.dashboard.conftest import Tab
from tests.processes import ROOT, Server, free_port, kairos_run, server_process, stop, upstream_server

TOKEN = "dashboard-admin-token-0123456789"
SCREENSHOTS = ROOT / "docs" / "img" / "dashboard"
COOKIE = "kairos_session"
NO_VALUE = "\u2013"  # the en dash a live counter shows before the first frame of the event stream
NAV_LINKS = ("Overview", "Routes", "Backends", "Config", "AI routing", "LLM", "Metrics")


def route(path: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "external_path": path,
        "internal_path": "/echo",
        "methods": ["GET"],
        "backends": [{"host": "http://127.0.0.1", "port": port}],
        **extra,
    }


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, upstream: Server, upstream_b: Server) -> Iterator[Server]:
    users = route("/users/{id}", upstream.port, methods=["GET", "PUT", "DELETE"])
    users["backends"].append({"host": "http://127.0.0.1", "port": upstream_b.port})
    users["retry"] = {"max_retries": 2}
    config = {"version": 1, "routers": [route("/hello/{name}", upstream.port), users]}
    env = {"KAIROS_ADMIN_TOKEN": TOKEN, "KAIROS_METRICS_HISTORY_INTERVAL": "1"}
    with kairos_run(module_tmp, config, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def api(gateway: Server) -> Iterator[httpx.Client]:
    """The gateway's admin API with the token."""
    headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=f"{gateway.url}/api", headers=headers, timeout=10) as client:
        yield client


@pytest.fixture
def board(gateway: Server) -> str:
    """The dashboard the gateway serves."""
    return f"{gateway.url}/admin"


@pytest.fixture(scope="module")
def session(browser: Browser, gateway: Server) -> StorageState:
    """A session, logged in once through the login page; the tests not about logging in start
    with its cookie in their fresh context."""
    context = browser.new_context()
    try:
        login(context.new_page(), f"{gateway.url}/admin")
        return context.storage_state()
    finally:
        context.close()


@pytest.fixture
def signed_in(tabs: Callable[..., Tab], session: StorageState) -> Callable[..., Tab]:
    """Like ``tabs``, the context holding the module's session cookie."""

    def open_tab(**options: Any) -> Tab:
        return tabs(storage_state=session, **options)

    return open_tab


def login(page: Page, board: str, token: str = TOKEN) -> None:
    page.goto(f"{board}/login")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{board}/")
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()


def first_frame(page: Page) -> None:
    """Waits for the overview's first live frame (the counters filled by the event stream)."""
    expect(page.locator('[data-stat="rps"]')).not_to_have_text(NO_VALUE, timeout=15_000)


def running_routes(api: httpx.Client) -> list[dict[str, Any]]:
    answer = api.get("/routes")
    answer.raise_for_status()
    routes: list[dict[str, Any]] = answer.json()["routes"]
    return routes


def the_route(api: httpx.Client, path: str) -> dict[str, Any] | None:
    return next((r for r in running_routes(api) if r["external_path"] == path), None)


def add_route(api: httpx.Client, document: dict[str, Any]) -> None:
    answer = api.post("/routes", json=document)
    assert answer.status_code == 201, answer.text


def session_cookies(tab: Tab) -> list[Any]:
    return [cookie for cookie in tab.context.cookies() if cookie["name"] == COOKIE]


def mark(page: Page) -> None:
    """Leaves a mark in the page's window: gone if the page reloads or navigates."""
    page.evaluate("window.__kairosMark = 'still here'")


def marked(page: Page) -> bool:
    return bool(page.evaluate("window.__kairosMark === 'still here'"))


# -- the watch itself --------------------------------------------------------------------------


def test_the_watch_sees_foreign_requests_and_csp_violations(tabs: Callable[..., Tab], board: str) -> None:
    """What every test asserts at its end can fail: a request to another host is aborted and
    recorded, and a CSP refusal shows as a console error."""
    tab = tabs()
    page = tab.page
    page.goto(f"{board}/login")
    page.evaluate("fetch('http://cdn.example.com/x.js').catch(() => null)")  # connect-src 'self'
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not tab.console_errors:
        page.wait_for_timeout(100)
    assert any("Content Security Policy" in text for text in tab.console_errors), tab.console_errors
    with pytest.raises(PlaywrightError):
        page.goto("http://cdn.example.com/page")
    assert tab.foreign == ["http://cdn.example.com/page"]
    tab.foreign.clear()
    tab.console_errors.clear()
    tab.assert_clean()


# -- login -------------------------------------------------------------------------------------


def test_a_wrong_token_stays_on_the_login_page_and_the_right_one_logs_in(
    tabs: Callable[..., Tab], board: str
) -> None:
    tab = tabs()
    page = tab.page
    tab.expect_console_error(r"status of 401")  # Chromium logs the login page answered 401

    page.goto(f"{board}/")
    expect(page).to_have_url(f"{board}/login")  # no session: the login page

    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("The gateway refused this token.")
    expect(page).to_have_url(f"{board}/login")
    expect(page.get_by_label("Admin token")).to_be_visible()
    assert session_cookies(tab) == []

    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{board}/")
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    (cookie,) = session_cookies(tab)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/admin"
    assert TOKEN not in cookie["value"]  # encrypted

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{board}/login?reason=logout")
    expect(page.get_by_role("status")).to_contain_text("Logged out.")
    assert session_cookies(tab) == []
    page.goto(f"{board}/routes")
    expect(page).to_have_url(f"{board}/login")
    tab.assert_clean()


# -- routes ------------------------------------------------------------------------------------


def test_a_route_added_through_the_form_serves_at_once(
    signed_in: Callable[..., Tab], board: str, gateway: Server, upstream: Server
) -> None:
    tab = signed_in()
    page = tab.page
    page.goto(f"{board}/routes")
    page.get_by_role("link", name="New route").click()
    expect(page.get_by_role("heading", name="New route")).to_be_visible()

    page.get_by_role("textbox", name="external_path", exact=True).fill("/dash/added")
    page.get_by_role("textbox", name="internal_path", exact=True).fill("/echo")
    page.get_by_role("checkbox", name="GET", exact=True).check()
    first = page.get_by_role("group", name="backends 1", exact=True)
    first.get_by_role("textbox", name="host", exact=True).fill("http://127.0.0.1")
    first.get_by_role("textbox", name="port", exact=True).fill(str(upstream.port))
    page.get_by_role("button", name="Save").click()

    expect(page).to_have_url(re.compile(re.escape(f"{board}/routes?saved=")))
    expect(page.locator("#routes-table")).to_contain_text("/dash/added")
    answer = httpx.get(f"{gateway.url}/dash/added", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["server"] == "a"
    tab.assert_clean()


def test_an_invalid_port_is_shown_beside_the_field_and_changes_nothing(
    signed_in: Callable[..., Tab], board: str, api: httpx.Client, upstream: Server
) -> None:
    add_route(api, route("/dash/edited", upstream.port))
    tab = signed_in()
    page = tab.page
    tab.expect_console_error(r"status of 400")  # the refused form comes back with 400
    page.goto(f"{board}/routes")
    page.get_by_role("link", name="Edit /dash/edited").click()
    expect(page.get_by_role("heading", name="Edit route /dash/edited")).to_be_visible()

    port = page.locator("#f-backends-0-port")
    expect(port).to_have_value(str(upstream.port))
    port.fill("70000")
    page.get_by_role("button", name="Save").click()

    error = page.locator("#err-backends-0-port")
    expect(error).to_contain_text("backends[0].port")
    port = page.locator("#f-backends-0-port")
    expect(port).to_have_attribute("aria-invalid", "true")
    expect(port).to_have_attribute("aria-describedby", "err-backends-0-port")
    expect(port).to_have_value("70000")  # the user's input is kept
    running = the_route(api, "/dash/edited")
    assert running is not None
    assert running["backends"][0]["port"] == upstream.port
    tab.assert_clean()


def test_a_route_deleted_from_the_list_is_gone(
    signed_in: Callable[..., Tab], board: str, api: httpx.Client, gateway: Server, upstream: Server
) -> None:
    add_route(api, route("/dash/deleted", upstream.port))
    assert httpx.get(f"{gateway.url}/dash/deleted", timeout=10).status_code == 200
    tab = signed_in()
    page = tab.page
    page.goto(f"{board}/routes")
    expect(page.locator("#routes-table")).to_contain_text("/dash/deleted")

    page.get_by_role("button", name="Delete /dash/deleted").click()
    expect(page).to_have_url(re.compile(re.escape(f"{board}/routes?deleted=")))
    expect(page.locator("#routes-table")).not_to_contain_text("/dash/deleted")
    expect(page.locator("#routes-table")).to_contain_text("/hello/{name}")  # only that one went
    assert the_route(api, "/dash/deleted") is None
    assert httpx.get(f"{gateway.url}/dash/deleted", timeout=10).status_code == 404
    tab.assert_clean()


def test_explain_a_request_from_the_routes_page(signed_in: Callable[..., Tab], board: str) -> None:
    tab = signed_in()
    page = tab.page
    page.goto(f"{board}/routes")
    mark(page)

    page.get_by_label("Method").select_option("GET")
    page.get_by_label("Path", exact=True).fill("/hello/world")
    page.get_by_role("button", name="Explain").click()
    result = page.locator("#explain-result")
    expect(result).to_contain_text("GET /hello/world")
    expect(result).to_contain_text("/hello/{name}")
    expect(result).to_contain_text("name=world")

    page.get_by_label("Path", exact=True).fill("/nowhere")
    page.get_by_role("button", name="Explain").click()
    expect(result).to_contain_text("no route")
    assert marked(page)  # fragments swapped in place, no reload
    tab.assert_clean()


# -- CSRF --------------------------------------------------------------------------------------


def test_a_form_posted_without_its_csrf_token_is_refused(
    signed_in: Callable[..., Tab], board: str, api: httpx.Client, upstream: Server
) -> None:
    add_route(api, route("/dash/kept", upstream.port))
    tab = signed_in()
    tab.page.goto(f"{board}/")
    assert len(session_cookies(tab)) == 1
    before = running_routes(api)
    generation = api.get("/routes").json()["generation"]
    index = [r["external_path"] for r in before].index("/dash/kept")

    # The session cookie goes along (context.request shares the context's cookies); the csrf does not.
    deleting = tab.context.request.post(
        f"{board}/routes/delete", form={"index": str(index), "path": "/dash/kept"}
    )
    assert deleting.status == 403, deleting.text()
    assert "CSRF" in deleting.text()
    creating = tab.context.request.post(
        f"{board}/routes/edit",
        form={
            "external_path": "/dash/forged",
            "internal_path": "/echo",
            "methods": "GET",
            "backends.0.host": "http://127.0.0.1",
            "backends.0.port": str(upstream.port),
        },
    )
    assert creating.status == 403, creating.text()
    wrong = tab.context.request.post(
        f"{board}/routes/delete", form={"csrf": "0" * 64, "index": str(index), "path": "/dash/kept"}
    )
    assert wrong.status == 403, wrong.text()
    reloading = tab.context.request.post(f"{board}/config/reload", form={})
    assert reloading.status == 403, reloading.text()

    assert running_routes(api) == before  # nothing changed
    assert api.get("/routes").json()["generation"] == generation
    assert the_route(api, "/dash/forged") is None
    tab.assert_clean()


# -- live pages --------------------------------------------------------------------------------


def test_the_overview_counts_requests_live(
    signed_in: Callable[..., Tab], board: str, gateway: Server
) -> None:
    tab = signed_in()
    page = tab.page
    page.goto(f"{board}/")
    mark(page)
    first_frame(page)
    expect(page.locator("#chart-rps canvas").first).to_be_attached()
    expect(page.locator("#chart-latency canvas").first).to_be_attached()
    requests = page.locator('[data-stat="requests"]')
    counted = int(requests.inner_text())
    page.evaluate(  # every req/s figure the page shows from now on
        """() => {
        const node = document.querySelector('[data-stat="rps"]');
        window.__rpsShown = [];
        new MutationObserver(() => window.__rpsShown.push(node.textContent))
            .observe(node, {childList: true, characterData: true, subtree: true});
    }"""
    )

    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for number in range(50):
            assert client.get(f"/hello/n{number}").status_code == 200

    page.wait_for_function(  # the counter reaches the requests sent, without a reload
        "(target) => Number(document.querySelector('[data-stat=\"requests\"]').textContent) >= target",
        arg=counted + 50,
        timeout=15_000,
    )
    shown = [float(text) for text in page.evaluate("window.__rpsShown")]
    assert any(value > 0 for value in shown), shown
    expect(page.locator("#top-routes")).to_contain_text("/hello/{name}")
    assert marked(page)  # no reload
    tab.assert_clean()


def test_a_stopped_backend_shows_unhealthy_or_open_on_the_backends_page(
    signed_in: Callable[..., Tab], board: str, api: httpx.Client, gateway: Server, tmp_path: Path
) -> None:
    with upstream_server(tmp_path, "flaky") as flaky:
        breaker = {"failure_threshold": 1, "success_threshold": 1, "reset_timeout_ms": 600_000}
        add_route(api, route("/dash/flaky", flaky.port, circuit_breaker=breaker))
        try:
            assert httpx.get(f"{gateway.url}/dash/flaky", timeout=10).status_code == 200
            tab = signed_in()
            page = tab.page
            page.goto(f"{board}/")
            page.get_by_role("link", name="Backends", exact=True).click()
            row = page.locator(f'[data-backend="http://127.0.0.1:{flaky.port}"]')
            expect(row.locator("[data-circuit]")).to_have_text("closed")
            expect(row.locator("[data-health]")).to_have_text("healthy")
            mark(page)

            stop(flaky.process)  # by PID
            assert flaky.process.poll() is not None
            assert httpx.get(f"{gateway.url}/dash/flaky", timeout=10).status_code == 502  # opens it

            state = re.compile(r"^(open|unhealthy)")
            circuit, health = row.locator("[data-circuit]"), row.locator("[data-health]")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # the table refreshes itself every 2 s
                if state.search(circuit.inner_text()) or state.search(health.inner_text()):
                    break
                page.wait_for_timeout(250)
            assert state.search(circuit.inner_text()) or state.search(health.inner_text()), (
                circuit.inner_text(),
                health.inner_text(),
            )
            assert marked(page)  # refreshed in place, not reloaded
            tab.assert_clean()
        finally:
            api.delete("/routes/dash/flaky")


# -- keyboard and small screens ----------------------------------------------------------------


def focused(page: Page) -> dict[str, str]:
    info: dict[str, str] = page.evaluate(
        "() => { const e = document.activeElement;"
        " return {tag: e.tagName, id: e.id || '', text: (e.textContent || '').trim()}; }"
    )
    return info


def test_login_and_navigation_with_the_keyboard_only(tabs: Callable[..., Tab], board: str) -> None:
    tab = tabs()
    page = tab.page
    page.goto(f"{board}/login")
    page.evaluate("document.activeElement && document.activeElement.blur()")
    for _ in range(10):  # Tab until the token field has the focus
        page.keyboard.press("Tab")
        if focused(page)["id"] == "token":
            break
    assert focused(page)["id"] == "token"
    page.keyboard.type(TOKEN)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{board}/")
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()

    reached: list[str] = []
    for _ in range(20):
        page.keyboard.press("Tab")
        element = focused(page)
        if element["tag"] == "A":
            reached.append(element["text"])
        if set(NAV_LINKS) <= set(reached):
            break
    assert reached[0] == "Skip to content"
    assert set(NAV_LINKS) <= set(reached), reached

    for _ in range(20):  # back to Routes, and follow it with Enter
        if focused(page)["text"] == "Routes":
            break
        page.keyboard.press("Shift+Tab")
    assert focused(page)["text"] == "Routes"
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{board}/routes")
    expect(page.get_by_role("heading", name="Routes", level=1)).to_be_visible()
    tab.assert_clean()


def test_the_overview_fits_a_375_pixel_wide_screen(signed_in: Callable[..., Tab], board: str) -> None:
    tab = signed_in(viewport={"width": 375, "height": 740})
    page = tab.page
    page.goto(f"{board}/")
    expect(page.locator("#chart-rps canvas").first).to_be_attached()
    first_frame(page)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375 + 1, f"the body scrolls sideways: {width} px wide"
    tab.assert_clean()


# -- every page, light and dark ----------------------------------------------------------------

PAGES = (
    ("overview", "/", "Overview"),
    ("routes", "/routes", "Routes"),
    ("route-form", "/routes/edit?index=0", "Edit route"),
    ("backends", "/backends", "Backends"),
    ("config", "/config", "Config"),
    ("ai", "/ai", "AI routing"),
    ("llm", "/llm?group_by=consumer", "LLM"),
    ("metrics", "/metrics?name=requests_total&range=15m", "Metrics"),
)


@contextmanager
def traffic(url: str, per_second: float = 25.0) -> Iterator[None]:
    """Proxied requests in a background thread while the block runs."""
    done = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=url, timeout=5) as client:
            number = 0
            while not done.wait(1 / per_second):
                with contextlib.suppress(httpx.HTTPError):
                    client.get(f"/hello/t{number}" if number % 3 else f"/users/{number}")
                number += 1

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(10)


def settle(page: Page, name: str) -> None:
    """Waits for what the page draws after loading (charts, the first live frame)."""
    if name == "overview":
        first_frame(page)
        expect(page.locator("#chart-rps canvas").first).to_be_attached()
    elif name == "metrics":
        points = re.compile(r"^[1-9][0-9]* points$")  # the history samples once a second
        expect(page.locator("#history-note")).to_have_text(points, timeout=15_000)
        expect(page.locator("#history-chart canvas").first).to_be_attached()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_in_light_and_dark(
    signed_in: Callable[..., Tab], board: str, gateway: Server, scheme: str
) -> None:
    shoot = os.environ.get("KAIROS_SCREENSHOTS") == "1"
    tab = signed_in(viewport={"width": 1280, "height": 800}, color_scheme=scheme)
    page = tab.page
    page.goto(f"{board}/")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == ("rgb(17, 19, 24)" if scheme == "dark" else "rgb(247, 248, 250)")
    with traffic(gateway.url):  # something for the charts to draw
        for name, path, title in PAGES:
            page.goto(f"{board}{path}")
            expect(page).to_have_title(re.compile(rf"^{re.escape(title)}.* · Kairos dashboard$"))
            settle(page, name)
            if shoot:
                if name == "overview":
                    page.wait_for_timeout(5_000)  # a few live frames, for lines in the charts
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / f"{name}-{scheme}.png"))
    tab.assert_clean()


# -- standalone --------------------------------------------------------------------------------


def test_the_standalone_dashboard_in_front_of_the_gateway(
    tabs: Callable[..., Tab], gateway: Server, tmp_path: Path
) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("KAIROS_")}
    env.update({"KAIROS_URL": gateway.url, "PYTHONPATH": str(ROOT)})
    args = ["-m", "uvicorn", "admin.app:app", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(args, port, tmp_path / f"dashboard-{port}.log", env) as dashboard:
        headers = httpx.get(f"{dashboard.url}/login", timeout=10).headers
        assert headers["content-security-policy"].startswith("default-src 'self'")
        tab = tabs()
        page = tab.page
        login(page, dashboard.url)
        (cookie,) = session_cookies(tab)
        assert cookie["path"] == "/"
        expect(page.locator("footer")).to_contain_text(gateway.url)
        first_frame(page)
        page.get_by_role("link", name="Routes", exact=True).click()
        expect(page.locator("#routes-table")).to_contain_text("/hello/{name}")
        page.get_by_role("link", name="Backends", exact=True).click()
        expect(page.locator("#backends-table")).to_contain_text("http://127.0.0.1")
        tab.assert_clean()


# -- found broken------------------------------------------------------------------------------
# What the dashboard gets wrong today. Each page below is checked once loaded (submit() waits for
# the answer's page), so a failure costs no timeout.


def submit(page: Page, button: str = "Save") -> None:
    """Clicks a form's button and waits for the page the post answers with."""
    with page.expect_navigation():
        page.get_by_role("button", name=button).click()


def open_edit(page: Page, board: str, path: str) -> None:
    page.goto(f"{board}/routes")
    page.get_by_role("link", name=f"Edit {path}").click()
    expect(page.get_by_role("heading", name=f"Edit route {path}")).to_be_visible()


def saved(page: Page, board: str) -> bool:
    return page.url.startswith(f"{board}/routes?saved=")


def shown_problems(page: Page) -> list[str]:
    return page.locator(".error, .field-error").all_inner_texts()


def test_the_dashboard_path_without_its_slash_leads_to_the_dashboard(
    tabs: Callable[..., Tab], board: str
) -> None:
    """``KAIROS_DASHBOARD_PATH`` as documented and typed (``/admin``, no trailing slash)."""
    tab = tabs()
    page = tab.page
    page.goto(board)
    assert page.url == f"{board}/login", page.locator("body").inner_text()[:200]
    tab.assert_clean()


def test_the_served_dashboard_names_no_internal_address(signed_in: Callable[..., Tab], board: str) -> None:
    """The gateway hands the dashboard a placeholder URL for its in-process transport
    (``http://kairos.internal``); the footer and the "unreachable" banner show it to the user."""
    tab = signed_in()
    page = tab.page
    page.goto(f"{board}/backends")
    assert "kairos.internal" not in page.locator("footer").inner_text()
    assert "kairos.internal" not in page.locator("#banner").inner_text()
    tab.assert_clean()


def test_saving_a_route_unchanged_leaves_it_as_it_was(
    signed_in: Callable[..., Tab], board: str, api: httpx.Client, upstream: Server
) -> None:
    """The form writes back only what the route says: a select left on its default is not
    written into the config (``protocol``, ``load_balancing_strategy``, ``auth``)."""
    add_route(api, route("/dash/untouched", upstream.port, _comment="kept as is", timeout_ms=5000))
    before = the_route(api, "/dash/untouched")
    tab = signed_in()
    page = tab.page
    open_edit(page, board, "/dash/untouched")
    submit(page)
    assert saved(page, board), shown_problems(page)
    assert the_route(api, "/dash/untouched") == before
    tab.assert_clean()


def test_no_page_scrolls_sideways_at_375_pixels(signed_in: Callable[..., Tab], board: str) -> None:
    """Wide tables scroll inside their own box (``.scroll``), the page does not. The routes
    table's visually hidden action labels are absolutely positioned with no positioned
    ancestor, so they escape that box and widen the page."""
    tab = signed_in(viewport={"width": 375, "height": 740})
    page = tab.page
    wide: dict[str, int] = {}
    for name, path, title in PAGES:
        page.goto(f"{board}{path}")
        expect(page).to_have_title(re.compile(rf"^{re.escape(title)}"))
        settle(page, name)
        width = int(page.evaluate("document.documentElement.scrollWidth"))
        if width > 375 + 1:
            wide[name] = width
    assert wide == {}, f"pages wider than the screen: {wide}"
    tab.assert_clean()


def test_the_pages_name_an_icon_that_loads(tabs: Callable[..., Tab], board: str) -> None:
    """Without a ``<link rel="icon">`` a browser asks for ``/favicon.ico`` at the root, outside
    the dashboard, and logs the 404 as a console error on the first visit. (Not seen by the other
    tests: Chromium does not ask for the icon while requests are intercepted.)"""
    tab = tabs()
    page = tab.page
    page.goto(f"{board}/login")
    icons = page.locator('link[rel~="icon"]')
    assert icons.count() >= 1, "no <link rel=icon> in the page's head"
    href = str(page.evaluate("(link) => link.href", icons.first.element_handle()))
    if not href.startswith("data:"):
        answer = tab.context.request.get(href)
        assert answer.ok, (href, answer.status)
    tab.assert_clean()


def test_a_field_the_form_cannot_read_keeps_the_route_being_edited(
    signed_in: Callable[..., Tab], board: str, api: httpx.Client, upstream: Server, upstream_b: Server
) -> None:
    """Bad JSON in a section is caught by the form itself (before the gateway sees it); the page
    that says so must still be the edit of that route: its path, all its backend rows, and a
    second save (the JSON fixed) that applies."""
    document = route("/dash/json", upstream.port)
    document["backends"].append({"host": "http://127.0.0.1", "port": upstream_b.port})
    add_route(api, document)
    tab = signed_in()
    page = tab.page
    tab.expect_console_error(r"status of 4\d\d")
    open_edit(page, board, "/dash/json")
    retry = page.get_by_role("textbox", name="retry", exact=True)
    retry.fill("{not json")
    submit(page)
    assert "not valid JSON" in page.locator("#err-retry").inner_text()
    assert retry.input_value() == "{not json"

    assert page.get_by_role("heading", level=1).inner_text() == "Edit route /dash/json"
    ports = page.locator("[id^=f-backends-][id$=-port]")
    assert [ports.nth(i).input_value() for i in range(ports.count())][:2] == [
        str(upstream.port),
        str(upstream_b.port),
    ]
    retry.fill('{"max_retries": 1}')
    submit(page)
    assert saved(page, board), shown_problems(page)
    running = the_route(api, "/dash/json")
    assert running is not None
    assert running["retry"] == {"max_retries": 1}
    assert [b["port"] for b in running["backends"]] == [upstream.port, upstream_b.port]
    tab.assert_clean()


def test_renaming_a_route_with_a_mistake_can_be_corrected_and_saved(
    signed_in: Callable[..., Tab], board: str, api: httpx.Client, upstream: Server
) -> None:
    """After the gateway refuses a renamed route, fixing the mistake and saving again must still
    rename it: the form must remember the path it started from, not the new one."""
    add_route(api, route("/dash/old-name", upstream.port))
    tab = signed_in()
    page = tab.page
    tab.expect_console_error(r"status of 4\d\d")
    open_edit(page, board, "/dash/old-name")
    page.get_by_role("textbox", name="external_path", exact=True).fill("/dash/new-name")
    page.locator("#f-backends-0-port").fill("70000")
    submit(page)
    assert any("backends[0].port" in problem for problem in shown_problems(page))

    page.locator("#f-backends-0-port").fill(str(upstream.port))
    submit(page)
    assert saved(page, board), shown_problems(page)
    assert the_route(api, "/dash/old-name") is None
    assert the_route(api, "/dash/new-name") is not None
    tab.assert_clean()


def test_a_mistake_in_a_renamed_route_is_shown_beside_its_field(
    signed_in: Callable[..., Tab], board: str, api: httpx.Client, upstream: Server
) -> None:
    """A changed external_path goes through PUT /routes (the whole list), whose problems name
    ``routers[N].backends[0].port``: they belong beside the field too, as for any other edit."""
    add_route(api, route("/dash/rename-me", upstream.port))
    tab = signed_in()
    page = tab.page
    tab.expect_console_error(r"status of 400")
    open_edit(page, board, "/dash/rename-me")
    page.get_by_role("textbox", name="external_path", exact=True).fill("/dash/renamed")
    page.locator("#f-backends-0-port").fill("70000")
    submit(page)
    assert any("backends[0].port" in problem for problem in shown_problems(page))  # refused
    beside = page.locator("#err-backends-0-port")
    assert beside.count() == 1, shown_problems(page)
    assert "backends[0].port" in beside.inner_text()
    assert page.locator("#f-backends-0-port").get_attribute("aria-invalid") == "true"
    assert the_route(api, "/dash/rename-me") is not None
    tab.assert_clean()
