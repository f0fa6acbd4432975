#!/usr/bin/env python3
"""Measures the web UI's page load time: navigation start to the page's data rendered, in
headless Chromium (Debian's, via Playwright), as the median of N loads.

    .venv-test/bin/python tests/ui/page_load.py 'http://127.0.0.1:8081/#/job/www/prod/big' -n 10

Each load is a fresh page (a new browser context: no cache, no earlier state). The UI marks
`borealis-first-render` when its first refresh of the page has put the data in the DOM (for a
job page: the summary and the first 100 instances) and `borealis-first-frame` once the frame
showing it is painted; both are read from `performance` (milliseconds since navigation start).
Printed per load: both marks, the slowest /api/v1 request, and the rows the table shows;
then the medians. A load that does not render within --timeout fails the run (exit 1), with
the page's error banner.

With BOREALIS_UI_TOKEN (or --token), the token is put in the page's local storage first, as
the UI's sign-in does.
"""

import argparse
import os
import statistics
import sys

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

MEASURE = """() => {
  const mark = (name) => {
    const e = performance.getEntriesByName(name)[0];
    return e ? e.startTime : null;
  };
  const api = performance.getEntriesByType("resource").filter((r) => r.name.includes("/api/v1/"));
  const slowest = api.reduce((a, r) => (a && a.duration >= r.duration ? a : r), null);
  const tables = Array.from(document.querySelectorAll("table[data-loaded='true']"));
  return {
    render: mark("borealis-first-render"),
    frame: mark("borealis-first-frame"),
    api_calls: api.length,
    slowest_api_ms: slowest ? slowest.duration : null,
    slowest_api: slowest ? new URL(slowest.name).pathname : null,
    rows: tables.map((t) => `${t.dataset.testid}=${t.dataset.rows}`).join(" "),
  };
}"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url", help="a UI address, e.g. http://127.0.0.1:8081/#/job/www/prod/big")
    ap.add_argument("-n", "--runs", type=int, default=5, help="loads to measure (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="loads run first, not counted (default 1)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds one load may take (default 60)")
    ap.add_argument("--token", default=os.environ.get("BOREALIS_UI_TOKEN", ""),
                    help="API token (default: $BOREALIS_UI_TOKEN)")
    ap.add_argument("--chromium", default=os.environ.get("BOREALIS_UI_CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    renders, frames = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=LAUNCH_ARGS)
        try:
            for i in range(args.warmup + args.runs):
                counted = i >= args.warmup
                context = browser.new_context(viewport={"width": 1440, "height": 900})
                if args.token:
                    context.add_init_script(
                        f"localStorage.setItem('borealis.token', {args.token!r})"
                    )
                page = context.new_page()
                try:
                    page.goto(args.url, wait_until="commit", timeout=args.timeout * 1000)
                    page.wait_for_function(
                        "() => performance.getEntriesByName('borealis-first-frame').length > 0",
                        timeout=args.timeout * 1000,
                        polling=10,
                    )
                    m = page.evaluate(MEASURE)
                except PlaywrightError as e:
                    banner = page.locator('[data-testid="error-banner"]')
                    shown = banner.inner_text() if banner.is_visible() else ""
                    print(f"page_load: load {i + 1} did not render within {args.timeout:g}s"
                          + (f"; the page says: {shown!r}" if shown else f" ({e})"), file=sys.stderr)
                    return 1
                finally:
                    context.close()
                label = f"load {i + 1 - args.warmup}" if counted else f"warmup {i + 1}"
                print(f"page_load: {label}: render {m['render']:.0f} ms, painted {m['frame']:.0f} ms; "
                      f"{m['api_calls']} API calls, slowest {m['slowest_api_ms'] or 0:.0f} ms "
                      f"({m['slowest_api']}); rows: {m['rows'] or 'none'}", flush=True)
                if counted:
                    renders.append(m["render"])
                    frames.append(m["frame"])
        finally:
            browser.close()
    print(f"page_load: median of {len(renders)} loads of {args.url}: "
          f"render {statistics.median(renders):.0f} ms, painted {statistics.median(frames):.0f} ms "
          f"(min {min(frames):.0f}, max {max(frames):.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
