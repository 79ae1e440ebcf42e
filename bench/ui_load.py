"""Does the web page slow the app? The status route's requests/s with /ui open in a headless
browser, against the same route with no page open.

    python -m bench.ui_load [--quick]

The load is bench/http_api.py's (`GET /v1/health`, 16 connections, a separate process). The
page polls as it does for a user: /v1/cluster every second; /v1/jobs and /v1/decisions every
second while work runs or waits, every 5 s on this idle app; /v1/sharing every 2 s and
/v1/placements every 5 s. It runs in Debian's chromium on the same machine, so the browser's
own CPU is part of what is measured (the pessimistic case: a user's browser usually runs
elsewhere), and the table shows how much of the machine it took. A third row sends the page's
busy-time calls (about 4 a second) from a script instead: the app's own share of the cost.
Each round measures the three back to back, rotating which goes first; the ratio within a round
cancels most of the drift of a shared machine, and the verdict is the median of those ratios.
Needs `apt-get install chromium` (or GRID_CHROMIUM), so it is not part of run_all. Target: with
the page >= 0.9x without.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Iterator

import httpx
import psutil

from .harness import Env, Report, main_for, summarize
from .http_api import loadgen

TARGET = 0.9
SETTLE_S = 2.0
SIDES = {"none": "no page open", "page": "/ui open in headless chromium",
         "script": "the page's busy-time calls from a script (no browser)"}
CHROMIUM = os.environ.get("GRID_CHROMIUM", "/usr/bin/chromium")


@contextlib.contextmanager
def browser_page() -> Iterator[Any]:
    """A headless chromium tab (blank until `open_page`)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser.new_page(viewport={"width": 1440, "height": 1000})
        finally:
            browser.close()


def open_page(page: Any, base_url: str) -> None:
    """Load /ui and wait until it shows live data; from then on it polls by itself."""
    page.goto(f"{base_url}/ui")
    page.locator("#live.ok").wait_for(timeout=60_000)
    page.evaluate("performance.setResourceTimingBufferSize(1000000)")  # count every poll


@contextlib.contextmanager
def script_polling(base_url: str) -> Iterator[list[int]]:
    """The page's calls on the page's schedule, from a thread and no browser: what the app
    alone pays for an open page. Yields a one-item list counting the calls made."""
    calls, stop = [0], threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            tick = 0
            while not stop.is_set():
                began = time.monotonic()
                paths = ["/v1/cluster", "/v1/jobs", "/v1/decisions?limit=25"]
                paths += ["/v1/sharing"] if tick % 2 == 0 else []
                paths += ["/v1/placements?window_s=600"] if tick % 5 == 0 else []
                for path in paths:  # the page sends them at once; one after another is close enough here
                    client.get(path)
                calls[0] += len(paths)
                tick += 1
                stop.wait(max(0.2, 1.0 - (time.monotonic() - began)))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield calls
    finally:
        stop.set()
        thread.join()


def browser_cpu_s() -> float:
    """CPU seconds used so far by the browser's processes (children of this one: Playwright's
    driver and the chromium it started)."""
    total = 0.0
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "chrom" in process.name().lower():
                times = process.cpu_times()
                total += times.user + times.system
    return total


def page_requests(page: Any) -> int:
    """API calls the page has made since it loaded (the browser's own resource timing)."""
    return page.evaluate("performance.getEntriesByType('resource').filter(e => e.name.includes('/v1/')).length")


def run(env: Env) -> Report:
    seconds = 2.0 if env.quick else 5.0
    runs = 1 if env.quick else 6  # a shared 2-core machine drifts by ±20% between runs: many short runs, rotated
    url = f"{env.base_url}/v1/health"
    loadgen(url, 1.0)  # connections, replicas and the status cache warm, unrecorded
    samples: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    calls_per_s: dict[str, list[float]] = {side: [] for side in SIDES}
    browser_cores: list[float] = []
    with browser_page() as page:
        for index in range(runs):
            order = list(SIDES)
            for side in order[index % 3:] + order[:index % 3]:  # rotate who goes first
                page.goto("about:blank")  # the page closed: nothing polls
                if side == "page":
                    open_page(page, env.base_url)
                    time.sleep(SETTLE_S)  # past the first render
                began, before, cpu_before = time.monotonic(), page_requests(page) if side == "page" else 0, browser_cpu_s()
                with script_polling(env.base_url) if side == "script" else contextlib.nullcontext([0]) as calls:
                    samples[side].append(loadgen(url, seconds))
                made = page_requests(page) - before if side == "page" else calls[0]
                calls_per_s[side].append(made / (time.monotonic() - began))
                if side == "page":
                    browser_cores.append((browser_cpu_s() - cpu_before) / (time.monotonic() - began))
    rps = {side: summarize([sample["rps"] for sample in samples[side]]) for side in SIDES}
    report = Report(f"Status route with the web page open: GET /v1/health, 16 connections, {seconds:g}s per run, "
                    f"{runs} run(s) per row, rotating; median (min–max)",
                    ["", "requests/s", "p50 ms", "p99 ms", "errors", "page's API calls/s", "browser CPU (cores)",
                     "vs no page"])
    for side in SIDES:
        report.add(SIDES[side], rps[side].show(), summarize([s["p50_ms"] for s in samples[side]]).show(1),
                   summarize([s["p99_ms"] for s in samples[side]]).show(1), sum(s["errors"] for s in samples[side]),
                   summarize(calls_per_s[side]).show(1) if side != "none" else "–",
                   summarize(browser_cores).show(2) if side == "page" else "–",
                   f"{rps[side].median / rps['none'].median:.2f}×")
    paired = {side: summarize([with_side["rps"] / alone["rps"] for with_side, alone in zip(samples[side], samples["none"])])
              for side in ("page", "script")}
    for side, ratios in paired.items():
        report.add(f"{SIDES[side]}: per round", "", "", "", "", "", "", f"{ratios.show(2)}×")
    ratio = paired["page"].median
    report.target(ratio >= TARGET, f"status route with the page open {ratio:.3f}× without, median of the rounds' "
                                   f"ratios (target ≥ {TARGET}×)")
    report.data = {"samples": samples, "calls_per_s": calls_per_s, "ratio": ratio, "browser_cores": browser_cores,
                   "paired": {side: ratios.median for side, ratios in paired.items()}}
    return report


if __name__ == "__main__":
    main_for(run, __doc__)
