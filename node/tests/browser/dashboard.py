#!/usr/bin/env python3
"""Browser test of the dashboard every node serves at /.

    node/tests/browser/dashboard.py path/to/replicator screenshot.png

Starts a real 3 x 3 demo network (`replicator demo`, on 127.0.0.1, on free ports), opens `/` of
node 1 in headless Chromium (Selenium) and checks: all nine peer ids appear, grouped in their
three clusters; without the API token (the demo always has one) no write or remove control is
shown; a node killed with SIGKILL is marked down within 10 s; with the token given, a PUT
through the key box shows its value in the key view's row of every live node; the browser
console has no SEVERE entry; and when the node serving the page is killed, the page says so.
Saves a screenshot to the path given. Everything it started is killed at the end, also on
failure.

Exit 0: passed; 1: a check failed (the message says which); 77: skipped, something it needs is
missing (the message says what and how to install it).
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SKIP = 77
NODES = 9
INSTALL = "apt-get install chromium chromium-driver python3-selenium"


def fail(msg):
    raise AssertionError(msg)


def check_prerequisites():
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append(f"the Python module selenium (for {sys.executable})")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        missing.append("chromium")
    if not os.access("/usr/bin/chromedriver", os.X_OK):
        missing.append("/usr/bin/chromedriver")
    if missing:
        print(
            "SKIP: missing " + ", ".join(missing) + f". Install them with: {INSTALL}"
            " (Debian's selenium is for /usr/bin/python3: run this script with it)",
            file=sys.stderr,
        )
        sys.exit(SKIP)
    return chromium


def wait_for(what, timeout, f, interval=0.2):
    """Polls f until it returns a truthy value (returned); fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = f()
            if value:
                return value
        except Exception as e:  # a page being redrawn, a node not answering yet
            last_error = e
        time.sleep(interval)
    fail(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))


def free_port_base(count):
    """A port such that port .. port+count-1 are all free on 127.0.0.1 now, below the
    kernel's ephemeral range (32768 and up), where an outgoing connection could take one of
    them before the node binds it."""
    for _ in range(200):
        base = random.randint(20000, 32767 - count)
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    fail("no run of free ports found")


def get_json(url, timeout=3):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def pid_of_node(data_dir):
    """The pid of the `replicator run` whose --data-dir is data_dir (from /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"run" in args and data_dir.encode() in args:
            return int(entry)
    return None


def start_demo(binary, work):
    base = free_port_base(NODES)
    out_path = os.path.join(work, "demo.out")
    out = open(out_path, "w")
    # Its own process group: the nodes it starts are in it too, so one killpg stops them all.
    demo = subprocess.Popen(
        [binary, "demo", "--http-port", str(base), "--data-dir", os.path.join(work, "net")],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )

    def summary():
        if demo.poll() is not None:
            fail("the demo exited at start:\n" + open(out_path).read())
        text = open(out_path).read()
        return text if "Ctrl-C stops" in text else None

    text = wait_for("the demo's 9 nodes", 180, summary, 0.5)
    nodes = []
    for line in text.splitlines():
        m = re.match(r"\s+node (\d+)\s+(\S+)\s+(http://\S+)\s+(\S+)$", line)
        if m:
            nodes.append({"n": int(m[1]), "cluster": m[2], "http": m[3], "peer": m[4],
                          "dir": os.path.join(work, "net", f"node-{m[1]}")})
    if len(nodes) != NODES:
        fail(f"expected {NODES} nodes in the demo's summary, got {len(nodes)}:\n{text}")
    if not text.lstrip().startswith("dashboard: " + nodes[0]["http"] + "/"):
        fail("the demo does not print the dashboard's address first:\n" + text)
    token = open(os.path.join(work, "net", "api.token")).read().split()[0]
    return demo, nodes, token


def stop_demo(demo):
    try:
        os.killpg(demo.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        demo.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(demo.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        demo.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def start_browser(chromium):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def severe(driver):
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def run(binary, screenshot, chromium, work):
    from selenium.webdriver.common.by import By

    demo, nodes, token = start_demo(binary, work)
    driver = None
    try:
        for n in nodes:
            wait_for(f"node {n['n']} writable", 60,
                     lambda n=n: get_json(n["http"] + "/health")["writable"])
        driver = start_browser(chromium)
        driver.set_page_load_timeout(30)
        serving = nodes[0]
        driver.get(serving["http"] + "/")

        # The page redraws every second: each read takes what it needs in one script, so that
        # it never holds an element that was replaced meanwhile.
        def states():
            return driver.execute_script(
                "const s = {}; for (const r of document.querySelectorAll('tr.node'))"
                " s[r.dataset.peer] = r.dataset.state; return s;")

        def has_remove(peer):
            return driver.execute_script(
                "for (const r of document.querySelectorAll('tr.node'))"
                " if (r.dataset.peer === arguments[0]) return !!r.querySelector('button.remove');"
                " return false;", peer)

        def grouped():
            groups = driver.execute_script(
                "const g = {}; for (const c of document.querySelectorAll('.cluster'))"
                " g[c.dataset.cluster] = [...c.querySelectorAll('tr.node')].map(r => r.dataset.peer);"
                " return g;")
            return {c: sorted(p) for c, p in groups.items()}

        expected = {}
        for n in nodes:
            expected.setdefault(n["cluster"], []).append(n["peer"])
        expected = {c: sorted(p) for c, p in expected.items()}
        wait_for("all nine peer ids grouped in their three clusters", 20, lambda: grouped() == expected)
        wait_for("every member up", 20,
                 lambda: len(states()) == NODES and all(st == "up" for st in states().values()))
        conn = driver.find_element(By.ID, "conn")
        if conn.get_attribute("data-state") != "live":
            fail(f"the page does not say it is live: {conn.text!r}")

        # The demo has an API token: without it, no write or remove controls.
        if driver.find_element(By.ID, "write-controls").is_displayed():
            fail("write controls shown without the API token")
        if not driver.find_element(By.ID, "token-bar").is_displayed():
            fail("the page does not ask for the API token")

        # A node killed -9 (of another cluster than the serving node's) is down within 10 s.
        victim = nodes[8]
        pid = pid_of_node(victim["dir"])
        if pid is None:
            fail(f"cannot find the process of node {victim['n']}")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(f"node {victim['n']} marked down", 10,
                 lambda: states()[victim["peer"]] == "down", 0.1)
        print(f"node {victim['n']} marked down {time.monotonic() - killed_at:.1f} s after SIGKILL")
        if driver.execute_script("return document.querySelectorAll('button.remove').length"):
            fail("a remove control shown without the API token")

        # With the token: write controls, and a remove control for the dead node.
        driver.find_element(By.ID, "token-input").send_keys(token)
        driver.find_element(By.ID, "token-save").click()
        wait_for("write controls with the token", 10,
                 lambda: driver.find_element(By.ID, "write-controls").is_displayed())
        wait_for("a remove control for the dead node", 10,
                 lambda: has_remove(victim["peer"]))

        # A PUT through the key box: its value shows in every live node's row of the key view.
        key = f"from-the-page-{random.randint(0, 10**9)}"
        value = "hello dashboard"
        driver.find_element(By.ID, "key-input").send_keys(key)
        driver.find_element(By.ID, "value-input").send_keys(value)
        driver.find_element(By.ID, "put-button").click()

        def key_rows():
            rows = driver.execute_script(
                "return [...document.querySelectorAll('tr.key-answer')].map(r =>"
                " [r.dataset.peer, r.dataset.state, r.querySelector('.value').textContent]);")
            return {peer: (state, text) for peer, state, text in rows}

        live = [n["peer"] for n in nodes if n is not victim]
        wait_for("the value in every live node's row of the key view", 20,
                 lambda: all(key_rows().get(p) == ("stored", value) for p in live))
        if key_rows().get(victim["peer"], ("", ""))[0] == "stored":
            fail("the killed node's row claims it holds the value")
        put_result = driver.find_element(By.ID, "put-result").text
        if put_result != f"PUT {key}: stored":
            fail(f"the PUT's outcome is not shown: {put_result!r}")

        # Let the charts draw a few samples with the create and the reads in them.
        wait_for("a chart line", 10, lambda: driver.find_elements(By.CSS_SELECTOR, "#chart-rates polyline"))
        driver.save_screenshot(screenshot)
        print(f"screenshot: {screenshot}")

        errors = severe(driver)
        if errors:
            fail("SEVERE browser console entries:\n" + "\n".join(str(e) for e in errors))

        # The node serving the page stops answering: the page says so.
        serving_pid = pid_of_node(serving["dir"])
        if serving_pid is None:
            fail("cannot find the process of node 1")
        os.kill(serving_pid, signal.SIGKILL)
        wait_for("the page saying its node does not answer", 10,
                 lambda: driver.find_element(By.ID, "conn").get_attribute("data-state") == "down")
        print("OK: the dashboard showed the network, a dead node, a PUT, and its own node gone")
    finally:
        if driver is not None:
            driver.quit()
        stop_demo(demo)


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    binary, screenshot = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    if not os.access(binary, os.X_OK):
        print(f"FAIL: {binary} is not an executable (build it: cargo build -p replicator-node)", file=sys.stderr)
        sys.exit(1)
    chromium = check_prerequisites()
    work = tempfile.mkdtemp(prefix="replicator-dashboard-")
    try:
        run(binary, screenshot, chromium, work)
    except AssertionError as e:
        print(f"FAIL: {e}\n(logs: {work})", file=sys.stderr)
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
