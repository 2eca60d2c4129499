"""Build the web book: vendor MathJax and Mermaid from npm, then run Jupyter Book 1.

Usage:
    python tools/book.py vendor                 # install MathJax 3 and Mermaid 11 into _vendor/
    python tools/book.py build [--path-output DIR] [--all]
    python tools/book.py serve [--port 8000]    # serve the built book on 127.0.0.1

Nothing third-party is committed: the JavaScript comes from the npm registry at build
time into `_vendor/` (git-ignored). Without npm the book still builds, with one notice,
and its pages then fetch MathJax and Mermaid from a CDN.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "_vendor"
STATIC = VENDOR / "static"
PACKAGES = ("mathjax@3.2.2", "mermaid@11")


def vendor(quiet: bool = False) -> bool:
    """Install MathJax and Mermaid into _vendor/static; return False (with a notice) if npm is missing."""
    mathjax = STATIC / "mathjax" / "tex-chtml.js"
    mermaid = STATIC / "mermaid" / "mermaid.esm.min.mjs"
    if mathjax.is_file() and mermaid.is_file():
        return True
    npm = shutil.which("npm")
    if npm is None:
        print(
            "NOTICE: npm was not found, so MathJax and Mermaid are not vendored. The book will "
            "build, but its pages load them from a CDN and need a network to show equations "
            "and diagrams. Install Node.js/npm and rebuild to read the book offline.",
            file=sys.stderr,
        )
        return False
    npm_dir = VENDOR / "npm"
    npm_dir.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(npm_dir), *PACKAGES]
    if not quiet:
        print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout + result.stderr, file=sys.stderr)
        print("NOTICE: npm install failed; the book will use the CDN copies (needs a network).", file=sys.stderr)
        return False
    modules = npm_dir / "node_modules"
    shutil.rmtree(STATIC, ignore_errors=True)
    shutil.copytree(modules / "mathjax" / "es5", STATIC / "mathjax")
    dist = modules / "mermaid" / "dist"
    (STATIC / "mermaid" / "chunks").mkdir(parents=True)
    shutil.copy2(dist / "mermaid.esm.min.mjs", STATIC / "mermaid" / "mermaid.esm.min.mjs")
    shutil.copytree(dist / "chunks" / "mermaid.esm.min", STATIC / "mermaid" / "chunks" / "mermaid.esm.min")
    return True


def build(path_output: Path | None = None, rebuild_all: bool = False) -> int:
    """Build the book with warnings as errors; return the exit status of jupyter-book."""
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
    html = (path_output or ROOT) / "_build" / "html"
    if status == 0:
        print(f"\nThe book is built: open {html / 'index.html'}")
        print("Diagrams need the pages served over http: python tools/book.py serve  (then http://127.0.0.1:8000)")
    return status


def serve(port: int) -> None:
    """Serve the built book on 127.0.0.1 (Mermaid's ES modules do not load from file://)."""
    html = ROOT / "_build" / "html"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(html))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"Serving {html} at http://127.0.0.1:{port}/ (Ctrl-C to stop)")
        server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("vendor", help="install MathJax and Mermaid from npm into _vendor/")
    p_build = sub.add_parser("build", help="build the book into _build/html")
    p_build.add_argument("--path-output", type=Path, default=None, help="build into DIR/_build instead")
    p_build.add_argument("--all", action="store_true", help="rebuild every page")
    p_serve = sub.add_parser("serve", help="serve _build/html on 127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.command == "vendor":
        return 0 if vendor() else 1
    if args.command == "build":
        return build(args.path_output, args.all)
    serve(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
