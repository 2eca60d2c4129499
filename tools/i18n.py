"""The Chinese edition (中文版): one source, two editions, from gettext catalogues (issue 20).

Usage:
    python tools/i18n.py extract                      # English sources -> .pot -> locales/zh_CN/LC_MESSAGES/*.po
    python tools/i18n.py build [--path-output DIR] [--no-execute] [--no-strict] [--toc TOC]  # -> _build/html/zh/
    python tools/i18n.py notebooks [--out _build/zh/notebooks]   # Chinese .ipynb for JupyterLab (not committed)
    python tools/i18n.py coverage [DOC ...]          # messages, translated, fuzzy, untranslated; 1 unless 100%
    python tools/i18n.py todo DOC > todo.txt          # a document's untranslated messages, to translate in a file
    python tools/i18n.py fill DOC todo.txt            # put the translations of such a file into DOC's catalogue

Design. The English notebooks and pages stay the only source. Sphinx's gettext builder, driven by
Jupyter Book's own configuration (jupyter_book.sphinx.build_sphinx: the same _config.yml turned into
Sphinx settings in memory, as `jupyter-book config sphinx` would write them to a conf.py, plus
overrides such as `language`, which the jupyter-book command line cannot pass), cuts every page into
messages: paragraphs, headings, list items, table cells, image alt texts, the exercises' "Solution"
labels. `sphinx-intl update` keeps one committed catalogue per page in
locales/zh_CN/LC_MESSAGES/<docname>.po (new English text arrives untranslated, changed text fuzzy).
Code cells, outputs and display maths are never messages (book/_ext/translation_messages.py), so
they are single-sourced. `build` renders the Chinese edition with `language = "zh_CN"` into
_build/html/zh/, beside the English edition in _build/html/, reading the executed notebooks from the
English build's Jupyter cache (_build/.jupyter_cache: the code is the same, so nothing executes
twice); Sphinx's Chinese search segments words with jieba. book/_ext/language_switcher.py puts on
every page of both editions a relative link to the same page in the other (`make book` builds
both). `notebooks` applies the
catalogues to the notebooks' Markdown cells (parsed with MyST's own parser, so a cell splits into the
same messages Sphinx extracts) and copies every code cell unchanged.

Translating. Edit the .po files (any PO editor), or: `todo DOC` prints the untranslated and fuzzy
messages of one document as `==== en` / `==== zh` blocks; write each translation under its `==== zh`
line and `fill DOC FILE` stores them (a fuzzy entry becomes translated). Then `extract` (after any
change to the English text) and `coverage`. tests/test_i18n.py checks the catalogues.

Conventions (SYLLABUS, "Chinese edition conventions"). Natural technical 简体中文 in the register of
d2l-zh, not word for word. One term, one translation: the first Chinese term of the glossary's 中文
column (book/glossary.md), never a rejected variant (locales/zh_CN/terms.yml, checked by the tests:
token is 词元, so "marker" is 标志 and never 标记; scaling law is 缩放定律, not 规模定律), with the English
term in parentheses at its first use in running text in each document, e.g. 词元（token）.
Maths, code spans, links, MyST roles ({cite:t}`key`, {doc}`faq`) and Markdown emphasis stay as they
are (the tests compare them); Chinese full-width punctuation （，。：；？！“”） in Chinese sentences,
and a space between Chinese and Latin words, numbers or maths. Paper references keep their English
form (msgstr = msgid), as do the glossary table's English and 中文 columns. Mermaid labels may not
contain a straight double quote. In-page links keep the English anchors (`#12-a-language-model-...`):
Sphinx gives sections the ids of their English titles.

Status: every page is translated, and tests/test_i18n.py keeps it so (no untranslated or fuzzy
message). `python tools/book.py build` (`make book`) builds both editions, the English one first,
so that this edition reads its executions; tests/test_book.py checks the pages of both.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LANGUAGE = "zh_CN"
LOCALES = ROOT / "locales"
CATALOGUES = LOCALES / LANGUAGE / "LC_MESSAGES"
BLOCK = re.compile(r"^==== (en|zh)\n", re.M)  # the blocks of a `todo` file
NOT_PROSE_DIRECTIVES = {"code", "code-block", "code-cell", "math", "mermaid", "bibliography", "include", "raw"}
SUMMARY = re.compile(r"(<summary\b[^>]*>)([^<]*?\S[^<]*?)(</summary>)")
MERMAID_LABEL = re.compile(r'"([^"\n]*)"')  # book/_ext/translation_messages.py: each label with words is a message


def _config() -> dict:
    """The book's _config.yml."""
    import yaml

    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


EDITIONS = _config()["sphinx"]["config"]["language_editions"]  # English at the site's root, Chinese in zh/
EDITION_PATH = next(e["path"] for e in EDITIONS if e["language"] == LANGUAGE)  # "zh", inside _build/html/


def _sphinx(
    builder: str, outdir: Path, doctreedir: Path, overrides: dict, strict: bool, toc: Path | None = None
) -> int:
    """Run Sphinx on the book with Jupyter Book's configuration plus `overrides`; return its status."""
    from jupyter_book.sphinx import build_sphinx

    title = _config()["title"]
    config = {"external_toc_path": str(toc or ROOT / "_toc.yml"), "latex_individualpages": False, "project": title}
    config.update(overrides)
    result = build_sphinx(
        ROOT,
        outdir,
        noconfig=True,
        path_config=str(ROOT / "_config.yml"),
        confoverrides=config,
        doctreedir=doctreedir,
        builder=builder,
        warningiserror=strict,
        keep_going=True,
    )
    return 1 if isinstance(result, Exception) else int(result or 0)


def extract(path_output: Path | None = None) -> int:
    """Write the English messages as .pot files, then update the committed .po catalogues from them."""
    build = (path_output or ROOT) / "_build"
    status = _sphinx("gettext", build / "gettext", build / ".doctrees-gettext", {"nb_execution_mode": "off"}, False)
    if status:
        return status
    cmd = [sys.executable, "-m", "sphinx_intl", "update", "-p", str(build / "gettext"), "-d", str(LOCALES)]
    cmd += ["-l", LANGUAGE, "-w", "0", "-j", "1"]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def build(path_output: Path | None = None, execute: bool = True, strict: bool = True, toc: Path | None = None) -> int:
    """Build the Chinese edition into _build/html/zh/, reusing the English build's executed notebooks."""
    build_dir = (path_output or ROOT) / "_build"
    overrides = {
        "language": LANGUAGE,
        "nb_execution_cache_path": str(build_dir / ".jupyter_cache"),  # the English build's cache
        "nitpicky": True,
    }
    if not execute:
        overrides["nb_execution_mode"] = "off"
    title = _config()["title"]  # the book's title, as the root page's catalogue translates it
    overrides["html_title"] = load_catalogue(documents()[0]).get(title, title)
    html = build_dir / "html" / EDITION_PATH
    status = _sphinx("html", html, build_dir / ".doctrees-zh", overrides, strict, toc)
    if status == 0:
        print(f"\nThe Chinese edition is built: open {html / 'index.html'}")
    return status


def load_catalogue(docname: str) -> dict[str, str]:
    """The translated (not fuzzy) messages of one document, msgid -> msgstr; empty if it has no catalogue."""
    from babel.messages.pofile import read_po

    path = CATALOGUES / f"{docname}.po"
    if not path.is_file():
        return {}
    with path.open("rb") as f:
        catalog = read_po(f)
    return {m.id: m.string for m in catalog if m.id and m.string and not m.fuzzy}


@dataclass
class Counts:
    """A document's messages: how many, and how many translated, fuzzy and untranslated."""

    messages: int = 0
    translated: int = 0
    fuzzy: int = 0
    untranslated: int = 0
    chars: int = 0  # characters of the translated msgstrs


def counts(docname: str) -> Counts:
    """Count one document's catalogue."""
    from babel.messages.pofile import read_po

    path = CATALOGUES / f"{docname}.po"
    if not path.is_file():
        raise ValueError(f"no catalogue for {docname!r} ({path.relative_to(ROOT)}): run `tools/i18n.py extract`")
    with path.open("rb") as f:
        catalog = read_po(f)
    result = Counts()
    for m in catalog:
        if not m.id:
            continue
        result.messages += 1
        if m.fuzzy:
            result.fuzzy += 1
        elif m.string:
            result.translated += 1
            result.chars += len(m.string)
        else:
            result.untranslated += 1
    return result


def documents() -> list[str]:
    """Every document of the book, in table-of-contents order (docnames such as notebooks/01_language_models)."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    names = [toc["root"]]
    for part in toc.get("parts", []):
        names += [entry["file"] for entry in part.get("chapters", [])]
    return names


def _row(name: str, c: Counts) -> str:
    """One line of the coverage table."""
    share = 100 * c.translated / max(c.messages, 1)
    return f"{name:<42} {c.messages:>8} {c.translated:>6} {c.fuzzy:>6} {c.untranslated:>6} {share:>6.1f}"


def coverage(docnames: list[str]) -> int:
    """Print the counts per document and in total; 0 only if every message is translated."""
    total = Counts()
    print(f"{'document':<42} {'messages':>8} {'done':>6} {'fuzzy':>6} {'todo':>6} {'%':>6}")
    for name in docnames:
        c = counts(name)
        for field in ("messages", "translated", "fuzzy", "untranslated", "chars"):
            setattr(total, field, getattr(total, field) + getattr(c, field))
        print(_row(name, c))
    print(_row("total", total))
    print(f"translated characters (Chinese text): {total.chars}")
    return 0 if total.translated == total.messages else 1


def todo(docname: str) -> str:
    """The untranslated and fuzzy messages of a document, as `==== en` / `==== zh` blocks to fill in."""
    from babel.messages.pofile import read_po

    counts(docname)  # a clear error if there is no catalogue
    with (CATALOGUES / f"{docname}.po").open("rb") as f:
        catalog = read_po(f)
    blocks = [
        f"==== en\n{m.id}\n==== zh\n{m.string if m.fuzzy else ''}\n"
        for m in catalog
        if m.id and (m.fuzzy or not m.string)
    ]
    return "".join(blocks)


def fill(docname: str, text: str) -> int:
    """Store the translations of a `todo` file in the document's catalogue; return how many were stored."""
    from babel.messages.pofile import read_po, write_po

    parts = BLOCK.split(text)[1:]  # [kind, body, kind, body, ...]
    pairs = {}
    for i in range(0, len(parts) - 3, 4):
        if (parts[i], parts[i + 2]) != ("en", "zh"):
            raise ValueError(f"block {i // 4 + 1}: expected '==== en' then '==== zh'")
        msgid, msgstr = parts[i + 1].removesuffix("\n"), parts[i + 3].strip()
        if msgstr:
            pairs[msgid] = msgstr
    path = CATALOGUES / f"{docname}.po"
    counts(docname)
    with path.open("rb") as f:
        catalog = read_po(f)
    unknown = [msgid for msgid in pairs if msgid not in catalog]
    if unknown:
        raise ValueError(f"{len(unknown)} messages are not in {docname}'s catalogue, e.g. {unknown[0][:80]!r}")
    for msgid, msgstr in pairs.items():
        message = catalog[msgid]
        message.string = msgstr
        message.flags.discard("fuzzy")
        message.previous_id = ()
    with path.open("wb") as f:
        write_po(f, catalog, width=0)
    return len(pairs)


def _markdown_parser():
    """MyST's own Markdown parser with the book's extensions: it cuts text into the messages Sphinx extracts."""
    from markdown_it.renderer import RendererHTML
    from myst_parser.config.main import MdParserConfig
    from myst_parser.parsers.mdit import create_md_parser

    config = _config()
    extensions = config.get("parse", {}).get("myst_enable_extensions", [])
    fences = config.get("sphinx", {}).get("config", {}).get("myst_fence_as_directive", [])
    return create_md_parser(
        MdParserConfig(enable_extensions=set(extensions), fence_as_directive=set(fences)), RendererHTML
    )


def _pieces(md, text: str) -> list[tuple[str, str]]:
    """The translatable pieces of a Markdown text in source order: (kind, text), kind inline, summary or mermaid."""
    pieces = []
    for token in md.parse(text):
        if token.type == "inline":
            pieces.append(("inline", token.content))
        elif token.type == "html_block":
            pieces += [("summary", m.group(2)) for m in SUMMARY.finditer(token.content)]
        elif token.type in ("fence", "colon_fence") and token.info.strip().strip("{}") == "mermaid":
            pieces += [("mermaid", label) for label in MERMAID_LABEL.findall(token.content)]
        elif token.type in ("fence", "colon_fence") and token.info.strip().startswith("{"):
            name, _, argument = token.info.strip()[1:].partition("}")
            if name.strip() in NOT_PROSE_DIRECTIVES:
                continue
            if argument.strip():
                pieces.append(("inline", argument.strip()))
            body = re.sub(r"\A(?:[ \t]*:[\w-]+:.*\n)+", "", token.content)  # directive options
            pieces += _pieces(md, body)
    return pieces


def translate_markdown(md, text: str, catalogue: dict[str, str]) -> tuple[str, int, list[str]]:
    """Replace every message of `text` that `catalogue` translates; return the text, the count, the misses."""
    out, cursor, applied, missed = text, 0, 0, []
    for kind, piece in _pieces(md, text):
        msgid = piece.replace("\n", " ").strip()
        quote = '"' if kind == "mermaid" else ""  # a Mermaid label is replaced inside its quotes
        if kind != "inline":  # a label, replaced as it stands
            pattern = re.compile(re.escape(f"{quote}{piece}{quote}"))
        else:  # a paragraph, heading or cell, which may run over lines (indented in lists, quoted)
            pattern = re.compile(r"[ \t]*\n[ \t>]*".join(re.escape(line.strip()) for line in piece.strip().split("\n")))
        match = pattern.search(out, cursor)
        if match is None:
            if msgid in catalogue:
                missed.append(msgid)
            continue
        msgstr = catalogue.get(msgid)
        if msgstr is None or msgstr == msgid:
            cursor = match.end()
            continue
        msgstr = f"{quote}{msgstr}{quote}"
        out = out[: match.start()] + msgstr + out[match.end() :]
        cursor = match.start() + len(msgstr)
        applied += 1
    return out, applied, missed


def translate_notebook(path: Path, docname: str, md=None) -> tuple[dict, int, list[str]]:
    """The notebook at `path` with its Markdown cells translated; code cells are the same objects' copies."""
    md = md or _markdown_parser()
    catalogue = load_catalogue(docname)
    nb = json.loads(path.read_text(encoding="utf-8"))
    applied, missed = 0, []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        source = "".join(cell["source"])
        text, n, miss = translate_markdown(md, source, catalogue)
        applied, missed = applied + n, missed + miss
        cell["source"] = text.splitlines(keepends=True)
    nb.setdefault("metadata", {})["language"] = LANGUAGE.replace("_", "-")
    return nb, applied, missed


def notebooks(out: Path) -> int:
    """Write the Chinese chapter notebooks into `out`; 1 if a translated message could not be placed."""
    md = _markdown_parser()
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb, applied, missed = translate_notebook(path, f"notebooks/{path.stem}", md)
        (out / path.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{out / path.name}: {applied} messages translated" + (f", {len(missed)} NOT PLACED" if missed else ""))
        for msgid in missed:
            print(f"  not placed: {msgid[:100]!r}", file=sys.stderr)
        status |= bool(missed)
    return status


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; 2 on bad input."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_extract = sub.add_parser("extract", help="update locales/zh_CN/LC_MESSAGES/*.po from the English sources")
    p_extract.add_argument("--path-output", type=Path, default=None, help="write the .pot files under DIR/_build")
    p_build = sub.add_parser("build", help="build the Chinese edition into _build/html/zh")
    p_build.add_argument("--path-output", type=Path, default=None, help="build into DIR/_build/html/zh instead")
    p_build.add_argument("--no-execute", action="store_true", help="do not execute notebooks (outputs left out)")
    p_build.add_argument("--no-strict", action="store_true", help="warnings are not errors")
    p_build.add_argument("--toc", type=Path, default=None, help="another table of contents (a part of the book)")
    p_nb = sub.add_parser("notebooks", help="write Chinese notebooks for JupyterLab")
    p_nb.add_argument("--out", type=Path, default=ROOT / "_build" / EDITION_PATH / "notebooks")
    p_cov = sub.add_parser("coverage", help="translation coverage per document; status 1 unless 100%%")
    p_cov.add_argument("docs", nargs="*", help="docnames (default: every document of _toc.yml)")
    p_todo = sub.add_parser("todo", help="print a document's untranslated messages as blocks to fill in")
    p_todo.add_argument("doc")
    p_fill = sub.add_parser("fill", help="store the translations of a `todo` file")
    p_fill.add_argument("doc")
    p_fill.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "extract":
            return extract(args.path_output)
        if args.command == "build":
            return build(args.path_output, execute=not args.no_execute, strict=not args.no_strict, toc=args.toc)
        if args.command == "notebooks":
            return notebooks(args.out)
        if args.command == "coverage":
            return coverage(args.docs or documents())
        if args.command == "todo":
            sys.stdout.write(todo(args.doc))
            return 0
        print(f"{fill(args.doc, args.file.read_text(encoding='utf-8'))} translations stored in {args.doc}")
        return 0
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
