"""Tests of companion.text.tokenization: the character tokenizer and the word splitter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from companion.text.bpe import BPETokenizer
from companion.text.corpora import load_corpus
from companion.text.tokenization import BPETokenizer as ReExported
from companion.text.tokenization import CharTokenizer, word_tokenize


def test_char_tokenizer_on_shakespeare():
    text = load_corpus("shakespeare")
    tok = CharTokenizer(text)
    assert tok.chars == sorted(set(text)) and tok.vocab_size == len(set(text))
    ids = tok.encode(text[:5000])
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text[:5000]
    assert tok.encode("") == [] and tok.decode([]) == ""


@given(st.text(min_size=1))
def test_char_round_trip_any_text(s):
    tok = CharTokenizer(s)
    assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode(s)) == len(s)


def test_ids_follow_sorted_order():
    tok = CharTokenizer("hello")
    assert tok.chars == ["e", "h", "l", "o"]
    assert tok.encode("hole") == [1, 3, 2, 0]


def test_unknown_character_names_character_and_position():
    tok = CharTokenizer("abc ")
    with pytest.raises(
        ValueError,
        match=r"character 'é' \(U\+00E9\) at position 5 is not in the "
        r"vocabulary of 4 characters",
    ):
        tok.encode("abc aé")


def test_bad_ids_and_empty_text():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match="id 3 at position 1 is outside the vocabulary"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="empty text"):
        CharTokenizer("")


def test_char_save_load(tmp_path):
    tok = CharTokenizer("to be or not to be 你好")
    tok.save(tmp_path / "chars.json")
    loaded = CharTokenizer.load(tmp_path / "chars.json")
    assert loaded.chars == tok.chars
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a companion-char JSON file"):
        CharTokenizer.load(tmp_path / "x.json")


def test_word_tokenize():
    assert word_tokenize("Don't STOP, it's 2 o'clock!  Café-au-lait.") == [
        "don't",
        "stop",
        "it's",
        "2",
        "o'clock",
        "café",
        "au",
        "lait",
    ]
    assert word_tokenize("Hello World", lower=False) == ["Hello", "World"]


def test_bpe_is_re_exported():
    assert ReExported is BPETokenizer
