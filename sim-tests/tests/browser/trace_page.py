#!/usr/bin/python3
"""Browser test of a seed's picture (`sim trace SEED --html FILE`).

Runs the simulator on a seed with an injected bug, opens the HTML page it writes in headless
Chromium (file://, offline) and checks that:
  - every message of the seed's text trace is one arrow element (the messages are counted here,
    from the .trace file's send/lost lines, not from the page's data), and the dropped or lost
    ones are marked (class "dropped"),
  - the violation is marked by a visible element of class "violation",
  - filtering by one node leaves visible exactly the arrows that touch that node,
  - the console shows no SEVERE error,
and saves a screenshot.

  python3 sim-tests/tests/browser/trace_page.py --screenshot sim-tests/trace-page.png
      [--sim target/release/sim | --sim "cargo run --release -p sim-tests --bin sim --"]
      [--seed 0] [--bug AcceptBelowPromise]

Without --sim it builds the binary with cargo. Exits 77 (skipped) if chromium, chromedriver or
selenium is missing; 1 with a message on a failed check.
"""

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

SKIPPED = 77
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
CHROMEDRIVER = "/usr/bin/chromedriver"
# A message line of the trace: "<time> <sender> send to <node> at ...", "send (dup) to",
# or "lost to <node>" (lost by the network). "send to unknown node" is no message copy.
MESSAGE = re.compile(r"^\S+ (\S+) (?:send(?: \(dup\))? to (?!unknown node)(\S+) at |lost to (\S+) )")
# A copy dropped where it arrived ("drop from <node>: why") or lost by the network.
DROPPED = re.compile(r"^\S+ \S+ (?:drop from |lost to )")
WAIT_S = 30


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def requirements():
    """What is missing to run the test, if anything."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append(
            f"python3-selenium (the selenium module, for {sys.executable}: Debian's package serves /usr/bin/python3)"
        )
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        missing.append("chromium")
    if not os.path.exists(CHROMEDRIVER):
        missing.append(f"chromium-driver ({CHROMEDRIVER})")
    return missing


def sim_command(arg):
    if arg:
        return shlex.split(arg)
    print("building the simulator: cargo build --release -p sim-tests --bin sim", flush=True)
    subprocess.run(["cargo", "build", "--release", "-p", "sim-tests", "--bin", "sim"], cwd=REPO, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return [os.path.join(target, "release", "sim")]


def messages_in_trace(path):
    """Every message line of the trace, as (sender, receiver)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = MESSAGE.match(line)
            if m:
                out.append((m.group(1), m.group(2) or m.group(3)))
    return out


def dropped_in_trace(path):
    """How many message copies the trace drops at delivery or loses in transit."""
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if DROPPED.match(line))


def poll(what, check, timeout=WAIT_S):
    """Waits until check() is truthy (bounded); returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--screenshot", required=True, help="where to save the screenshot (PNG)")
    ap.add_argument("--sim", help="the sim binary or a command that runs it (default: build with cargo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bug", default="AcceptBelowPromise", help="the injected bug that makes the seed fail")
    args = ap.parse_args()

    missing = requirements()
    if missing:
        print("SKIPPED: missing " + ", ".join(missing), file=sys.stderr)
        print("install with: apt-get install chromium chromium-driver python3-selenium", file=sys.stderr)
        sys.exit(SKIPPED)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import Select

    work = tempfile.mkdtemp(prefix="trace-page-")
    page = os.path.join(work, "trace.html")
    cmd = sim_command(args.sim) + ["trace", str(args.seed), "--bug", args.bug, "--html", page]
    print("running: " + shlex.join(cmd), flush=True)
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        fail(f"the simulator exited {run.returncode}:\n{run.stderr}")
    found = re.search(r"^trace: (.+)$", run.stderr, re.M)
    if not found or not os.path.exists(page):
        fail(f"the simulator did not report its trace or write {page}:\n{run.stderr}")
    if "failed" not in run.stderr:
        fail(f"seed {args.seed} with bug {args.bug} did not fail, so there is no violation to see:\n{run.stderr}")
    trace = found.group(1).strip()
    messages = messages_in_trace(trace)
    undelivered = dropped_in_trace(trace)
    if not messages:
        fail("the trace has no message lines")
    print(f"trace: {len(messages)} messages", flush=True)

    opts = webdriver.ChromeOptions()
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        driver.get("file://" + page)
        try:
            poll("the page's model (window.tracePage)", lambda: driver.execute_script("return !!window.tracePage"))
        except SystemExit:
            print(f"console: {driver.get_log('browser')}", file=sys.stderr)
            raise

        arrows = driver.execute_script("return document.querySelectorAll('#diagram .arrow').length")
        if arrows != len(messages):
            fail(f"{arrows} arrow elements for {len(messages)} messages in the trace")
        print(f"ok: {arrows} arrows, one per message", flush=True)

        dropped = driver.execute_script("return document.querySelectorAll('#diagram .arrow.dropped').length")
        if dropped != undelivered:
            fail(f"{dropped} arrows marked dropped, the trace drops or loses {undelivered} messages")
        print(f"ok: {dropped} dropped or lost arrows marked", flush=True)

        violations = driver.find_elements("css selector", "#diagram .violation")
        if not any(v.is_displayed() for v in violations):
            fail("no visible element of class 'violation'")
        banner = driver.find_element("id", "violation-banner")
        if not banner.is_displayed() or "Violation" not in banner.text:
            fail("the violation banner is not shown")
        print("ok: the violation is marked", flush=True)

        # The node with the most messages: filtering by it must show exactly its arrows.
        counts = {}
        for sender, receiver in messages:
            for n in {sender, receiver}:
                counts[n] = counts.get(n, 0) + 1
        node = max(sorted(counts), key=lambda n: counts[n])
        Select(driver.find_element("id", "filter-node")).select_by_visible_text(node)
        visible = driver.execute_script(
            """const d = window.tracePage.data;
               return [...document.querySelectorAll('#diagram .arrow')]
                 .filter((e) => getComputedStyle(e).display !== 'none')
                 .map((e) => d.arrows[Number(e.dataset.ix)])
                 .map((a) => [d.nodes[a.from].name, d.nodes[a.to].name]);""")
        if len(visible) != counts[node]:
            fail(f"filtered by {node}: {len(visible)} arrows visible, the trace has {counts[node]} messages of it")
        if len(visible) >= len(messages):
            fail(f"filtering by {node} hid nothing")
        strangers = [v for v in visible if node not in v]
        if strangers:
            fail(f"filtered by {node}: arrows between other nodes stay visible: {strangers[:5]}")
        print(f"ok: filtered by {node}, {len(visible)} of {len(messages)} arrows visible", flush=True)

        # The picture for the README: every message again, around the violation.
        driver.find_element("id", "reset").click()
        driver.find_element("id", "violation-focus").click()
        driver.find_element("id", "reset").click()
        poll("every arrow shown again", lambda: driver.execute_script(
            "return [...document.querySelectorAll('#diagram .arrow')]"
            ".every((e) => getComputedStyle(e).display !== 'none')"))

        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        if severe:
            fail(f"console errors: {severe}")
        print("ok: no console errors", flush=True)

        os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
        if not driver.save_screenshot(args.screenshot):
            fail(f"could not save the screenshot to {args.screenshot}")
        print(f"screenshot: {args.screenshot} ({os.path.getsize(args.screenshot)} bytes)", flush=True)
    finally:
        driver.quit()
        shutil.rmtree(work, ignore_errors=True)
    print("trace_page: all checks passed")


if __name__ == "__main__":
    main()
