"""Build the web book: vendor MathJax, Mermaid, thebe and reveal.js from npm, then run Jupyter Book 1.

Usage:
    python tools/book.py vendor                 # fetch the JavaScript below from npm into _vendor/
    python tools/book.py build [--path-output DIR] [--all] [--english-only]   # both editions: _build/html, .../zh
    python tools/book.py serve [--port 8000] [--dir _build/html]   # serve a built folder on 127.0.0.1
    python tools/book.py live [--port 8000] [--jupyter-port 8888]  # the book, with live code

Nothing third-party is committed: the JavaScript comes from the npm registry at build time into
`_vendor/` (git-ignored): MathJax and Mermaid for the book's equations and diagrams, thebe for its
live code, reveal.js (and Mermaid's classic bundle) for the slides of `tools/course.py slides`.
Without npm the book still builds, with one notice, and its pages then fetch them from a CDN.

`live` serves the book and starts a Jupyter server on 127.0.0.1 whose kernel is this Python (so
it has the `companion` package): a chapter's "Live code" button turns its code cells into
editable cells that run there. The server takes a new random token each time; the pages learn it,
and the server's address, from `_live_code.json`, which only `live` serves (to the book's own
origin: no other web page can read it), and the server's CORS header names the book's origin
alone. Pages served by `serve` or any other server say how to start it. Other accounts on the
same computer can reach 127.0.0.1 too: use `live` on a computer of your own.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "_vendor"
STATIC = VENDOR / "static"  # the book's (Sphinx's html_static_path, see book/_ext/offline_assets.py)
SLIDES = VENDOR / "slides"  # the slides' own (copied next to the decks by tools/slides.py)
LIVE_JSON = "_live_code.json"  # where the Jupyter server is, and its token: served by `live` only


class Package(NamedTuple):
    """An npm package to vendor: which of its files go where under _vendor/."""

    spec: str  # name@version for `npm pack`
    files: tuple[tuple[str, str], ...]  # (path inside the package, path under _vendor/)

    @property
    def name(self) -> str:
        """The package's name, without the version."""
        return self.spec.rsplit("@", 1)[0]


PACKAGES = (
    Package("mathjax@3.2.2", (("es5", "static/mathjax"),)),
    Package(
        "mermaid@11",
        (
            ("dist/mermaid.esm.min.mjs", "static/mermaid/mermaid.esm.min.mjs"),
            ("dist/chunks/mermaid.esm.min", "static/mermaid/chunks/mermaid.esm.min"),
            ("dist/mermaid.min.js", "slides/mermaid/mermaid.min.js"),  # a classic script: decks open from file://
        ),
    ),
    # sphinx-thebe 0.3 was written for thebe 0.8, which the registry no longer serves; book/_ext/live_code.py
    # drives thebe 0.9's API itself
    Package("thebe@0.9.3", (("lib", "static/thebe"),)),
    Package("reveal.js@5", (("dist", "slides/reveal.js/dist"), ("plugin/notes", "slides/reveal.js/plugin/notes"))),
)
UNUSED = shutil.ignore_patterns("*.map", "*.d.ts", "types")  # source maps and type declarations


def vendored(package: Package) -> bool:
    """Whether every file of `package` is already under _vendor/."""
    return all((VENDOR / dest).exists() for _, dest in package.files)


def _unpack(package: Package, tarball: Path, into: Path) -> None:
    """Copy the files of `package` from its npm tarball into _vendor/, replacing older copies."""
    with tarfile.open(tarball) as tar:
        tar.extractall(into, filter="data")
    for source, dest in package.files:
        source, dest = into / "package" / source, VENDOR / dest
        if dest.is_dir():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest, ignore=UNUSED)
        else:
            shutil.copy2(source, dest)


def vendor(quiet: bool = False) -> bool:
    """Fetch every package of PACKAGES not yet under _vendor/; return False (with a notice) if npm fails."""
    missing = [p for p in PACKAGES if not vendored(p)]
    if not missing:
        return True
    names = ", ".join(p.name for p in missing)
    npm = shutil.which("npm")
    if npm is None:
        print(
            f"NOTICE: npm was not found, so {names} are not vendored. The book and the slides will "
            "build, but their pages load these from a CDN and need a network to show equations, "
            "diagrams, slides and live code. Install Node.js/npm and rebuild to use them offline.",
            file=sys.stderr,
        )
        return False
    with tempfile.TemporaryDirectory(prefix="npm-pack-") as tmp:
        # `npm pack` fetches each package's own tarball, none of its dependencies: the files we
        # copy are bundles that need none
        cmd = [npm, "pack", "--json", "--pack-destination", tmp, *(p.spec for p in missing)]
        if not quiet:
            print("+", " ".join(cmd), flush=True)
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        if result.returncode != 0:
            print(result.stdout + result.stderr, file=sys.stderr)
            print(
                f"NOTICE: npm pack failed; the pages will load {names} from a CDN (needs a network).", file=sys.stderr
            )
            return False
        tarballs = {info["name"]: Path(tmp) / info["filename"] for info in json.loads(result.stdout)}
        for package in missing:
            _unpack(package, tarballs[package.name], Path(tmp) / package.name)
    return True


def build(path_output: Path | None = None, rebuild_all: bool = False, zh: bool = True) -> int:
    """Build both editions (the Chinese one unless `zh` is False) with warnings as errors; return the status."""
    vendor()
    cmd = [
        sys.executable,
        "-c",
        "from jupyter_book.cli.main import main; main()",
        "build",
        str(ROOT),
        "-W",
        "-n",
        "--keep-going",
    ]
    if path_output is not None:
        cmd += ["--path-output", str(path_output)]
    if rebuild_all:
        cmd.append("--all")
    print("+", " ".join(cmd), flush=True)
    status = subprocess.call(cmd, cwd=ROOT)
    if status == 0 and zh:
        # the Chinese edition into _build/html/zh, from the Jupyter cache the English build just filled
        cmd = [sys.executable, str(ROOT / "tools" / "i18n.py"), "build"]
        cmd += ["--path-output", str(path_output)] if path_output is not None else []
        print("+", " ".join(cmd), flush=True)
        status = subprocess.call(cmd, cwd=ROOT)
    html = (path_output or ROOT) / "_build" / "html"
    if status == 0:
        print(f"\nThe book is built: open {html / 'index.html'}")
        print("Diagrams need the pages served over http: python tools/book.py serve  (then http://127.0.0.1:8000)")
    return status


def _handler(folder: Path, live: dict | None = None, quiet: bool = False) -> type:
    """A request handler that serves `folder`, and `live` (once it is filled in) as /_live_code.json."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if live and self.path.split("?")[0] == f"/{LIVE_JSON}":
                body = json.dumps(live).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                super().do_GET()

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's signature
            if not quiet:
                super().log_message(format, *args)

    return Handler


def serve(port: int, folder: Path | None = None) -> None:
    """Serve a built folder (the book by default) on 127.0.0.1 (Mermaid's ES modules do not load from file://)."""
    folder = folder or ROOT / "_build" / "html"
    if not folder.is_dir():
        raise ValueError(f"{folder} does not exist: build it first (make book, make slides)")
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), _handler(folder)) as server:
        print(f"Serving {folder} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C to stop)")
        server.serve_forever()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jupyter_command(port: int, token: str, origin: str) -> list[str]:
    """The command of a Jupyter server on 127.0.0.1:`port` that takes `token` and answers pages from `origin`."""
    cmd = [
        sys.executable,  # its kernel "python3" is this Python, which has the companion package
        "-m",
        "jupyter_server",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={ROOT}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.allow_origin={origin}",  # browsers show its answers to the book's pages only
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--ServerApp.allow_root=True")
    return cmd


def _wait_for_jupyter(url: str, token: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Return once the Jupyter server at `url` answers its status API; raise if it exits or takes too long."""
    request = urllib.request.Request(f"{url}/api/status", headers={"Authorization": f"token {token}"})
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the Jupyter server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Jupyter server did not answer at {url} within {timeout_s:.0f} s")
        time.sleep(0.2)


@contextlib.contextmanager
def live_servers(html: Path, port: int = 8000, jupyter_port: int = 8888, quiet: bool = False, log=None):
    """Serve the book on 127.0.0.1:`port` with a Jupyter server for its live code; yield (book URL, Jupyter URL).

    `port` 0 picks free ports for both; `log` (a file) takes the Jupyter server's output.
    """
    if not (html / "index.html").is_file():
        raise ValueError(f"{html} holds no built book: build it first (make book)")
    live: dict = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _handler(html, live, quiet))
    book_url = f"http://127.0.0.1:{server.server_address[1]}"
    jupyter_url = f"http://127.0.0.1:{jupyter_port or free_port()}"
    token = secrets.token_urlsafe(32)
    cmd = jupyter_command(int(jupyter_url.rsplit(":", 1)[1]), token, book_url)
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log else None, cwd=ROOT)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    try:
        _wait_for_jupyter(jupyter_url, token, process, timeout_s=120)
        live.update(url=jupyter_url, token=token)
        thread.start()
        yield book_url, jupyter_url
    finally:
        if thread.is_alive():
            server.shutdown()
        server.server_close()
        process.terminate()  # the server shuts its kernels down on SIGTERM
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def live(port: int, jupyter_port: int) -> None:
    """Serve the built book with live code until Ctrl-C."""
    with live_servers(ROOT / "_build" / "html", port, jupyter_port) as (book_url, jupyter_url):
        print(f"\nThe book, with live code: {book_url}/  (Jupyter server at {jupyter_url}; Ctrl-C to stop both)")
        print("On a chapter page, press 'Live code' under the title, then 'run' on a cell.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("vendor", help="fetch MathJax, Mermaid, thebe and reveal.js from npm into _vendor/")
    p_build = sub.add_parser("build", help="build the book into _build/html")
    p_build.add_argument("--path-output", type=Path, default=None, help="build into DIR/_build instead")
    p_build.add_argument("--all", action="store_true", help="rebuild every page")
    p_build.add_argument(
        "--english-only", action="store_true", help="skip the Chinese edition (_build/html/zh, tools/i18n.py)"
    )
    p_serve = sub.add_parser("serve", help="serve _build/html (or --dir) on 127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8000)
    p_serve.add_argument("--dir", type=Path, default=None, help="the folder to serve (default _build/html)")
    p_live = sub.add_parser("live", help="serve _build/html with a Jupyter server for its live code")
    p_live.add_argument("--port", type=int, default=8000, help="the book's port (default 8000)")
    p_live.add_argument("--jupyter-port", type=int, default=8888, help="the Jupyter server's port (default 8888)")
    args = parser.parse_args(argv)
    try:
        if args.command == "vendor":
            return 0 if vendor() else 1
        if args.command == "build":
            return build(args.path_output, args.all, zh=not args.english_only)
        if args.command == "serve":
            serve(args.port, args.dir)
        else:
            live(args.port, args.jupyter_port)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
