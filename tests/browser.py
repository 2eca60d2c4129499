"""A small headless-Chromium driver for the book tests, over the DevTools protocol.

It serves a folder on 127.0.0.1, opens pages in headless Chromium with every other
host unresolvable, and reports for each page: the DOM after scripts ran, the URLs
the page requested, console errors and uncaught exceptions. `Chromium.page` keeps a
page open to run JavaScript in it, wait for a condition and take screenshots.
"""

from __future__ import annotations

import base64
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
    cjk: (text.match(/[\u3400-\u9fff]/g) || []).length,  // Chinese characters of the prose
    latin: (text.match(/[A-Za-z]/g) || []).length,
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

    @contextlib.contextmanager
    def page(self, url: str, settle_s: float = 2.0, timeout_s: float = 60.0):
        """Open `url` in a new tab, wait for it to settle, and yield a `Page` to act on it."""
        target = self._new_target()
        ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=timeout_s)
        page = Page(self, ws, PageReport(url=url), timeout_s)
        try:
            for domain in ("Network", "Runtime", "Log", "Page"):
                page.call(f"{domain}.enable")
            page.call("Page.navigate", url=url)
            deadline = time.monotonic() + timeout_s
            loaded_at = None
            while time.monotonic() < deadline:
                msg = page.receive(0.25)
                if msg.get("method") == "Page.loadEventFired":
                    loaded_at = time.monotonic()
                if loaded_at is not None and time.monotonic() - loaded_at > settle_s:
                    break
            yield page
        finally:
            ws.close()
            with contextlib.suppress(Exception):
                urllib.request.urlopen(f"http://127.0.0.1:{self._port}/json/close/{target['id']}", timeout=5)

    def visit(self, url: str, settle_s: float = 2.0, timeout_s: float = 60.0) -> PageReport:
        """Load `url`, wait for it to settle, and report what happened."""
        with self.page(url, settle_s, timeout_s) as page:
            page.report.checks = json.loads(page.evaluate(PAGE_CHECKS_JS))
            page.report.html = page.evaluate("document.documentElement.outerHTML")
        return page.report


class Page:
    """A tab of `Chromium` on one page: evaluate JavaScript, wait for a condition, take a screenshot.

    Every event the page sends meanwhile (requests, console errors) goes into `report`.
    """

    def __init__(self, browser: Chromium, ws, report: PageReport, timeout_s: float):
        self._browser, self._ws, self.report, self._timeout_s = browser, ws, report, timeout_s

    def _handle(self, msg: dict) -> None:
        method, params, report = msg.get("method"), msg.get("params", {}), self.report
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

    def receive(self, timeout_s: float) -> dict:
        """The next message from the page within `timeout_s` ({} if none), after recording it."""
        self._ws.settimeout(timeout_s)
        try:
            msg = json.loads(self._ws.recv())
        except websocket.WebSocketTimeoutException:
            return {}
        self._handle(msg)
        return msg

    def call(self, method: str, **params) -> dict:
        """Send a DevTools command and return its result."""
        self._browser._id += 1
        msg_id = self._browser._id
        self._ws.settimeout(self._timeout_s)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method} failed: {msg['error']}")
                return msg.get("result", {})
            self._handle(msg)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]!r} raised: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 60.0, poll_s: float = 0.25):
        """Poll a JavaScript expression until it is truthy; return its value, or raise TimeoutError.

        The value crosses as JSON: a DOM element arrives as {}, which is false here (use `!!element`).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression[:120]!r} still false after {timeout_s:.0f} s")
            self.receive(poll_s)

    def screenshot(self, path: Path) -> Path:
        """Save what the page shows now as a PNG."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
