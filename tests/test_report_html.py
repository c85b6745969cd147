"""The HTML report: self-contained, readable in a real browser (headless Debian Chromium), generic for unknown kinds.

The browser is driven through the DevTools protocol over a loopback websocket (``websocket-client``):
console errors, uncaught exceptions, log errors (e.g. a failed image load) and every network request are
recorded while the page loads; then every ``<img>`` must have decoded (``naturalWidth > 0``) and a
screenshot is saved into the test's tmp folder.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from neuros.plugins.cv.cli import main
from neuros.plugins.cv.report.html import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


class Browser:
    """A headless Chromium and one page, driven over the DevTools protocol (flattened target sessions)."""

    def __init__(self, profile: Path) -> None:
        import websocket

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=60, suppress_origin=True)
        self._ids = itertools.count(1)
        self.events: list[dict] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=True)

    def send(self, method: str, session: bool = False, **params) -> dict:
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout} s")
            self.events.append(json.loads(self.ws.recv()))

    def open(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")
        self.send("Runtime.evaluate", session=True, expression="1", awaitPromise=True)  # drain late events

    def evaluate(self, expression: str):
        out = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        return out["result"]["value"]

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen since the last :meth:`open`."""
        found = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                found.append("exception: " + p["exceptionDetails"].get("text", ""))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                found.append(f"log ({p['entry'].get('source')}): {p['entry']['text']}")
        return found

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path, width: int = 1200, max_height: int = 6000) -> Path:
        height = min(int(self.evaluate("document.documentElement.scrollHeight")), max_height)
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
            self.proc.wait()


IMAGES = "JSON.stringify(Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src.slice(0, 22)]))"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (`make test` installs it with apt-get)")
    pytest.importorskip("websocket", reason="websocket-client (dev extra) is needed to drive chromium")
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "bench"
    assert main(["bench", "--config", "quick", "--out", str(out)]) == 0
    return out


def test_bench_writes_a_self_contained_report_and_pngs(report):
    html = (report / "report.html").read_text(encoding="utf-8")
    pngs = sorted(p.name for p in (report / "figures").iterdir())
    assert pngs == ["crossmodal.png", "overlays.png", "pca.png", "registration.png"]
    for p in (report / "figures").iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each PNG is embedded exactly as written; nothing is fetched from anywhere.
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(
        (report / "figures" / n).read_bytes() for n in pngs
    )
    assert not re.search(r'(src|href)="(?!data:)', html) and "<script" not in html
    doc = json.loads((report / "results.json").read_text())
    for caption in ("Table 1", "Table 2", "Table 3", "Provenance", "Resolved configuration", "Weights used"):
        assert caption in html
    # The provenance block names the seed, each backbone's weights, versions, machine and timings.
    assert f"Seed: <b>{doc['config']['seed']}</b>" in html
    assert all(b["weights"] in html for b in doc["backbones"])
    assert doc["provenance"]["versions"]["numpy"] in html and "cpu_count" in html and "figures" in html
    em = next(r for r in doc["results"]["segmentation"] if r["modality"] == "em")
    assert f"{em['accuracy']:.3f}" in html  # the same rounded numbers as tables.md


def test_report_opens_in_chromium_without_errors(report, browser, tmp_path):
    browser.open((report / "report.html").as_uri())
    assert browser.errors() == []
    images = json.loads(browser.evaluate(IMAGES))
    assert len(images) == 4
    assert all(complete and width > 0 and src.startswith("data:image/png") for complete, width, src in images)
    assert all(u.startswith(("file://", "data:")) for u in browser.requests()), browser.requests()
    shot = browser.screenshot(tmp_path / "report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("NEUROS_KEEP_SCREENSHOT"):  # for a human to look at
        shutil.copy(shot, os.environ["NEUROS_KEEP_SCREENSHOT"])


def test_the_browser_check_catches_a_broken_image_and_a_console_error(browser, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<html><body><img src="missing.png"><script>console.error("boom")</script></body></html>')
    browser.open(page.as_uri())
    errors = browser.errors()
    assert any("boom" in e for e in errors) and any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in errors)
    assert json.loads(browser.evaluate(IMAGES))[0][1] == 0


def test_unknown_result_kinds_render_as_generic_tables():
    doc = {
        "config": {"name": "real", "seed": 3},
        "backbones": [{"name": "filterbank", "weights": "none"}],
        "results": {
            "segmentation": [{"dataset": "sstem", "dice": 0.71, "n": 4}],  # not the report's layout
            "volumes": [{"volume": "a", "iou": 0.5, "per_slice": [0.4, 0.6]}],
            "summary": {"best": "filterbank"},
        },
        "provenance": {"versions": {"numpy": "9.9"}, "timings_s": {"total": 1.0}},
    }
    html = render_html(doc)
    for text in ("sstem", "0.71", "volumes", "[0.4, 0.6]", "summary", "Seed: <b>3</b>", "Filterbank = none", "9.9"):
        assert text in html
    assert "Table 1" not in html


def test_documents_with_top_level_results_and_backbone_specs():
    # The real-data suite's results.json keeps its experiments at the top level and names backbones by spec.
    doc = {
        "schema": "neuros-cv/bench-real/1",
        "config": {"name": "real", "seed": 0},
        "backbones": [{"spec": "vit-small@random", "weights": "random(seed=0)"}],
        "segmentation": [{"dataset": "sstem", "spec": "vit-small@random", "classes": {"membrane": {"dice": 0.61}}}],
        "skipped": [],
        "provenance": {"timings_s": {"total": 2.0}},
    }
    html = render_html(doc)
    assert "vit-small@random" in html and "random(seed=0)" in html and "sstem" in html
    assert "<th>classes.membrane.dice</th>" in html and ">0.61<" in html  # nested records become columns
    assert "<caption>skipped</caption>" not in html and "bench-real" in html


def test_bench_refuses_an_existing_report_folder(report, capsys):
    before = (report / "report.html").read_bytes()
    assert main(["bench", "--config", "quick", "--out", str(report)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (report / "report.html").read_bytes() == before
