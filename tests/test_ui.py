"""The web page at /ui, in a real headless browser (Debian's chromium, driven by Playwright),
against the real app on the shared 3-node test cluster.

Every test saves a screenshot under its tmp_path (look at them). With GRID_UI_SCREENSHOT set
to a path, the spread-job test also writes its screenshot there: that is how docs/ui.png is made
(`GRID_UI_SCREENSHOT=docs/ui.png pytest tests/test_ui.py`).
The browser comes from the system (`apt-get install chromium`; `.ci/run` installs it), never
from a download; GRID_CHROMIUM names another executable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from grid_serve.client import GridClient
from grid_serve.placement import STRATEGIES, SUMMARIES
from tests.test_api import owned, submit, wait_idle

pytestmark = pytest.mark.cluster

CHROMIUM = os.environ.get("GRID_CHROMIUM", "/usr/bin/chromium")
SECONDS = 1000  # Playwright timeouts are in milliseconds
NODES = ("gpu-master", "gpu1", "gpu2")
REFUSED_RESOURCE = re.compile(r"^Failed to load resource: the server responded with a status of (\d+)")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Launch the system's chromium: browsers cannot be downloaded on these machines."""
    if not Path(CHROMIUM).exists():
        message = f"no chromium at {CHROMIUM}: apt-get install -y chromium (or set GRID_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "headless": True}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    """A wide window, as on an engineer's screen, so screenshots show the whole layout."""
    return {**browser_context_args, "viewport": {"width": 1440, "height": 1000}}


class Console:
    """What the page said on its console or threw, gathered while a test drives it."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def unexpected(self, allowed_statuses: tuple[int, ...] = ()) -> list[str]:
        """Errors, less the browser's own line for each answer with an allowed status (a
        fetch that got a 4xx the test provoked on purpose)."""
        return [text for text in self.errors
                if not ((match := REFUSED_RESOURCE.match(text)) and int(match.group(1)) in allowed_statuses)]


@pytest.fixture()
def console(page: Any) -> Console:
    return Console(page)


@pytest.fixture()
def ui(page: Any, console: Console, base_url: str) -> Iterator[Any]:
    """The page, opened and showing the cluster."""
    page.set_default_timeout(30 * SECONDS)
    page.goto(f"{base_url}/ui")
    page.locator("#nodes-body tr").nth(2).wait_for()
    yield page


def screenshot(page: Any, tmp_path: Path, name: str, publish: bool = False) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("GRID_UI_SCREENSHOT")
    if publish and target:
        shutil.copyfile(path, target)
    return path


def node_rows(page: Any) -> dict[str, dict[str, str]]:
    """The nodes table as {name: {column: text}}."""
    rows = page.eval_on_selector_all(
        "#nodes-body tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText.trim()))")
    columns = ("state", "name", "address", "cpu", "memory", "gpu", "cpu_reserved", "gpu_reserved", "in_flight", "labels")
    table = {}
    for row in rows:
        row[1] = row[1].removesuffix("head").strip()  # the head node's name carries a "head" chip
        table[row[1]] = dict(zip(columns, row))
    return table


def submit_from_form(page: Any, **fields: str) -> None:
    """Fill the form (task, strategy, count, priority, node) and press Submit."""
    if "task" in fields:
        page.get_by_label("Task type", exact=True).select_option(fields["task"])
    if "strategy" in fields:
        page.get_by_label("Strategy", exact=True).select_option(fields["strategy"])
    if "count" in fields:
        page.get_by_label("Number of tasks").fill(fields["count"])
    if "priority" in fields:
        page.get_by_label("Priority", exact=True).select_option(fields["priority"])
    if "node" in fields:
        page.get_by_label("Node (for node_specific)").fill(fields["node"])
    page.get_by_role("button", name="Submit job").click()


def alive_names(rows: dict[str, dict[str, str]]) -> list[str]:
    return [name for name, row in rows.items() if row["state"] == "alive"]


def submitted_job_id(page: Any) -> str:
    result = page.locator("#f-result")
    result.locator("xpath=self::*[@data-job-id]").wait_for()
    return result.get_attribute("data-job-id")


def test_page_loads_and_lists_the_three_nodes(ui: Any, console: Console, base_url: str, tmp_path: Path) -> None:
    nodes = node_rows(ui)  # tests/test_node_faults.py left dead nodes behind: shown as dead
    assert set(alive_names(nodes)) == set(NODES), nodes
    assert all(row["state"] == "dead" for name, row in nodes.items() if name not in NODES), nodes
    assert nodes["gpu1"]["gpu_reserved"].endswith("/ 1"), nodes["gpu1"]
    assert ui.locator("#queue-body tr").count() == 4  # every priority, waiting or not: no jump
    strategies = ui.locator("#f-strategy option")  # from /v1/strategies: the registry's, each with its summary
    strategies.nth(len(STRATEGIES) - 1).wait_for(state="attached")
    assert strategies.evaluate_all("os => os.map(o => [o.value, o.title])") == [
        [name.lower(), SUMMARIES[name]] for name in STRATEGIES]
    ui.get_by_label("Filter nodes by name, address, label or state").fill("gpu2")
    assert list(node_rows(ui)) == ["gpu2"]
    ui.get_by_label("Filter nodes by name, address, label or state").fill("")
    ui.get_by_role("button", name="Sort by node name").click()  # sorted by name already: now descending
    assert alive_names(node_rows(ui)) == ["gpu2", "gpu1", "gpu-master"]
    ui.get_by_role("button", name="Sort by node name").click()
    ui.locator("#live.ok").wait_for()
    ui.goto(f"{base_url}/")  # the bare address is the page
    assert ui.url.endswith("/ui")
    ui.locator("#nodes-body tr").nth(2).wait_for()
    ui.locator("#live.ok").wait_for()
    screenshot(ui, tmp_path, "nodes")
    assert console.unexpected() == []


def test_spread_job_from_the_page_shows_10_10_10(ui: Any, console: Console, client: GridClient,
                                                 http: httpx.Client, tmp_path: Path) -> None:
    wait_idle(client)
    submit_from_form(ui, task="compute_task", strategy="spread", count="30", priority="high")
    job_id = submitted_job_id(ui)
    row = ui.locator(f'#jobs-body tr[data-job-id="{job_id}"]')
    for node in NODES:
        row.locator(f'.pernode [data-node="{node}"] b').filter(has_text=re.compile(r"^10$")).wait_for(timeout=20 * SECONDS)
    row.locator(".state.succeeded").wait_for()
    assert http.get(f"/v1/jobs/{job_id}").json()["per_node"] == {node: 10 for node in NODES}

    ui.get_by_role("button", name=f"Show job {job_id}").click()  # its own view: decisions and chart
    detail = ui.locator("#job-detail")
    detail.locator("#job-decisions-body tr").nth(29).wait_for()
    reasons = detail.locator("#job-decisions-body td.why").all_inner_texts()
    assert len(reasons) == 30 and all(text.startswith("spread: ") for text in reasons), reasons[:3]
    assert detail.locator("#job-chart rect").count() == 3
    assert ui.url.endswith(f"#job={job_id}")
    ui.locator("#decisions-body tr").first.wait_for()
    ui.locator("#placements-chart rect").first.wait_for(timeout=10 * SECONDS)  # drawn every 5 ticks
    screenshot(ui, tmp_path, "spread-job", publish=True)
    assert console.unexpected() == []


def test_cancelling_a_running_job_from_the_page(ui: Any, console: Console, client: GridClient,
                                                http: httpx.Client, tmp_path: Path) -> None:
    wait_idle(client)
    submit_from_form(ui, task="sleep_task", strategy="load_balanced", count="400", priority="low")
    job_id = submitted_job_id(ui)
    row = ui.locator(f'#jobs-body tr[data-job-id="{job_id}"]')
    row.locator(".state.running").wait_for()
    waiting_low = ui.locator('#queue-body tr[data-key="low"] td').nth(1)
    waiting_low.filter(has_text=re.compile(r"^[1-9]\d*$")).wait_for()  # the queue shows what waits, by priority
    row.get_by_role("button", name=f"Show job {job_id}").click()  # its facts say why it waits and what is ahead
    facts = ui.locator("#job-facts")
    facts.filter(has_text="why not yet").wait_for()
    assert re.search(r"in the queue\s*next task is number 1 \(ahead: nothing\); \d+ waiting", facts.inner_text())
    assert re.search(r"why not yet\s*0/\d+ nodes are available: \d+ CPU busy", facts.inner_text())  # a dead node counts too
    screenshot(ui, tmp_path, "queued")
    cancel = row.get_by_role("button", name=f"Cancel job {job_id}")
    cancel.click()
    row.get_by_role("button", name=f"Confirm cancelling job {job_id}").click()  # two clicks: no accidents
    row.locator(".state.cancelled").wait_for(timeout=20 * SECONDS)
    assert http.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
    assert row.get_by_role("button", name=re.compile("ancel")).is_hidden()  # nothing left to cancel
    screenshot(ui, tmp_path, "cancelled")
    assert console.unexpected() == []


def test_a_sharing_allocation_shows_donor_borrower_amount_and_lease(ui: Any, console: Console, http: httpx.Client,
                                                                   client: GridClient, tmp_path: Path) -> None:
    wait_idle(client)  # the cancelled job's running sleeps hold every CPU a donor could lend until they end
    response = http.post("/v1/sharing", json={"node": "gpu-master", "type": "cpu", "amount": 1, "priority": "high",
                                              "duration_s": 600})
    assert response.status_code == 201, response.text
    record = response.json()
    try:
        row = ui.locator("#alloc-body tr").filter(has_text="gpu-master")
        row.wait_for()
        cells = row.locator("td").all_inner_texts()
        assert cells[:5] == ["gpu-master", record["donor"], "1 CPU", "high", "active"], cells
        assert re.fullmatch(r"(9|10)m \d\ds", cells[5]), cells  # about ten minutes of lease left
        screenshot(ui, tmp_path, "sharing")
    finally:
        http.post(f"/v1/sharing/{record['id']}/release", headers=owned(record))
    ui.locator("#alloc-empty").wait_for(timeout=30 * SECONDS)  # drained and gone from the page
    assert console.unexpected() == []


def test_pending_sharing_requests_are_listed_with_their_waits(page: Any, console: Console, base_url: str,
                                                            http: httpx.Client, tmp_path: Path) -> None:
    """A request no donor can grant yet, as /v1/sharing would list it (made up: this cluster
    can always lend what the API accepts, so a real one would not stay pending)."""
    now = time.time()
    waiting = {"id": "req1", "borrower": "gpu1", "resource": "MEMORY", "amount": 1.5, "priority": "CRITICAL",
               "state": "pending", "requested_at": now - 75, "duration_s": 600, "timeout_at": now + 600,
               "reason": "waiting for a donor"}
    fake = json.dumps({**http.get("/v1/sharing").json(), "pending": [waiting]})
    page.route(re.compile(r".*/v1/sharing$"), lambda route: route.fulfill(status=200, content_type="application/json", body=fake))
    page.goto(f"{base_url}/ui")
    row = page.locator("#pending-body tr")
    row.wait_for()
    cells = row.locator("td").all_inner_texts()
    assert cells[:3] == ["gpu1", "1.5 GB", "critical"], cells
    assert re.fullmatch(r"1m [1-5]\ds", cells[3]) and re.fullmatch(r"(9|10)m \d\ds", cells[4]), cells
    assert page.locator("#pending-empty").is_hidden()
    screenshot(page, tmp_path, "pending")
    assert console.unexpected() == []


def test_the_pages_routes_are_documented_and_answer(http: httpx.Client) -> None:
    """What the page reads beyond the older routes: decisions with reasons, placements per node."""
    job_id = submit(http, task="compute_task", count=6, strategy="spread")["job_id"]
    answer = http.get("/v1/decisions", params={"job_id": job_id, "limit": 100}).json()
    assert answer["job_placed"] == 6 and len(answer["decisions"]) == 6, answer
    assert all(d["job_id"] == job_id and d["reasons"][0].startswith("spread: ") for d in answer["decisions"])
    assert [d["task_id"] for d in answer["decisions"]] == [f"{job_id}-{i}" for i in range(5, -1, -1)]  # newest first
    assert http.get("/v1/decisions", params={"limit": 1}).json()["decisions"][0]["at"] <= answer["now"]
    history = http.get("/v1/placements", params={"window_s": 60}).json()
    assert history["bucket_s"] == 10 and all(len(counts) == 6 for counts in history["per_node"].values()), history
    assert sum(sum(counts) for counts in history["per_node"].values()) >= 6
    assert isinstance(http.get("/v1/cluster").json()["queue"], list)
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v1/decisions", "/v1/placements"} <= set(paths) and "/ui" not in paths
    assert http.get("/v1/decisions", params={"limit": -1}).status_code == 422
    page = http.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]  # the browser holds the page to it
    assert "https://" not in page.text and "http://" not in page.text  # nothing from outside
    assert http.get("/ui/ui.js").headers["content-type"].startswith("text/javascript")
    assert http.get("/ui/..%2Fpyproject.toml").status_code == 404
    root = http.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/ui"


@pytest.mark.parametrize("fields, body", [
    ({"strategy": "spread", "count": "0"}, {"strategy": "spread", "count": 0}),
    ({"strategy": "spread", "count": "lots"}, {"strategy": "spread", "count": "lots"}),
    ({"strategy": "node_specific", "count": "3", "node": "gpu9"}, {"strategy": "node_specific", "count": 3, "node": "gpu9"}),
], ids=["count-zero", "count-not-a-number", "unknown-node"])
def test_a_bad_value_in_the_form_shows_the_apis_message(ui: Any, console: Console, http: httpx.Client,
                                                        fields: dict[str, str], body: dict[str, Any],
                                                        tmp_path: Path) -> None:
    answer = http.post("/v1/jobs", json={"task": "compute_task", "priority": "normal", **body})
    assert 400 <= answer.status_code < 500, answer.text
    expected = answer.json()["error"]
    submit_from_form(ui, task="compute_task", priority="normal", **fields)
    error = ui.get_by_role("alert")
    error.filter(has_text=expected).wait_for()
    assert error.inner_text() == expected
    screenshot(ui, tmp_path, "bad-value")
    assert console.unexpected(allowed_statuses=(answer.status_code,)) == []


def test_a_401_asks_for_a_token_once_and_sends_it(page: Any, console: Console, base_url: str, tmp_path: Path) -> None:
    """The app has no token today: a stand-in answers 401 unless the Bearer header is right."""
    seen: list[str | None] = []

    def guard(route: Any) -> None:
        given = route.request.headers.get("authorization")
        seen.append(given)
        if given == "Bearer s3cret":
            route.continue_()
        else:
            route.fulfill(status=401, content_type="application/json", body=json.dumps({"error": "token required"}))

    page.route(re.compile(r".*/v1/.*"), guard)
    page.goto(f"{base_url}/ui")
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    screenshot(page, tmp_path, "token")
    dialog.get_by_label("API token").fill("s3cret")
    dialog.get_by_role("button", name="Use token").click()
    page.locator("#nodes-body tr").nth(2).wait_for()
    page.locator("#live.ok").wait_for()
    page.wait_for_timeout(2.5 * SECONDS)  # a few more polls: none of them may ask again
    assert dialog.is_hidden()
    first_good = seen.index("Bearer s3cret")
    assert all(header == "Bearer s3cret" for header in seen[first_good:]), seen
    assert console.unexpected(allowed_statuses=(401,)) == []


def test_a_hundred_nodes_stay_usable(page: Any, console: Console, base_url: str, http: httpx.Client,
                                     tmp_path: Path) -> None:
    """/v1/cluster as a 100-node cluster would answer it: compact rows, a filter, sorting."""
    real = http.get("/v1/cluster").json()
    template = real["nodes"][0]
    nodes = []
    for i in range(100):
        nodes.append({**template, "name": f"node{i:03d}", "is_head": i == 0, "node_id": f"{i:056x}", "address": f"10.0.{i // 50}.{i % 50}",
                      "alive": i != 7, "stale": i == 8, "cpu_percent": float((i * 37) % 100), "in_flight": i % 5,
                      "labels": {"grid.io/node": f"node{i:03d}", "zone": f"z{i % 4}"}})
    fake = json.dumps({**real, "nodes": nodes})
    page.route(re.compile(r".*/v1/cluster$"), lambda route: route.fulfill(status=200, content_type="application/json", body=fake))
    page.emulate_media(color_scheme="dark")  # and in the dark palette, which follows the system
    page.goto(f"{base_url}/ui")
    rows = page.locator("#nodes-body tr")
    rows.nth(99).wait_for()
    assert page.locator("#nodes-body tr td .state.dead").count() == 1
    assert page.locator("#nodes-body tr td .state.stale").count() == 1
    heights = page.eval_on_selector_all("#nodes-body tr", "rows => rows.map(r => r.getBoundingClientRect().height)")
    assert max(heights) <= 36, max(heights)  # compact: one line per node
    page.get_by_label("Filter nodes by name, address, label or state").fill("zone=z3 alive")
    assert rows.count() == 24  # 25 in zone z3, less node007 (dead)... and node008 is stale, in z0
    page.get_by_label("Filter nodes by name, address, label or state").fill("")
    page.get_by_label("Sort nodes by").select_option("cpu")
    busiest = next(iter(node_rows(page).values()))
    assert (busiest["name"], busiest["cpu"]) == ("node027", "99%"), busiest  # 27 * 37 % 100 == 99
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 18, 22)", background
    screenshot(page, tmp_path, "hundred-nodes-dark")
    assert console.unexpected() == []


def test_the_api_docs_pages_name_only_the_app_s_own_files(http: httpx.Client) -> None:
    """/docs and /redoc run in the app's origin: every script, style sheet and icon they load
    is the app's own (from the package), and the browser is told to load and call nothing else."""
    for page in ("/docs", "/redoc"):
        answer = http.get(page)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html"), answer.text
        loads = re.findall(r'(?:src|href)="([^"]*)"', answer.text) + re.findall(r"url: '([^']*)'", answer.text)
        assert loads and all(url.startswith("/") and not url.startswith("//") for url in loads), (page, loads)
        assert "http://" not in answer.text and "https://" not in answer.text, (page, answer.text)
        policy = answer.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy, policy
        for url in loads:
            assert http.get(url).status_code == 200, url
    assert http.get("/docs/assets/..%2Fcore.py").status_code == 404


@pytest.mark.parametrize("path, ready", [
    ("/docs", ".swagger-ui .opblock-summary-path[data-path='/v1/jobs']"),  # every route listed, by Swagger UI
    ("/redoc", "h1:has-text('grid-serve')"),  # ReDoc's rendering of the document's title
])
def test_the_api_docs_work_without_internet(page: Any, console: Console, base_url: str, tmp_path: Path,
                                            path: str, ready: str) -> None:
    """The page in a browser that can reach nothing but the app: it renders, and asks nothing else."""
    own = base_url.rstrip("/")
    elsewhere: list[str] = []

    def only_the_app(route: Any) -> None:
        if route.request.url.startswith(own + "/") or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_app)
    page.set_default_timeout(60 * SECONDS)
    page.goto(f"{base_url}{path}")
    page.locator(ready).first.wait_for()
    screenshot(page, tmp_path, path.strip("/"))
    # ReDoc's attribution logo lives on its vendor's site: the page's policy refuses it before any
    # request is made, which is the policy at work, not the page failing
    refused_outside = [text for text in console.unexpected() if "violates the following Content Security Policy" in text
                       and re.search(r"'https?://(?!127\.0\.0\.1)", text)]
    assert elsewhere == [] and [e for e in console.unexpected() if e not in refused_outside] == [], \
        (elsewhere, console.errors)
