"""A small headless-Chromium driver for the book tests, over the DevTools protocol.

It serves a folder on 127.0.0.1, opens pages in headless Chromium with every other
host unresolvable, and reports for each page: the DOM after scripts ran, the URLs
the page requested, console errors and uncaught exceptions.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import websocket  # websocket-client

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--window-size=1280,1000",  # a laptop screen: the book's text column is then about 760 px wide
    # Nothing but the local server resolves: a page that needed the network would fail.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


def find_chromium() -> str | None:
    """Return the path of a Chromium/Chrome binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """Serve `folder` on 127.0.0.1 at a free port; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class PageReport:
    """What a page did in the browser."""

    url: str
    html: str = ""
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    checks: dict = field(default_factory=dict)


# Evaluated in the page once it has settled: counts of what rendered and what did not.
PAGE_CHECKS_JS = r"""
(() => {
  const main = document.querySelector('main') || document.body;
  // Prose only: code cells and their outputs may legitimately contain TeX source.
  const prose = main.cloneNode(true);
  prose.querySelectorAll('pre, code, .cell_output, .output, script, style').forEach(e => e.remove());
  const text = prose.textContent;
  const mermaidDivs = [...document.querySelectorAll('pre.mermaid, div.mermaid')];
  const imgs = [...main.querySelectorAll('img')];
  // Each diagram's scale: rendered width over the width Mermaid laid it out at (its viewBox).
  // Labels are drawn at the body font size, so a scale of 0.5 means half-size text.
  const diagrams = mermaidDivs.map(d => d.querySelector('svg')).filter(s => s).map(s => {
    const natural = s.viewBox && s.viewBox.baseVal ? s.viewBox.baseVal.width : 0;
    const rendered = s.getBoundingClientRect().width;
    return {natural: Math.round(natural), rendered: Math.round(rendered),
            scale: natural > 0 ? rendered / natural : 1,
            label: (s.textContent || '').trim().slice(0, 60)};
  });
  const paragraph = main.querySelector('p');
  return JSON.stringify({
    mathjax: document.querySelectorAll('mjx-container').length,
    mathjax_errors: document.querySelectorAll('mjx-merror').length,
    mermaid_blocks: mermaidDivs.length,
    mermaid_svgs: mermaidDivs.filter(d => d.querySelector('svg')).length,
    raw_display_math: (text.match(/\$\$/g) || []).length,
    raw_tex_commands: (text.match(/\\(frac|sum|prod|mathbf|operatorname|begin\{|sqrt)\b/g) || []).length,
    images: imgs.length,
    broken_images: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    diagrams: diagrams,
    column_px: paragraph ? Math.round(paragraph.getBoundingClientRect().width) : 0,
  });
})()
"""


class Chromium:
    """One headless Chromium process driven over the DevTools protocol."""

    def __init__(self, binary: str):
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self._proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not start (no DevToolsActivePort after 30 s)")
            time.sleep(0.1)
        self._port = int(port_file.read_text().split()[0])
        self._id = 0

    def close(self) -> None:
        """Stop the browser and remove its profile."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _new_target(self) -> dict:
        req = urllib.request.Request(f"http://127.0.0.1:{self._port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def visit(self, url: str, settle_s: float = 2.0, timeout_s: float = 60.0) -> PageReport:
        """Load `url`, wait for it to settle, and report what happened."""
        target = self._new_target()
        ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=timeout_s)
        report = PageReport(url=url)

        def send(method: str, **params) -> int:
            self._id += 1
            ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
            return self._id

        def handle(msg: dict) -> None:
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Network.requestWillBeSent":
                report.requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed" and not params.get("canceled"):
                report.failed_requests.append(f"{params.get('errorText')} ({params.get('requestId')})")
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                desc = details.get("exception", {}).get("description") or details.get("text")
                report.console_errors.append(f"uncaught: {desc}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                report.console_errors.append(f"console.error: {args}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                report.console_errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")

        def call(method: str, **params) -> dict:
            msg_id = send(method, **params)
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == msg_id:
                    if "error" in msg:
                        raise RuntimeError(f"{method} failed: {msg['error']}")
                    return msg.get("result", {})
                handle(msg)

        try:
            for domain in ("Network", "Runtime", "Log", "Page"):
                call(f"{domain}.enable")
            call("Page.navigate", url=url)
            deadline = time.monotonic() + timeout_s
            loaded_at = None
            ws.settimeout(0.25)
            while time.monotonic() < deadline:
                try:
                    msg = json.loads(ws.recv())
                except websocket.WebSocketTimeoutException:
                    msg = {}
                if msg.get("method") == "Page.loadEventFired":
                    loaded_at = time.monotonic()
                handle(msg)
                if loaded_at is not None and time.monotonic() - loaded_at > settle_s:
                    break
            ws.settimeout(timeout_s)
            result = call("Runtime.evaluate", expression=PAGE_CHECKS_JS, returnByValue=True)
            report.checks = json.loads(result["result"]["value"])
            html = call("Runtime.evaluate", expression="document.documentElement.outerHTML", returnByValue=True)
            report.html = html["result"]["value"]
        finally:
            ws.close()
            with contextlib.suppress(Exception):
                urllib.request.urlopen(f"http://127.0.0.1:{self._port}/json/close/{target['id']}", timeout=5)
        return report
