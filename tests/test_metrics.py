"""Tests of companion.analysis.metrics' language-model units: bits per character and bits per byte."""

from __future__ import annotations

import math

import pytest

from companion.analysis.metrics import bits_per_byte, bits_per_character
from companion.text.ngram import NGramModel


def test_uniform_model_has_log2_v_bits_per_character():
    text = "abcd" * 25
    total_nats = len(text) * math.log(4)  # a uniform model over 4 characters
    assert bits_per_character(total_nats, text) == pytest.approx(2.0, abs=1e-12)
    assert bits_per_character(total_nats, len(text)) == pytest.approx(2.0, abs=1e-12)


def test_the_unit_does_not_depend_on_the_tokenization():
    # The same probability of a text, scored as 8 one-character tokens or 4 two-character tokens,
    # has different per-token perplexities but the same bits per character.
    text = "abababab"
    p_char, p_pair = 0.5, 0.25  # P(each char) under model 1; P(each "ab") under model 2 = 0.5 * 0.5
    nats_char, nats_pair = -8 * math.log(p_char), -4 * math.log(p_pair)
    assert math.exp(nats_char / 8) != pytest.approx(math.exp(nats_pair / 4))  # perplexity 2 vs 4
    assert bits_per_character(nats_char, text) == pytest.approx(bits_per_character(nats_pair, text))
    assert bits_per_character(nats_char, text) == pytest.approx(1.0)


def test_bits_per_byte_counts_utf8_bytes():
    text = "猫猫"  # 2 characters, 6 UTF-8 bytes
    nats = 12 * math.log(2)  # 12 bits in all
    assert bits_per_character(nats, text) == pytest.approx(6.0)
    assert bits_per_byte(nats, text) == pytest.approx(2.0)
    assert bits_per_byte(nats, 6) == pytest.approx(2.0)
    ascii_text = "to be or not"
    assert bits_per_byte(5.0, ascii_text) == bits_per_character(5.0, ascii_text)


def test_matches_an_ngram_models_nll():
    model = NGramModel(2).fit("the cat sat on the mat. " * 20)
    held = "the rat sat on the cat."
    total = -model.log_probs(held).sum()
    assert bits_per_character(total, held) == pytest.approx(model.nll(held) / math.log(2))


@pytest.mark.parametrize("n", [0, -3, 2.5, True, ""])
def test_bad_counts_raise(n):
    with pytest.raises(ValueError, match="positive int"):
        bits_per_character(1.0, n)
    with pytest.raises(ValueError, match="positive int"):
        bits_per_byte(1.0, n)


@pytest.mark.parametrize("nats", [-1.0, float("nan")])
def test_bad_totals_raise(nats):
    with pytest.raises(ValueError, match="total_nats"):
        bits_per_character(nats, 10)
