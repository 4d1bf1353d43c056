"""`mixopt report`: the HTML page, opened in a real headless Chromium (Debian's `chromium`, driven over
the DevTools protocol on a pipe): it renders every section and figure, logs no console error,
fetches nothing but itself, and a screenshot is taken."""

import base64
import json
import os
import re
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import small_config, write_config
from typer.testing import CliRunner

from mixopt.cli import app

SECTIONS = ["warnings", "recommendation", "cv", "fit", "effects", "sizes", "suites", "verify"]


def _run(*args):
    r = CliRunner().invoke(app, [*map(str, args)])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.stdout  # stderr (notices) apart: --format json output parses


class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe: JSON messages ended by NUL on fds 3 (in) and 4 (out)."""

    def __init__(self, exe: str, profile: Path):
        cmd_r, self.cmd_w = os.pipe()
        self.res_r, res_w = os.pipe()

        def fds():
            os.dup2(cmd_r, 3)
            os.dup2(res_w, 4)

        self.proc = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                                      f"--user-data-dir={profile}", "--no-first-run", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=fds,
                                     pass_fds=(3, 4))
        os.close(cmd_r)
        os.close(res_w)
        self.buf, self.events, self.next_id, self.session = b"", [], 0, None

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            ready, _, _ = select.select([self.res_r], [], [], max(0.0, deadline - time.time()))
            if not ready:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self.res_r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe")
            self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def send(self, method: str, timeout: float = 120, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self.next_id:
                assert "error" not in m, m
                return m["result"]
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 120) -> dict:
        deadline = time.time() + timeout
        for m in self.events:
            if m.get("method") == method:
                return m
        while True:
            m = self._read(deadline)
            self.events.append(m)
            if m.get("method") == method:
                return m

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.res_r)


def open_in_chromium(page: Path, screenshot: Path, profile: Path) -> tuple[dict, list[dict]]:
    """Load the page; return what the page reports about itself, and every console / network event."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Chromium is not installed (`.ci/run` installs Debian's chromium)")
    dt = DevTools(exe, profile)
    try:
        target = dt.send("Target.createTarget", url="about:blank")["targetId"]
        dt.session = dt.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            dt.send(f"{domain}.enable")
        dt.send("Emulation.setDeviceMetricsOverride", width=1200, height=900, deviceScaleFactor=1, mobile=False)
        dt.send("Page.navigate", url=page.resolve().as_uri())
        dt.wait_event("Page.loadEventFired")
        state = dt.send("Runtime.evaluate", returnByValue=True, expression="""({
            sections: [...document.querySelectorAll('h2[id]')].map(h => h.id),
            images: [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]),
            tables: document.querySelectorAll('table').length,
            warnings: document.querySelectorAll('ul.warnings li').length,
            kinds: [...document.querySelectorAll('table.runs tbody tr')].map(tr => tr.cells[2].textContent),
            rows: document.querySelectorAll('tbody tr').length,
            height: document.body.scrollHeight,
            text: document.body.innerText })""")["result"]["value"]
        # The header-click sort runs without error, and sorts.
        dt.send("Runtime.evaluate", expression="document.querySelector('table.sortable th').click()")
        shot = dt.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return state, dt.events
    finally:
        dt.close()


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.mark.slow
def test_report_renders_in_chromium(corpora, tmp_path):
    cfg = small_config(corpora, tmp_path / "ws", design__runs=2, proxy__tokens=12000)
    config = write_config(tmp_path / "c.yaml", cfg)
    _run("sample", config)
    _run("sweep", config, "--no-progress")  # 3 pure-domain runs, the prior, 2 random
    _run("fit", config, "--no-progress")
    _run("propose", config, "--n", "1")
    _run("sweep", config, "--no-progress", "--mixtures", tmp_path / "small.proposed.yaml")
    _run("fit", config, "--no-progress")
    _run("verify", config, "--no-progress")  # trains the recommendation; the prior's run is reused
    # A target run that may read each domain at most 4 epochs: legal's weight is capped at 0.6. And a
    # suite change: a second suite in the history (weight on another domain, no evaluation needed).
    manifest = json.loads((tmp_path / "ws" / "sample" / "manifest.json").read_text())
    cfg["optimum"] = {"target_tokens": float(4 * manifest["domains"]["legal"]["tokens"] / 0.6), "kl_weight": 0.05}
    cfg["fit"]["objective"]["domains"] = {"prose": 1.0, "code": 0.5}
    write_config(config, cfg)
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()  # an output's folder must exist (README, Command line conventions)
    said = _run("report", config, "--output", out)
    assert f"written to {out}" in said

    text = out.read_text()
    links = _Links()
    links.feed(text)
    assert links.urls and all(u.startswith("data:image/png;base64,") for u in links.urls), links.urls
    assert "http://" not in text and "https://" not in text  # nothing to fetch: one self-contained file

    shot = tmp_path / "report.png"
    state, events = open_in_chromium(out, shot, tmp_path / "profile")
    errors = [e for e in events if e.get("method") == "Runtime.exceptionThrown"
              or e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")
              or e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]
    assert errors == []
    fetched = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    assert all(u.startswith(("file:", "data:")) for u in fetched), fetched
    assert state["sections"] == SECTIONS
    assert len(state["images"]) == 3 and all(ok and w > 300 and h > 200 for _, ok, w, h in state["images"])
    body = state["text"]
    for line in ("Repetition limit: a domain's weight × ", "loglinear (chosen)", "verify:recommended",
                 "(current)", "KL weight toward the prior: 0.05", "Runs by size", "This experiment's compute: "):
        assert line in body, line
    assert body.count("Spearman") >= 2
    # Every warning the command counted is on the page.
    assert state["warnings"] == int(said.split("(")[1].split(" warnings")[0])
    # Every run of the fit is listed with its origin.
    assert sorted(state["kinds"]) == sorted(["pure-domain"] * 3 + ["prior", "design", "design", "proposed", "verify"])
    assert shot.stat().st_size > 50_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sizes = re.search(r'<table class="sortable sizes">.*?</table>', text, re.S).group(0)
    tiny = re.search(r"<td>tiny</td><td>([0-9,]+)</td><td>(\d+)</td>", sizes)
    assert tiny and int(tiny.group(2)) == 8  # runs grouped by size: the tiny swarm's 8 finished runs
    assert state["height"] > 1500  # every section laid out, not an empty page
