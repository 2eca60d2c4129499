"""Tests of companion.text.tokenization: the character tokenizer and the word splitter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from companion.text.bpe import BPETokenizer
from companion.text.corpora import load_corpus
from companion.text.tokenization import BPETokenizer as ReExported
from companion.text.tokenization import (
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    encode_texts,
    load_tokenizer,
    pad_batch,
    word_tokenize,
)


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
    assert word_tokenize("Don't STOP, it's 2 o'clock!  Café-au-lait.", punctuation=False) == [
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


def test_word_tokenize_keeps_punctuation_marks_by_default():
    assert word_tokenize("It's GREAT, isn't it?!") == ["it's", "great", ",", "isn't", "it", "?", "!"]
    assert word_tokenize("a hidden-agenda drama .") == ["a", "hidden", "-", "agenda", "drama", "."]


def test_word_tokenizer_build_encode_decode(tmp_path):
    v = WordTokenizer.build(["b a a", "c b a"], max_size=5)
    assert v.itos == ["[PAD]", "[UNK]", "[SEP]", "a", "b"]  # by count, ties alphabetically
    assert v.encode("a c b") == [2, 3, 1, 4]
    assert v.encode("a c b", max_len=2, sep=False) == [3, 1]
    assert v.decode(v.encode("b a")) == "[SEP] b a"
    assert v.encode_corpus("a b\n\nb\n\n\n\n") == [2, 3, 4, 2, 4]
    assert WordTokenizer.build("b a a").itos[3] == "a"  # a single string is one text, not characters
    assert v.vocab_size == 5 and isinstance(v, Tokenizer)
    v.save(tmp_path / "words.json")
    assert WordTokenizer.load(tmp_path / "words.json").itos == v.itos
    with pytest.raises(ValueError, match="empty"):
        encode_texts(v, [], 8)
    CharTokenizer("ab").save(tmp_path / "chars.json")
    with pytest.raises(ValueError, match="not a companion-word JSON file"):
        WordTokenizer.load(tmp_path / "chars.json")


def test_every_tokenizer_has_the_tokenizer_interface(tmp_path):
    for i, tok in enumerate((CharTokenizer("ab"), WordTokenizer(["a"]), BPETokenizer(special_tokens=["<s>"]))):
        assert isinstance(tok, Tokenizer)
        tok.save(tmp_path / f"{i}.json")
        loaded = load_tokenizer(tmp_path / f"{i}.json")
        assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size


def test_pad_batch():
    ids, mask = pad_batch([[5, 6, 7], [8]])
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError):
        pad_batch([])


def test_word_tokenizer_as_a_hugging_face_tokenizer_gives_the_same_ids():
    pytest.importorskip("transformers")
    from companion.text.corpora import load_corpus, load_sentiment

    sentences = [t for t, _ in load_sentiment("rotten_tomatoes").test[:300]]
    reviews = load_corpus("reviews")[:20_000].split("\n\n")  # mixed case, HTML-free, some non-ASCII
    vocab = WordTokenizer.build(sentences[:150] + reviews[:5], max_size=2000)
    tok = vocab.to_hf()
    for text in sentences + reviews + ["Café déjà-vu: it's GREAT!!", "l'amour d'été"]:
        assert tok(text)["input_ids"] == vocab.encode(text), text
    assert (
        tok.decode(vocab.encode("it's a great film , isn't it ?"), skip_special_tokens=True)
        == "it's a great film, isn't it?"
    )


def test_bpe_is_re_exported():
    assert ReExported is BPETokenizer
