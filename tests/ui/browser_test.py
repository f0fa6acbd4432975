#!/usr/bin/env python3
"""The web UI's browser test: headless Chromium (Debian's, /usr/bin/chromium) driven by
Playwright through a live cluster that scripts/ui-test.sh starts.

It navigates by clicking, as an operator would: roles -> role -> job -> instance, watches an
instance restart live (the CLI restarts it; the page is never reloaded), reads the task's
stdout through the scheduler (and follows it), opens a PENDING job's instance and reads why it
is pending, and visits the updates, maintenance, quotas and cluster pages. A full-page
screenshot of every page visited goes to $BOREALIS_UI_SCREENSHOTS/NN-name.png.

Environment (ui-test.sh sets it): BOREALIS_UI_URL (the scheduler's HTTP base URL),
BOREALIS_UI_SCHEDULER (its binary-protocol address, for the CLI), BOREALIS_BIN,
BOREALIS_UI_CHROMIUM, BOREALIS_UI_SCREENSHOTS, and BOREALIS_UI_TOKEN when the scheduler runs
with --auth-file (the test then signs in with it in the UI).
"""

import os
import re
import subprocess
import sys
import time

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

URL = os.environ["BOREALIS_UI_URL"].rstrip("/")
SCHEDULER = os.environ["BOREALIS_UI_SCHEDULER"]
BIN = os.environ["BOREALIS_BIN"]
CHROMIUM = os.environ.get("BOREALIS_UI_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("BOREALIS_UI_SCREENSHOTS", "target/ui-screenshots")
TOKEN = os.environ.get("BOREALIS_UI_TOKEN", "")
# With auth: a principal that may only read role www.
VIEWER_TOKEN = os.environ.get("BOREALIS_UI_VIEWER_TOKEN", "")

WAIT_MS = 20_000
# Chromium's flags that work on this machine (no sandbox as root, no GPU, nothing that phones
# home). Playwright gives it a fresh, empty user-data dir.
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


class Failure(Exception):
    """A failed check, with what was expected and what the page showed."""


def tid(name):
    return f'[data-testid="{name}"]'


class UiTest:
    def __init__(self, page):
        self.page = page
        self.shot_no = 0
        self.js_errors = []
        self.step_name = "start"
        page.on("pageerror", lambda e: self.js_errors.append(f"page error: {e}"))
        page.on(
            "console",
            lambda m: m.type == "error"
            and "Failed to load resource" not in m.text
            and self.js_errors.append(f"console error: {m.text}"),
        )

    # ------------------------------------------------------------ helpers

    def step(self, name):
        self.step_name = name
        print(f"ui-test: {name}", flush=True)

    def shot(self, name):
        self.shot_no += 1
        os.makedirs(SHOTS, exist_ok=True)
        path = os.path.join(SHOTS, f"{self.shot_no:02d}-{name}.png")
        self.page.screenshot(path=path, full_page=True)
        print(f"ui-test:   screenshot {path}", flush=True)

    def banner(self):
        b = self.page.locator(tid("error-banner"))
        return b.inner_text() if b.is_visible() else ""

    def expect(self, what, check):
        """Runs a Playwright expect(...) and turns its failure into a clear one."""
        try:
            check()
        except AssertionError as e:
            shown = self.banner()
            detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise Failure(
                f"[{self.step_name}] expected {what} within {WAIT_MS // 1000}s"
                + (f"; the page's error banner says: {shown!r}" if shown else "")
                + (f" ({detail})" if detail else "")
            ) from None

    def visible(self, testid, what=None):
        loc = self.page.locator(tid(testid))
        self.expect(what or f"{testid} to be visible", lambda: expect(loc.first).to_be_visible(timeout=WAIT_MS))
        return loc.first

    def attr(self, testid, name, value, what):
        loc = self.page.locator(tid(testid)).first
        self.expect(what, lambda: expect(loc).to_have_attribute(name, value, timeout=WAIT_MS))
        return loc

    def text(self, testid, pattern, what, timeout=WAIT_MS):
        loc = self.page.locator(tid(testid)).first
        self.expect(what, lambda: expect(loc).to_contain_text(pattern, timeout=timeout))
        return loc

    def rows(self, testid, n, what):
        self.attr(testid, "data-rows", str(n), what)

    def click(self, testid):
        loc = self.visible(testid, f"a link or button {testid} to click")
        loc.click()

    def mark_no_reload(self):
        self.page.evaluate("window.__borealisNoReload = true")

    def assert_no_reload(self, what):
        if not self.page.evaluate("window.__borealisNoReload === true"):
            raise Failure(f"[{self.step_name}] the page was reloaded while {what}")

    def cli(self, *args, timeout=60):
        env = dict(os.environ)
        if TOKEN:
            env["BOREALIS_TOKEN"] = TOKEN
        return subprocess.Popen(
            [BIN, *args, "--scheduler", SCHEDULER],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def filter_keeps_text(self, testid, text, table, rows, what):
        """Types into a filter, sees the table filtered server-side, and sees the text
        survive the next polls."""
        box = self.visible(testid)
        box.fill(text)
        self.rows(table, rows, what)
        self.page.wait_for_timeout(2600)  # a poll or more
        if box.input_value() != text:
            raise Failure(f"[{self.step_name}] the filter text was lost on refresh: {box.input_value()!r}")
        self.rows(table, rows, f"{what}, still after a refresh")
        if not box.evaluate("el => el === document.activeElement"):
            raise Failure(f"[{self.step_name}] the filter box lost focus on refresh")

    # ------------------------------------------------------------ the flow

    def run(self):
        p = self.page
        self.step("open / and sign in if the scheduler needs a token")
        p.goto(f"{URL}/")
        if TOKEN:
            self.visible("login-dialog", "the sign-in dialog (the scheduler has --auth-file)")
            p.locator(tid("token-input")).fill("not-a-known-token-0000")
            p.locator(tid("token-submit")).click()
            self.text("login-error", re.compile(r"\S"), "an unknown token to be refused in the dialog")
            self.shot("sign-in")
            p.locator(tid("token-input")).fill(TOKEN)
            p.locator(tid("token-submit")).click()
            self.text("principal", "ops", "the signed-in principal 'ops' in the header")
        else:
            self.visible("auth-off", "'auth off' in the header (no --auth-file)")
        self.text("cluster-name", "ui-test", "the cluster name in the header")

        self.step("roles page")
        self.attr("roles-table", "data-loaded", "true", "the roles table to load")
        self.visible("role-link-www", "role www in the roles table")
        self.visible("role-link-batch", "role batch in the roles table")
        self.filter_keeps_text("roles-filter", "bat", "roles-table", 1, "only role batch for filter 'bat'")
        if "q=bat" not in p.url:
            raise Failure(f"[{self.step_name}] the filter is not kept in the address: {p.url}")
        p.locator(tid("roles-filter")).fill("")
        self.rows("roles-table", 2, "both roles again with the filter cleared")
        self.shot("roles")

        self.step("role www -> its jobs")
        self.click("role-link-www")
        self.visible("job-link-www/prod/hello", "job www/prod/hello in role www's jobs")
        self.visible("job-link-www/staging/web", "job www/staging/web in role www's jobs")
        self.shot("role-www")

        self.step("job www/prod/hello -> its instances")
        self.click("job-link-www/prod/hello")
        self.rows("instances-table", 2, "2 instances of www/prod/hello")
        for i in (0, 1):
            self.attr(f"instance-row-{i}", "data-state", "RUNNING", f"instance {i} to be RUNNING")
        p.locator(tid("state-filter")).select_option("PENDING")
        self.visible("instances-table-empty", "no instances for the PENDING filter")
        p.locator(tid("state-filter")).select_option("RUNNING")
        self.rows("instances-table", 2, "2 RUNNING instances with the RUNNING filter")
        p.locator(tid("state-filter")).select_option("")
        self.rows("instances-table", 2, "2 instances with the filter off")
        self.shot("job-hello")

        self.step("instance 0, then restart it from the CLI and watch it live")
        self.click("instance-link-0")
        self.attr("instance-state", "data-state", "RUNNING", "instance 0 to show RUNNING")
        old_task = self.visible("task-id").inner_text().strip()
        self.text("task-host", "host-a", "instance 0's host")
        self.visible("events", "instance 0's events")
        self.mark_no_reload()
        self.shot("instance-running")
        restart = self.cli("job", "restart", "www/prod/hello", "--instances", "0", "--watch-secs", "1")
        seen = []
        deadline = time.monotonic() + 45
        while True:
            state = p.locator(tid("instance-state")).get_attribute("data-state")
            task = p.locator(tid("task-id")).inner_text().strip()
            if not seen or seen[-1] != (task, state):
                seen.append((task, state))
            if task != old_task and state == "RUNNING":
                break
            if time.monotonic() > deadline:
                raise Failure(
                    f"[{self.step_name}] expected instance 0 to get a new task and show it RUNNING "
                    f"without a reload within 45s; saw {seen}; banner: {self.banner()!r}"
                )
            p.wait_for_timeout(100)
        self.assert_no_reload("the restart was watched")
        print(f"ui-test:   states seen live: {' -> '.join(f'{t[-4:]}:{s}' for t, s in seen)}")
        self.text("history-table", old_task, "the old task among the earlier tasks")
        old_row = p.locator(tid("history-table")).locator("tr", has_text=old_task)
        self.expect(
            "the old task to show KILLED in the earlier tasks",
            lambda: expect(old_row.locator('[data-state="KILLED"]')).to_be_visible(timeout=WAIT_MS),
        )
        try:
            out, _ = restart.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            restart.kill()
            raise Failure(f"[{self.step_name}] borealis job restart did not finish within 60s")
        if restart.returncode != 0:
            raise Failure(f"[{self.step_name}] borealis job restart failed: {out.strip()}")
        self.shot("instance-restarted")

        self.step("stdout of instance 0's task, then follow it")
        self.click("stdout-link")
        self.text("log-text", "hello-from-borealis", "the task's stdout to show hello-from-borealis")
        self.mark_no_reload()
        log = p.locator(tid("log-text"))
        ticks = [int(n) for n in re.findall(r"tick (\d+)", log.inner_text())]
        last = max(ticks, default=0)
        p.locator(tid("log-follow")).check()
        self.text(
            "log-text",
            re.compile(rf"tick {last + 2}\b"),
            f"following the log to show 'tick {last + 2}' (after tick {last})",
        )
        self.text("log-status", "following", "the log's status to say it follows")
        self.assert_no_reload("the log was followed")
        self.shot("stdout")

        self.step("the pending job's instance and why it is pending")
        self.click("nav-roles")
        self.click("role-link-batch")
        self.visible("job-link-batch/devel/once", "job batch/devel/once in role batch")
        self.shot("role-batch")
        self.click("job-link-batch/prod/huge")
        self.attr("instance-row-0", "data-state", "PENDING", "batch/prod/huge instance 0 to be PENDING")
        self.text("instance-row-0", "insufficient ram", "the pending reason in the instances table")
        self.shot("job-pending")
        self.click("instance-link-0")
        self.attr("instance-state", "data-state", "PENDING", "the instance page to show PENDING")
        reason = self.text("pending-reason-text", "insufficient ram", "the pending reason, prominently")
        print(f"ui-test:   pending reason: {reason.inner_text()!r}")
        self.shot("instance-pending")

        self.step("updates page: an active update, then a job's finished one")
        self.click("nav-updates")
        active = p.locator(tid("active-updates-table"))
        self.expect(
            "www/staging/api's update 1 (waiting for a pulse) among the active updates",
            lambda: expect(active.locator(tid("update-link-www/staging/api-1"))).to_be_visible(
                timeout=WAIT_MS
            ),
        )
        self.text(
            "update-progress-www/staging/api-1", "/ 2 instances", "the active update's progress bar"
        )
        self.shot("updates")
        self.filter_keeps_text(
            "updates-job-filter",
            "www/staging/web",
            "finished-updates-table",
            1,
            "www/staging/web's finished update for the job filter",
        )
        finished = p.locator(tid("finished-updates-table"))
        self.expect(
            "www/staging/web's update 1 to be ROLLED_FORWARD",
            lambda: expect(finished.locator('[data-state="ROLLED_FORWARD"]')).to_be_visible(
                timeout=WAIT_MS
            ),
        )
        self.text("update-progress-www/staging/web-1", "2 / 2", "the update's progress bar: 2 / 2")
        self.shot("updates-of-web")
        self.click("update-link-www/staging/web-1")
        self.attr("update-status", "data-state", "ROLLED_FORWARD", "the update page's status")
        self.rows("update-instances-table", 2, "the update's 2 instances")
        self.text("update-diff", "web v2", "the config diff to show the new command")
        self.shot("update-detail")

        self.step("maintenance page")
        self.click("nav-maintenance")
        self.attr("host-row-host-a2", "data-mode", "SCHEDULED", "host-a2 in maintenance (SCHEDULED)")
        self.shot("maintenance")

        self.step("quotas page")
        self.click("nav-quotas")
        self.visible("quota-row-www", "role www in the quotas table")
        self.text("quota-www-cpu", "4 cores", "www's CPU quota bar (of 4 cores)")
        self.visible("quota-row-batch", "role batch in the quotas table")
        self.shot("quotas")

        self.step("cluster page")
        self.click("nav-cluster")
        self.text("cluster-agents", "2", "2 agents")
        self.rows("agents-table", 2, "2 agents in the agents table")
        self.visible("agent-row-a1")
        self.attr("agent-row-a1", "data-connected", "true", "agent a1 to be connected")
        self.visible("util-cpu", "the CPU utilization bar")
        self.text("cluster-states", "RUNNING", "tasks by state to count RUNNING tasks")
        self.text("cluster-modes", "SCHEDULED", "agents by mode to count the SCHEDULED host")
        self.shot("cluster")
        self.filter_keeps_text("agents-filter", "a2", "agents-table", 1, "only agent a2 for filter 'a2'")
        self.visible("agent-row-a2")

        if VIEWER_TOKEN:
            self.step("sign in as a read-only principal of www and be refused role batch's job")
            self.click("sign-out")
            self.visible("login-dialog", "the sign-in dialog after signing out")
            p.locator(tid("token-input")).fill(VIEWER_TOKEN)
            p.locator(tid("token-submit")).click()
            self.text("principal", "viewer", "the signed-in principal 'viewer' in the header")
            self.click("nav-roles")
            self.visible("role-link-www", "role www for the viewer")
            # A job of a role the viewer may not read: its address, as a bookmark would open it.
            p.goto(f"{URL}/#/job/batch/prod/huge")
            self.attr("error-banner", "data-status", "403", "a 403 refusal in the banner")
            self.text("error-text", "permission denied", "the API's one-line refusal in the banner")
            print(f"ui-test:   refusal: {self.banner()!r}")
            self.shot("forbidden")

        if self.js_errors:
            raise Failure("JavaScript errors on the pages: " + "; ".join(self.js_errors[:5]))


def main():
    # This run's screenshots only.
    if os.path.isdir(SHOTS):
        for name in os.listdir(SHOTS):
            if re.fullmatch(r"\d\d-.*\.png", name):
                os.remove(os.path.join(SHOTS, name))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        test = UiTest(page)
        try:
            test.run()
        except (Failure, PlaywrightError) as e:
            print(f"ui-test: FAILED: {e}", file=sys.stderr, flush=True)
            try:
                test.shot(f"FAILED-{re.sub(r'[^a-z0-9]+', '-', test.step_name.lower())[:40]}")
            except PlaywrightError:
                pass
            return 1
        finally:
            browser.close()
    print(f"ui-test: PASSED ({test.shot_no} screenshots in {SHOTS})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
