"""Live code in the web book: book/_ext/live_code.py's button and tools/book.py's `live` servers.

The book's first chapter is built alone, with the book's own configuration but without executing
it (a few seconds). In headless Chromium, where no host but 127.0.0.1 resolves, the test presses
the chapter's "Live code" button on a page served by `live_servers`, runs the page's first code
cells and an edited one on the Jupyter server's kernel, and reads their outputs from the page.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from browser import serve

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = sorted((ROOT / "notebooks").glob("*.ipynb"))[0]
PAGE = f"notebooks/{CHAPTER.stem}.html"
pytestmark = [pytest.mark.book]

_spec = importlib.util.spec_from_file_location("book", ROOT / "tools" / "book.py")
book = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(book)


@pytest.fixture(scope="module")
def built_html(tmp_path_factory) -> Path:
    """The first chapter alone, built with the book's configuration, its notebook not executed."""
    tmp = tmp_path_factory.mktemp("live-book")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    extensions = config["sphinx"]["local_extensions"]  # Jupyter Book resolves these next to the config file
    config["sphinx"]["local_extensions"] = {name: str(ROOT / path) for name, path in extensions.items()}
    (tmp / "_config.yml").write_text(yaml.safe_dump(config))
    (tmp / "_toc.yml").write_text(f"format: jb-book\nroot: notebooks/{CHAPTER.stem}\n")
    book.vendor(quiet=True)
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(ROOT)]
    cmd += ["--config", str(tmp / "_config.yml"), "--toc", str(tmp / "_toc.yml"), "--path-output", str(tmp)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return tmp / "_build" / "html"


def test_chapter_page_has_the_button_and_no_cdn_or_binder_thebe(built_html):
    html = (built_html / PAGE).read_text(encoding="utf-8")
    assert f'data-path="notebooks/{CHAPTER.name}"' in html and 'data-kernel="python3"' in html
    assert "Live code: run the cells here" in html and 'onclick="initThebeSBT()"' in html  # button and launch menu
    for gone in ("unpkg.com", "text/x-thebe-config", "sphinx-thebe.js", "binderOptions"):
        assert gone not in html, f"{gone} is still on the page"
    assert (built_html / "_static" / "thebe" / "index.js").is_file() and '"thebe/index.js"' in html


BUTTON = "document.querySelector('.live-code-button')"
CELL_OUTPUT = "document.querySelectorAll('div.cell')[{i}].querySelector('[data-output]')"
ERRORS = "document.querySelectorAll('.jp-OutputArea-output[data-mime-type=\"application/vnd.jupyter.stderr\"]')"
EDITED = "import sys, companion\nprint('live', 6 * 7, companion.__name__, sys.executable)"


def _off_machine(requests: list[str], *hosts: str) -> list[str]:
    return [u for u in requests if urlparse(u).scheme.startswith(("http", "ws")) and urlparse(u).netloc not in hosts]


def test_live_code_runs_cells_on_the_local_server(built_html, browser, tmp_path):
    log = (tmp_path / "jupyter.log").open("w")
    with book.live_servers(built_html, port=0, jupyter_port=0, quiet=True, log=log) as (book_url, jupyter_url):
        with browser.page(f"{book_url}/{PAGE}") as page:
            assert page.report.console_errors == [], "the page has errors before live code starts"
            page.evaluate(f"{BUTTON}.click()")
            state = page.wait_for(f"['ready', 'error'].includes({BUTTON}.dataset.state) && {BUTTON}.dataset.state", 90)
            assert state == "ready", page.evaluate(f"{BUTTON}.textContent") + "\n" + log.name
            run = "document.querySelectorAll('.thebe-cell')[{i}].querySelector('.thebe-run-button').click()"
            page.evaluate(run.format(i=0))
            page.evaluate(run.format(i=1))  # the page's first two code cells, as they are
            page.wait_for(f"!!{CELL_OUTPUT.format(i=1)}.querySelector('.jp-OutputArea-output')", 120)
            assert page.evaluate(f"{ERRORS}.length") == 0, page.evaluate(f"{ERRORS}[0].textContent")
            editor = "document.querySelectorAll('.thebe-cell')[2].querySelector('.CodeMirror').CodeMirror"
            page.evaluate(f"{editor}.setValue({EDITED!r})")  # the cells are editable
            page.evaluate(run.format(i=2))
            printed = page.wait_for(
                f"(() => {{ const t = {CELL_OUTPUT.format(i=2)}.textContent; return t.includes('live 42') && t; }})()",
                60,
            )
            assert printed.strip() == f"live 42 companion {sys.executable}"  # the server's own Python
            page.evaluate(f"{CELL_OUTPUT.format(i=2)}.scrollIntoView({{block: 'center'}})")
            time.sleep(0.5)
            assert page.screenshot(tmp_path / "live_code.png").stat().st_size > 10_000
            hosts = (urlparse(book_url).netloc, urlparse(jupyter_url).netloc)
            assert _off_machine(page.report.requests, *hosts) == []
            assert page.report.console_errors == []


def test_only_the_books_pages_learn_the_token_and_read_the_servers_answers(built_html):
    """The token is served to the book's origin alone, and the server's CORS header names only that origin."""
    with book.live_servers(built_html, port=0, jupyter_port=0, quiet=True, log=subprocess.DEVNULL) as urls:
        book_url, jupyter_url = urls
        with urllib.request.urlopen(f"{book_url}/{book.LIVE_JSON}") as response:
            live = json.loads(response.read())
            assert response.headers["Access-Control-Allow-Origin"] is None  # other origins cannot read it
        assert live["url"] == jupyter_url and len(live["token"]) >= 32

        def answer(origin: str, token: str | None = live["token"]) -> tuple[int, str | None]:
            headers = {"Origin": origin} | ({"Authorization": f"token {token}"} if token else {})
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(f"{jupyter_url}/api/sessions", headers=headers)
                ) as r:
                    return r.status, r.headers["Access-Control-Allow-Origin"]
            except urllib.error.HTTPError as err:
                return err.code, None

        assert answer(book_url) == (200, book_url)
        assert answer("http://127.0.0.1:1") == (200, book_url)  # a browser hides this answer from that page
        assert answer(book_url, token=None)[0] in (401, 403)


def test_without_a_live_server_the_button_says_how_to_start_one(built_html, browser):
    with serve(built_html) as base, browser.page(f"{base}/{PAGE}") as page:
        page.evaluate(f"{BUTTON}.click()")
        page.wait_for(f"{BUTTON}.dataset.state === 'error'", 30)
        assert "make live" in page.evaluate(f"{BUTTON}.textContent")
        assert _off_machine(page.report.requests, urlparse(base).netloc) == []
