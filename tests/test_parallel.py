"""Tests for the parallel English-Chinese text the package ships (`companion.text.corpora.load_parallel`)."""

import difflib
import re
from pathlib import Path

import pytest
import regex

from companion.text import corpora
from companion.text.corpora import PARALLEL_TEXTS, ParallelText, load_parallel

ROOT = Path(__file__).resolve().parents[1]
HAN = regex.compile(r"\p{Han}")
LATIN_WORD = re.compile(r"[A-Za-z]+")
DIGITS = re.compile(r"[0-9]+")


def words(text: str) -> list[str]:
    """The lower-cased Latin words of a text, in order."""
    return [w.lower() for w in LATIN_WORD.findall(text)]


@pytest.fixture(scope="module")
def preface() -> ParallelText:
    return load_parallel("preface")


def test_names_and_files():
    assert PARALLEL_TEXTS == ("preface",)
    folder = ROOT / "src" / "companion" / "data" / "parallel"
    assert sorted(p.name for p in folder.iterdir()) == ["preface.en.txt", "preface.zh.txt"]
    for path in folder.iterdir():
        raw = path.read_text(encoding="utf-8")
        assert raw.endswith("\n") and not raw.endswith("\n\n") and "\r" not in raw and "\t" not in raw


def test_paragraphs_pair_up(preface):
    english, chinese = preface  # a plain pair, as the chapter unpacks it
    pairs = preface.paragraphs()
    assert len(pairs) == 7 == len(english.split("\n\n")) == len(chinese.split("\n\n"))
    for en, zh in pairs:
        for side in (en, zh):
            assert side and side == side.strip() and "\n" not in side  # one line per paragraph
    assert 2_500 <= len(english) <= 4_000  # the size the chapter measures on
    assert load_parallel("preface") is preface  # cached


def test_each_side_is_in_its_language(preface):
    for en, zh in preface.paragraphs():
        assert not HAN.search(en)
        han, latin = len(HAN.findall(zh)), sum(map(len, LATIN_WORD.findall(zh)))
        assert han > latin and han / len(zh) > 0.4, zh[:30]  # names, code and English terms in parentheses


def test_paragraphs_translate_each_other(preface):
    """Markers a translation keeps: numbers, list labels, names and code, and a plausible length."""
    for en, zh in preface.paragraphs():
        assert DIGITS.findall(zh) == DIGITS.findall(en), en[:30]
        assert re.match(r"\d\. ", zh) is not None or re.match(r"\d\. ", en) is None
        english_text = en.lower()
        strays = [w for w in words(zh) if w not in english_text]
        assert not strays, f"Latin words of the Chinese paragraph missing from the English one: {strays}"
        assert 0.25 < len(zh) / len(en) < 0.75, en[:30]


def test_english_side_is_the_books_preface(preface):
    """Each English paragraph is plain text of book/preface.md: nearly all its words match it, in order."""
    source = words((ROOT / "book" / "preface.md").read_text(encoding="utf-8"))
    positions = []
    for en, _ in preface.paragraphs():
        assert not re.search(r"\*\*|`|\$|\{|\}|\[|\]|^#", en), f"Markdown left in {en[:30]!r}"
        w = words(en)
        matcher = difflib.SequenceMatcher(None, w, source, autojunk=False)
        matched = sum(block.size for block in matcher.get_matching_blocks())
        assert matched / len(w) > 0.95, en[:30]  # markup such as $\sqrt{d_k}$ adds words, never removes
        positions.append(matcher.find_longest_match(0, len(w), 0, len(source)).b)
    assert positions == sorted(positions)  # the paragraphs keep the preface's order


def test_chinese_side_uses_the_glossary_terms(preface):
    """The glossary's preferred Chinese term (before any alternative) for each term the preface uses."""
    glossary = (ROOT / "book" / "glossary.md").read_text(encoding="utf-8")
    preferred = {}
    for row in re.findall(r"^\| ([^|]+) \| ([^|]+) \|", glossary, re.M):
        preferred[row[0].strip()] = re.split(r"[（(、/]", row[1])[0].strip()
    for term in ("token", "tokenizer", "attention", "pre-training", "language model", "byte-level BPE"):
        assert preferred[term] in preface.chinese, (term, preferred[term])
    assert "标记" not in preface.chinese  # token: 词元, not the rejected 标记


def test_unknown_name_and_misaligned_text(tmp_path):
    for bad in ("wikipedia", ["preface"], None):
        with pytest.raises(ValueError, match="valid names are preface"):
            load_parallel(bad)
    (tmp_path / "bad.en.txt").write_text("One.\n\nTwo.\n", encoding="utf-8")
    (tmp_path / "bad.zh.txt").write_text("一。\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not aligned: 2 English but 1 Chinese"):
        corpora._read_parallel(tmp_path, "bad")
