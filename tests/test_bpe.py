"""Tests of companion.text.bpe: the byte-level BPE written from scratch, checked against Hugging Face."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import tokenizers as hf_tokenizers  # Hugging Face's package (ours is companion.text.bpe)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from companion.text.bpe import BPETokenizer, bytes_to_unicode
from companion.text.corpora import load_corpus
from companion.text.pretokenization import GPT2_PATTERN, pretokenize

EOT = "<|endoftext|>"

# (training slice, held-out slice) of each corpus, in characters.
SLICES = {
    "shakespeare": ((0, 300_000), (600_000, 750_000)),
    "reviews": ((0, 300_000), (1_000_000, 1_150_000)),
    "python-docs": ((0, 300_000), (310_000, 465_000)),
}


@pytest.fixture(scope="module")
def corpora() -> dict[str, tuple[str, str]]:
    out = {}
    for name, ((a, b), (c, d)) in SLICES.items():
        text = load_corpus(name)
        out[name] = (text[a:b], text[c:d])
    return out


@pytest.fixture(scope="module")
def trained(corpora) -> dict[str, BPETokenizer]:
    return {name: BPETokenizer.train(train, 1024) for name, (train, _) in corpora.items()}


@pytest.fixture(scope="module")
def small_tok() -> BPETokenizer:
    text = load_corpus("python-docs")[:50_000] + " 你好，世界。 😀👍🏽 👨‍👩‍👧 é é"
    return BPETokenizer.train(text, 400)


def hf_trained(text: str, vocab_size: int) -> hf_tokenizers.Tokenizer:
    """Hugging Face's own byte-level BPE trainer on the same text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([text], trainer)
    return tok


def naive_train(text: str, n_merges: int) -> list[tuple[bytes, bytes]]:
    """Textbook BPE: recount every pair over all pre-tokens at every step (slow but obviously right)."""
    words = Counter(tuple(w.encode()) for w in pretokenize(text))
    vocab = [bytes([i]) for i in range(256)]
    merges: list[tuple[bytes, bytes]] = []
    done: set[tuple[int, int]] = set()
    for _ in range(n_merges):
        counts: Counter[tuple[int, int]] = Counter()
        for w, f in words.items():
            for pair in zip(w, w[1:]):
                counts[pair] += f
        if not counts:
            break
        a, b = min(counts, key=lambda p: (-counts[p], p))  # most frequent, then smallest ids
        merged = vocab[a] + vocab[b]
        new_id = vocab.index(merged) if merged in vocab else len(vocab)
        if new_id == len(vocab):
            vocab.append(merged)
        if (a, b) not in done:
            merges.append((vocab[a], vocab[b]))
            done.add((a, b))
        new_words: Counter[tuple[int, ...]] = Counter()
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(new_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] += f
        words = new_words
        if len(vocab) >= 256 + n_merges:
            break
    return merges


# ---------------------------------------------------------------- against Hugging Face tokenizers


@pytest.mark.parametrize("name", list(SLICES))
def test_same_ids_as_hugging_face(name, corpora, trained):
    """Our vocabulary and merges loaded into HF's BPE model: identical ids on held-out text."""
    _, held_out = corpora[name]
    ours = trained[name]
    hf = ours.to_hf()
    lines = held_out.splitlines(keepends=True)
    assert len(held_out) > 100_000 and len(lines) > 200  # reviews: one review per line
    assert ours.encode(held_out) == hf.encode(held_out).ids
    batch = hf.encode_batch(lines)  # and line by line
    for line, enc in zip(lines, batch):
        assert ours.encode(line) == enc.ids, line
    assert hf.decode(ours.encode(held_out)) == held_out


@pytest.mark.parametrize("name", list(SLICES))
def test_compression_matches_hugging_face_trainer(name, corpora, trained):
    """Trained by each on the same text and vocab_size: bytes per token within 2% on held-out text."""
    train, held_out = corpora[name]
    ours, theirs = trained[name], hf_trained(train, 1024)
    assert ours.vocab_size == theirs.get_vocab_size() == 1024
    n_bytes = len(held_out.encode("utf-8"))
    ours_bpt = n_bytes / len(ours.encode(held_out))
    theirs_bpt = n_bytes / len(theirs.encode(held_out).ids)
    assert ours_bpt > 1.8  # it does compress
    assert abs(ours_bpt - theirs_bpt) / theirs_bpt < 0.02, (ours_bpt, theirs_bpt)


def test_same_ids_as_hugging_face_on_any_text(small_tok):
    """Hypothesis strings (any Unicode): our encode equals HF's with the same merges."""
    hf = small_tok.to_hf()

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.text())
    def check(s):
        assert small_tok.encode(s) == hf.encode(s).ids

    check()


# ---------------------------------------------------------------- training


def test_incremental_training_equals_naive_on_corpus_text():
    text = load_corpus("shakespeare")[:20_000]
    tok = BPETokenizer.train(text, 256 + 60, special_tokens=())
    got = [(tok.vocab[a], tok.vocab[b]) for a, b in tok.merges]
    assert got == naive_train(text, 60)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab c\n", max_size=120), st.integers(1, 30))
def test_incremental_training_equals_naive_on_random_text(text, n_merges):
    """Tiny alphabets force ties and tokens re-made by different merges: the hard cases."""
    tok = BPETokenizer.train(text, 256 + n_merges, special_tokens=())
    got = [(tok.vocab[a], tok.vocab[b]) for a, b in tok.merges]
    assert got == naive_train(text, n_merges)


def test_sennrich_example_first_merges():
    """The example of Sennrich et al. (2016): low x5, lower x2, newest x6, widest x3."""
    text = "\n".join(["low"] * 5 + ["lower"] * 2 + ["newest"] * 6 + ["widest"] * 3)
    tok = BPETokenizer.train(text, 256 + 4, special_tokens=())
    assert [tok.vocab[a] + tok.vocab[b] for a, b in tok.merges] == [b"es", b"est", b"lo", b"low"]
    assert tok.token_strings(tok.encode("lowest")) == ["low", "est"]


def test_vocab_size_counts_bytes_merges_and_specials():
    tok = BPETokenizer.train(load_corpus("python-docs")[:30_000], 300)
    assert tok.vocab_size == 300 == 256 + len(tok.merges) + 1
    assert tok.special_tokens == {EOT: 299}


def test_training_stops_when_nothing_is_left_to_merge():
    tok = BPETokenizer.train("aaaa", 1000, special_tokens=())
    assert [tok.vocab[i] for i in range(256, tok.vocab_size)] == [b"aa", b"aaaa"]


def test_merges_never_cross_pre_token_boundaries_or_special_tokens():
    text = ("hello world. " * 50 + EOT) * 20
    tok = BPETokenizer.train(text, 400)
    for token in tok.vocab[256:]:
        s = token.decode("utf-8")
        assert pretokenize(s) == [s], s  # every learned token lies inside one pre-token
        assert "<|" not in s and "|>" not in s


def test_vocab_size_too_small_is_an_error():
    with pytest.raises(ValueError, match="vocab_size 256 is too small"):
        BPETokenizer.train("abc", 256)
    with pytest.raises(ValueError, match="given twice"):
        BPETokenizer.train("abc", 300, special_tokens=(EOT, EOT))


# ---------------------------------------------------------------- encode / decode


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_round_trip_any_unicode(small_tok, s):
    assert small_tok.decode(small_tok.encode(s)) == s
    assert small_tok.decode_bytes(small_tok.encode(s)) == s.encode("utf-8")


@pytest.mark.parametrize(
    "s",
    [
        "",
        "你好，世界。语言模型把文字切成词元。",
        "😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈",  # skin tone modifier and zero-width-joiner sequences
        "tab\tnull\x00bell\x07escape\x1b[0m del\x7f\r\n",
        " " * 37 + "\n\n\n" + "\t" * 5 + "x" + " " * 8,
        "e\u0301 é ﬁ Ω Å",  # combining accent, ligature, compatibility characters: no normalisation
        "\ud7ff\ue000\U0010ffff",
    ],
)
def test_round_trip_examples(small_tok, s):
    ids = small_tok.encode(s)
    assert small_tok.decode(ids) == s
    assert ids == small_tok.to_hf().encode(s).ids


def test_chinese_and_emoji_become_several_bytes(small_tok):
    ids = small_tok.encode("👨‍👩‍👧")
    assert len("👨‍👩‍👧") == 5 and len("👨‍👩‍👧".encode()) == 18
    assert len(ids) <= 18 and small_tok.decode(ids) == "👨‍👩‍👧"


def test_decode_of_a_split_character_does_not_crash():
    tok = BPETokenizer()  # no merges: one id per byte
    ids = tok.encode("a😀b")
    assert ids == [97, 0xF0, 0x9F, 0x98, 0x80, 98]
    assert tok.decode(ids[:3]) == "a\ufffd"  # the truncated emoji becomes U+FFFD
    assert tok.decode(ids[3:]) == "\ufffd\ufffdb"  # stray continuation bytes: one U+FFFD each
    assert tok.decode(ids) == "a😀b"


def test_special_tokens_in_encode(small_tok):
    eot = small_tok.special_tokens[EOT]
    assert eot == small_tok.vocab_size - 1
    ids = small_tok.encode(f"one{EOT}two")
    assert ids.count(eot) == 1 and small_tok.decode(ids) == f"one{EOT}two"
    assert ids == small_tok.to_hf().encode(f"one{EOT}two").ids
    plain = small_tok.encode(f"one{EOT}two", allowed_special=())
    assert eot not in plain and small_tok.decode(plain) == f"one{EOT}two"
    assert small_tok.encode(EOT, allowed_special={EOT}) == [eot]
    with pytest.raises(ValueError, match="unknown special tokens"):
        small_tok.encode("x", allowed_special={"<|pad|>"})


def test_encode_is_consistent_with_pretokenization(small_tok):
    text = load_corpus("python-docs")[100_000:110_000]
    pieces = [small_tok.encode(p) for p in pretokenize(text)]
    assert small_tok.encode(text) == [i for p in pieces for i in p]


def test_bad_inputs(small_tok):
    with pytest.raises(ValueError, match="token id 400 is outside the vocabulary"):
        small_tok.decode([1, 400])
    with pytest.raises(ValueError, match="outside"):
        small_tok.decode([-1])
    with pytest.raises(TypeError, match="expects a str"):
        small_tok.encode(b"bytes")  # type: ignore[arg-type]


# ---------------------------------------------------------------- persistence and helpers


def test_save_load_round_trip(tmp_path, small_tok):
    path = tmp_path / "bpe.json"
    small_tok.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == small_tok.merges and loaded.vocab == small_tok.vocab
    assert loaded.special_tokens == small_tok.special_tokens
    text = load_corpus("python-docs")[200_000:220_000] + EOT + "你好😀"
    assert loaded.encode(text) == small_tok.encode(text)


def test_load_reads_version_1_files(tmp_path, small_tok):
    """Files saved before the byte order and the special tokens' ids were written still load."""
    path = tmp_path / "v1.json"
    data = {"format": "companion-byte-level-bpe", "version": 1, "pattern": small_tok.pattern}
    data.update(vocab_size=small_tok.vocab_size, merges=small_tok.merges, special_tokens=list(small_tok.special_tokens))
    path.write_text(json.dumps(data))
    loaded = BPETokenizer.load(path)
    assert loaded.vocab == small_tok.vocab and loaded.special_tokens == small_tok.special_tokens
    data.update(version=2)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"lacks \['byte_order'\]"):
        BPETokenizer.load(path)


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"model": {"type": "BPE"}}')
    with pytest.raises(ValueError, match="is not a companion-byte-level-bpe JSON file"):
        BPETokenizer.load(path)


def test_bytes_to_unicode_matches_hugging_face():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[32] == "Ġ" and table[10] == "Ċ" and table[ord("a")] == "a"
    assert sorted(table.values()) == sorted(hf_tokenizers.pre_tokenizers.ByteLevel.alphabet())


def test_pretokenize_matches_hugging_face_byte_level():
    text = "Hello world!  It's 2024,   don't\n\n  you think?  你好 😀"
    hf = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    table = bytes_to_unicode()
    ours = ["".join(table[b] for b in p.encode()) for p in pretokenize(text, GPT2_PATTERN)]
    assert ours == [p for p, _ in hf.pre_tokenize_str(text)]
