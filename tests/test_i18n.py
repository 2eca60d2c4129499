"""The Chinese edition (tools/i18n.py): its catalogues, its notebooks and its pages.

Fast checks read the committed catalogues (locales/zh_CN/LC_MESSAGES/*.po): every page of the book has
one; every translation keeps its message's maths, code spans, roles and link targets; the glossary's
top terms (locales/zh_CN/terms.yml) are translated as the glossary says, never by a rejected variant,
with the English term in parentheses at first use; the Chinese notebooks keep every code cell byte for
byte and place every translated message. The completeness test keeps the editions in step: every
message translated, none fuzzy, so a change to the English text fails until its Chinese comes with it.

The built Chinese pages are checked by tests/test_book.py on the full build of both editions: every
page switches to the same page of the other edition, renders its maths and diagrams in headless
Chromium with no raw TeX, and reads as Chinese; the Chinese search index is segmented by jieba.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


i18n = _tool("i18n")
DOCS = i18n.documents()
CHAPTERS = [d for d in DOCS if d.startswith("notebooks/")]
CJK = re.compile(r"[\u3400-\u9fff]")
LATIN_WORD = re.compile(r"[A-Za-z]+")
MATH = re.compile(r"\$\$.*?\$\$|\$[^$]+\$", re.S)
CODE = re.compile(r"`+[^`]*`+")
ROLE = re.compile(r"\{[\w:-]+\}`[^`]*`")
TARGET = re.compile(r"\]\(([^)]*)\)")
NOT_PROSE = re.compile(rf"{ROLE.pattern}|{MATH.pattern}|{CODE.pattern}|\]\([^)]*\)|<[^>]+>|https?://\S+", re.S)


def _messages(docname: str) -> list[tuple[str, str]]:
    """(msgid, msgstr) of every translated, not fuzzy message of a document, in the document's order."""
    from babel.messages.pofile import read_po

    with (i18n.CATALOGUES / f"{docname}.po").open("rb") as f:
        return [(m.id, m.string) for m in read_po(f) if m.id and m.string and not m.fuzzy]


def complete(docname: str) -> bool:
    """Whether every message of the document is translated."""
    c = i18n.counts(docname)
    return c.translated == c.messages


def test_every_page_has_a_catalogue_and_no_catalogue_is_orphaned():
    for doc in DOCS:
        assert (i18n.CATALOGUES / f"{doc}.po").is_file(), f"{doc} has no catalogue: run tools/i18n.py extract"
    orphans = {p.relative_to(i18n.CATALOGUES).with_suffix("").as_posix() for p in i18n.CATALOGUES.rglob("*.po")}
    assert orphans - set(DOCS) == set(), "catalogues of pages no longer in _toc.yml"


def test_every_message_is_translated():
    incomplete = {d: i18n.counts(d) for d in DOCS if not complete(d)}
    assert not incomplete, (
        "the Chinese edition lags the English text (every change to it comes with its translation: "
        "python tools/i18n.py extract, then todo/fill or a PO editor): "
        + ", ".join(f"{d} ({c.untranslated} untranslated, {c.fuzzy} fuzzy)" for d, c in incomplete.items())
    )


def test_coverage_command_counts_and_fails_while_incomplete(capsys, tmp_path, monkeypatch):
    assert i18n.main(["coverage", "book/preface", "notebooks/02_tokens_and_embeddings"]) == 0
    out = capsys.readouterr().out
    assert "book/preface" in out and "total" in out and "100.0" in out
    assert i18n.main(["coverage", "book/no_such_page"]) == 2
    # a catalogue with one message emptied and one marked fuzzy: the command counts both and fails
    from babel.messages.pofile import read_po, write_po

    with (i18n.CATALOGUES / "book" / "part3_scale.po").open("rb") as f:
        catalog = read_po(f)
    first, second = [m for m in catalog if m.id][:2]
    first.string, second.flags = "", {"fuzzy"}
    (tmp_path / "book").mkdir()
    with (tmp_path / "book" / "part3_scale.po").open("wb") as f:
        write_po(f, catalog)
    monkeypatch.setattr(i18n, "CATALOGUES", tmp_path)
    c = i18n.counts("book/part3_scale")
    assert (c.untranslated, c.fuzzy) == (1, 1)
    assert i18n.main(["coverage", "book/part3_scale"]) == 1


@pytest.mark.parametrize("doc", DOCS)
def test_translations_keep_maths_code_roles_and_links(doc):
    for msgid, msgstr in _messages(doc):
        for what, pattern in (("role", ROLE), ("maths", MATH), ("code span", CODE), ("link target", TARGET)):
            source = ROLE.sub("", msgid) if what != "role" else msgid
            target = ROLE.sub("", msgstr) if what != "role" else msgstr
            assert Counter(pattern.findall(source)) == Counter(pattern.findall(target)), (
                f"{doc}: the translation changes a {what}:\n{msgid[:200]}\n{msgstr[:200]}"
            )
        words = set(LATIN_WORD.findall(NOT_PROSE.sub(" ", msgstr)))
        if not CJK.search(msgstr):  # kept in English (a name, a reference): no word that the English lacks
            assert words <= set(LATIN_WORD.findall(NOT_PROSE.sub(" ", msgid))), f"{doc}: not Chinese: {msgstr[:120]!r}"


def _glossary_terms() -> dict[str, str]:
    """The glossary's English column -> the first Chinese term of its 中文 column (parenthesised parts removed)."""
    terms = {}
    for line in (ROOT / "book" / "glossary.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) >= 4 and cells[0] not in ("English", "---"):
            terms[cells[0]] = re.sub(r"（[^）]*）|\([^)]*\)", "", cells[1]).strip()
    return terms


def _term_rules() -> list[dict]:
    """locales/zh_CN/terms.yml with each entry's Chinese term (from the glossary) and compiled pattern."""
    glossary = _glossary_terms()
    rules = yaml.safe_load((i18n.LOCALES / i18n.LANGUAGE / "terms.yml").read_text(encoding="utf-8"))
    for rule in rules:
        assert rule["english"] in glossary, f"terms.yml: {rule['english']!r} is not a row of the glossary"
        preferred = glossary[rule["english"]]
        rule.setdefault("chinese", preferred)
        assert rule["chinese"] in preferred, f"terms.yml: {rule['chinese']!r} is not part of {preferred!r}"
        assert not any(v in preferred for v in rule["rejected"]), f"terms.yml rejects the glossary's {preferred!r}"
        rule["pattern"] = re.compile(rule["match"], re.I)
        rule["except"] = re.compile("|".join(map(re.escape, rule.get("except", []))) or "(?!)", re.I)
    return rules


def test_terms_file_covers_the_top_glossary_terms():
    rules = _term_rules()
    assert len(rules) >= 30 and all(rule["rejected"] for rule in rules)


@pytest.mark.parametrize("doc", DOCS)
def test_glossary_terms_are_used_and_rejected_variants_are_not(doc):
    rules = _term_rules()
    first_use_checked, introduced = set(), set()
    for msgid, msgstr in _messages(doc):
        if msgstr == msgid:  # kept in English on purpose (the glossary's English column, references)
            continue
        english = NOT_PROSE.sub(" ", msgid)
        for rule in rules:
            for variant in rule["rejected"]:  # unless the English names the variant itself (to reject it)
                assert variant not in msgstr or variant in msgid, (
                    f"{doc}: {variant!r} instead of {rule['chinese']!r}: {msgstr[:160]}"
                )
            uses = rule["pattern"].search(rule["except"].sub(" ", english))
            if uses:
                assert rule["chinese"] in msgstr, (
                    f"{doc}: {rule['english']!r} must be {rule['chinese']!r} (glossary):\n{msgid[:200]}\n{msgstr[:200]}"
                )
            # the English term is given in parentheses by the first use in running text (not a heading or cell)
            if rule["pattern"].search(NOT_PROSE.sub(" ", msgstr)) or rule["chinese"] == rule["english"]:
                introduced.add(rule["english"])
            if uses and len(msgid) >= 150 and rule["english"] not in first_use_checked:
                first_use_checked.add(rule["english"])
                assert rule["english"] in introduced, (
                    f"{doc}: first use of {rule['chinese']!r} without the English term in parentheses: {msgstr[:200]}"
                )


def test_glossary_index_is_regenerated_and_goes_both_ways():
    """book/_generated/glossary_index.md is what tools/glossary_index.py writes now: every row, pinyin order."""
    pytest.importorskip("pypinyin")
    index = _tool("glossary_index")
    glossary = (ROOT / "book" / "glossary.md").read_text(encoding="utf-8")
    committed = (ROOT / "book" / "_generated" / "glossary_index.md").read_text(encoding="utf-8")
    assert committed == index.render(glossary), "the glossary changed: run python tools/glossary_index.py"
    assert "```{include} _generated/glossary_index.md" in glossary
    pairs = [tuple(c.strip() for c in line.strip("|").split("|")) for line in committed.splitlines()]
    pairs = [p for p in pairs if len(p) == 2 and p[0] not in ("中文", "---")]
    assert sorted((en, zh) for zh, en in pairs) == sorted(index.rows(glossary))  # each row once, the other way
    keys = [index.sort_key(zh) for zh, _ in pairs]
    assert keys == sorted(keys) and index.sort_key("（概率的）链式法则")[0].startswith("lian4")
    assert index.sort_key("词元") < index.sort_key("注意力（机制）")  # ci < zhu


def test_todo_and_fill_round_trip_through_a_catalogue(tmp_path, monkeypatch):
    doc = "book/part3_scale"
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "part3_scale.po").write_bytes((i18n.CATALOGUES / f"{doc}.po").read_bytes())
    monkeypatch.setattr(i18n, "CATALOGUES", tmp_path)
    before = i18n.counts(doc)
    msgid = _messages(doc)[0][0]  # a translated message: re-filled, it stays one message
    text = f"==== en\n{msgid}\n==== zh\n新的译文\n" + i18n.todo(doc)
    assert i18n.fill(doc, text) == 1 and _messages(doc)[0] == (msgid, "新的译文")
    assert i18n.counts(doc).translated == before.translated
    with pytest.raises(ValueError, match="not in"):
        i18n.fill(doc, "==== en\nno such message\n==== zh\n没有\n")


def test_language_switch_links_are_relative_to_the_page():
    switcher = _extension("language_switcher")
    links = switcher.edition_links(i18n.EDITIONS, "en", "notebooks/01_language_models.html")
    assert links == [{"url": "../zh/notebooks/01_language_models.html", "label": "中文", "lang": "zh-CN"}]
    links = switcher.edition_links(i18n.EDITIONS, "zh_CN", "search.html")
    assert links == [{"url": "../search.html", "label": "English", "lang": "en"}]
    assert switcher.edition_links(i18n.EDITIONS[:1], "en", "index.html") == []  # one edition: no switch


def _extension(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "book" / "_ext" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cjk_share(text: str) -> float:
    """Chinese characters over Chinese characters plus Latin letters."""
    cjk = len(CJK.findall(text))
    return cjk / max(cjk + sum(len(w) for w in LATIN_WORD.findall(text)), 1)


def test_chinese_notebooks_keep_every_code_cell_and_place_every_message(tmp_path):
    assert i18n.notebooks(tmp_path) == 0, "a translated message was not found in its notebook"
    for doc in CHAPTERS:
        english = json.loads((ROOT / f"{doc}.ipynb").read_text(encoding="utf-8"))
        chinese = json.loads((tmp_path / f"{Path(doc).name}.ipynb").read_text(encoding="utf-8"))
        assert [c["cell_type"] for c in chinese["cells"]] == [c["cell_type"] for c in english["cells"]]
        for en, zh in zip(english["cells"], chinese["cells"]):
            assert zh.get("id") == en.get("id") and zh["metadata"] == en["metadata"]
            if en["cell_type"] == "code":
                assert "".join(zh["source"]).encode() == "".join(en["source"]).encode(), f"{doc}: a code cell changed"
        if complete(doc):
            prose = MATH.sub(
                " ",
                CODE.sub(" ", " ".join("".join(c["source"]) for c in chinese["cells"] if c["cell_type"] == "markdown")),
            )
            assert _cjk_share(NOT_PROSE.sub(" ", prose)) > 0.5, (
                f"{doc}: the Chinese notebook's prose is not mostly Chinese"
            )
