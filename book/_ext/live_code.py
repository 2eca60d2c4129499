"""Sphinx extension: a "Live code" button on every page with code cells, running them on a local Jupyter server.

Jupyter Book 1 always loads sphinx-thebe, which was written for thebe 0.8 on Binder: it loads
thebe from a CDN and asks mybinder.org for a kernel. This extension replaces its page script and
configuration with its own, which

- loads thebe 0.9 from the book's own `_static/thebe/` (vendored from npm by `tools/book.py
  vendor`; a CDN only when npm was missing at build time),
- asks the book's server for `_live_code.json` (the address and token of the Jupyter server that
  `python tools/book.py live` starts beside the book) and explains how to start it when there is none,
- turns every code cell of the page into an editable cell with run buttons, connected to a kernel
  started in the chapter's own folder, and reports the kernel's state on the button.

The button sits under the chapter's title; the theme's launch menu ("Live Code") presses it.
Nothing is requested from any server until a reader presses it.
"""

from __future__ import annotations

import json
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx

THEBE_VERSION = "0.9.3"  # the version tools/book.py vendors: this script uses thebe 0.9's API
THEBE_VENDORED = "thebe/index.js"  # under _static/
THEBE_CDN = f"https://unpkg.com/thebe@{THEBE_VERSION}/lib/index.js"
LIVE_JSON = "_live_code.json"  # tools/book.py LIVE_JSON
BUTTON = (
    '<button class="thebe-launch-button live-code-button" type="button" data-kernel="{kernel}" '
    'data-path="{path}" onclick="initThebe()" title="{title}">{label}</button>'
)
# The button's label and tooltip in each edition of the book (Sphinx's `language`; tools/i18n.py)
BUTTON_TEXT = {
    "en": (
        "Live code: run the cells here",
        "Run and edit this chapter's code on a Jupyter server on this computer (start it with: make live)",
    ),
    "zh_CN": ("实时代码：在此运行代码单元", "在本机的 Jupyter 服务器上运行和编辑本章的代码（用 make live 启动服务器）"),
}

# The page script, as a string: the book commits no JavaScript files (tests/test_book.py checks).
# __THEBE__ is the thebe bundle, relative to _static/ or absolute; __JSON__ the server's address file.
LIVE_JS = r"""
(() => {
  const staticURL = () => new URL(".", document.querySelector('script[src*="documentation_options.js"]').src);
  const buttons = () => document.querySelectorAll(".thebe-launch-button");
  const say = (text, state) => buttons().forEach((b) => { b.textContent = text; b.dataset.state = state; });
  let started = false;

  function load(tag, attributes) {
    return new Promise((resolve, reject) => {
      const element = Object.assign(document.createElement(tag), attributes);
      element.onload = resolve;
      element.onerror = () => reject(new Error(`could not load ${attributes.src || attributes.href}`));
      document.head.appendChild(element);
    });
  }

  async function server() {
    let response;
    try {
      response = await fetch(new URL("../__JSON__", staticURL()), {cache: "no-store"});
    } catch (err) {
      response = null;
    }
    if (!response || !response.ok) {
      throw new Error("no Jupyter server for this book. Start one with `make live` (or " +
                      "`python tools/book.py live`) and open the book at the address it prints.");
    }
    return response.json();
  }

  // thebe pairs code and output placeholders in page order: give every code cell exactly one output.
  function markCells() {
    document.querySelectorAll("div.cell").forEach((cell) => {
      const source = cell.querySelector(".cell_input pre");
      if (!source) return;
      source.setAttribute("data-executable", "true");
      source.setAttribute("data-language", "python");
      let output = cell.querySelector(".cell_output");
      if (!output) {
        output = Object.assign(document.createElement("div"), {className: "cell_output"});
        cell.appendChild(output);
      }
      output.setAttribute("data-output", "");
      cell.querySelectorAll("button.copybtn").forEach((b) => b.remove());
    });
  }

  window.initThebe = async () => {
    if (started) return;
    started = true;
    const button = document.querySelector(".live-code-button");
    try {
      say("Live code: looking for the Jupyter server…", "connecting");
      const live = await server();
      const thebeURL = new URL("__THEBE__", staticURL());
      await load("link", {rel: "stylesheet", href: new URL("thebe.css", thebeURL).href});
      await load("script", {src: thebeURL.href});
      markCells();
      let ready = false;
      thebe.on("status", (_, data) => {
        if (!ready && ["server", "session", "kernel"].includes(data.subject)) {
          say(`Live code: ${data.subject} ${data.status}…`, "connecting");
        }
      });
      thebe.on("error", (_, data) => say(`Live code failed: ${data.message}`, "error"));
      const {session} = await thebe.bootstrap({
        useBinder: false,
        useJupyterLite: false,
        requestKernel: true,
        serverSettings: {baseUrl: live.url, token: live.token, appendToken: true},
        kernelOptions: {kernelName: button ? button.dataset.kernel : "python3",
                        path: button ? button.dataset.path : "/"},
        mathjaxUrl: "",  // no MathJax 2 from a CDN: LaTeX outputs show as text
        mountActivateWidget: false,
        mountStatusWidget: false,
        selector: "[data-executable]",
        outputSelector: "[data-output]",
        predefinedOutput: true,
      });
      if (!session) throw new Error("the Jupyter server did not start a kernel");
      ready = true;
      say("Live code: the kernel is ready. Edit a cell and press run (run the cells above it first)", "ready");
    } catch (err) {
      started = false;
      say(`Live code unavailable: ${err.message || err}`, "error");
      console.warn("live code:", err);
    }
  };
})();
"""


def page_script(thebe_url: str) -> str:
    """The page script, loading thebe from `thebe_url` (relative to _static/, or absolute)."""
    return LIVE_JS.replace("__THEBE__", thebe_url).replace("__JSON__", LIVE_JSON)


def _add_script(app: Sphinx) -> None:
    from offline_assets import vendor_dir

    vendored = (vendor_dir(Path(app.srcdir)) / THEBE_VENDORED).is_file()
    app.add_js_file(None, body=page_script(THEBE_VENDORED if vendored else THEBE_CDN))


def _has_code_cells(doctree: nodes.document) -> bool:
    return any("cell" in node.get("classes", []) for node in doctree.findall(nodes.container))


def _replace_thebe_config(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Drop sphinx-thebe's Binder configuration; put the live-code button under the title of a page with code."""
    for node in list(doctree.findall(nodes.raw)):
        if "text/x-thebe-config" in node.astext() or "kernelName =" in node.astext():
            node.parent.remove(node)
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None or not _has_code_cells(doctree) or not isinstance(section[0], nodes.title):
        return
    kernelspec = app.env.metadata.get(docname, {}).get("kernelspec") or {}
    if isinstance(kernelspec, str):
        kernelspec = json.loads(kernelspec)
    source = Path(app.env.doc2path(docname, base=False)).as_posix()
    label, title = BUTTON_TEXT.get(app.config.language or "en", BUTTON_TEXT["en"])
    html = BUTTON.format(kernel=kernelspec.get("name", "python3"), path=source, label=label, title=title)
    section.insert(1, nodes.raw("", html, format="html"))


def _drop_sphinx_thebe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Remove sphinx-thebe's script and its CDN address: the page script above replaces both."""

    def is_sphinx_thebe(script) -> bool:
        body = getattr(script, "attributes", {}).get("body", "")
        return str(getattr(script, "filename", script) or "").endswith("sphinx-thebe.js") or "THEBE_JS_URL" in body

    context["script_files"] = [s for s in context.get("script_files", []) if not is_sphinx_thebe(s)]


def setup(app: Sphinx) -> dict:
    """Register the script and the two hooks (after sphinx-thebe's own)."""
    app.connect("builder-inited", _add_script)
    app.connect("doctree-resolved", _replace_thebe_config, priority=900)
    app.connect("html-page-context", _drop_sphinx_thebe_scripts, priority=990)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
