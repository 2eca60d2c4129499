"""Tests for companion.text.dates (the date task) and companion.inference.decoding (greedy, beam search,
cross-attention maps), with beam search checked against `transformers`' own and against brute force."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
import torch

from companion.inference.decoding import (
    beam_search,
    cross_attention_weights,
    greedy_decode,
    seq2seq_beam_search,
    sequence_log_prob,
)
from companion.nn import GPT, EncoderDecoder, EncoderDecoderConfig, GPTConfig
from companion.text.dates import (
    FORMATS,
    CharVocab,
    date_vocabs,
    exact_match,
    format_date,
    make_batch,
    make_date_pairs,
    ordinal_suffix,
    ordinal_words,
)
from companion.text.tokenization import CharTokenizer
from companion.training.finetune import FinetuneConfig, fit

# ----------------------------------------------------------------------------- the date task


def test_every_format_matches_its_documented_example():
    d = dt.date(2026, 11, 23)
    for style, example in FORMATS.items():
        assert format_date(d, style) == example


def test_ordinals():
    assert [ordinal_words(n) for n in (1, 2, 3, 11, 12, 20, 21, 22, 30, 31)] == [
        "first",
        "second",
        "third",
        "eleventh",
        "twelfth",
        "twentieth",
        "twenty-first",
        "twenty-second",
        "thirtieth",
        "thirty-first",
    ]
    assert [ordinal_suffix(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 30)] == [
        "1st",
        "2nd",
        "3rd",
        "4th",
        "11th",
        "12th",
        "13th",
        "21st",
        "22nd",
        "23rd",
        "30th",
    ]
    with pytest.raises(ValueError, match="outside 1..31"):
        ordinal_words(32)


def test_weekday_is_the_real_one():
    assert format_date(dt.date(1969, 7, 20), "weekday") == "Sunday 20 July 1969"  # the Moon landing


def test_pairs_are_reproducible_and_test_dates_unseen():
    a, b = make_date_pairs(500, 200, seed=3), make_date_pairs(500, 200, seed=3)
    assert a == b
    assert make_date_pairs(500, 200, seed=4) != a
    train_dates = {t for _, t in a.train}
    assert len(train_dates) == 500 and not train_dates & {t for _, t in a.test}
    for src, tgt in a.train + a.test:
        date = dt.date.fromisoformat(tgt)
        assert src in {format_date(date, s) for s in FORMATS}
    assert {s for s in FORMATS} == {
        next(s for s in FORMATS if format_date(dt.date.fromisoformat(t), s) == x) for x, t in a.train
    }  # every style is used


def test_pairs_bad_arguments():
    with pytest.raises(ValueError, match="unknown date style"):
        make_date_pairs(1, 1, styles=("roman",))
    with pytest.raises(ValueError, match="distinct dates"):
        make_date_pairs(80_000, 0)


def test_vocabs_cover_every_date_and_roundtrip():
    src, tgt = date_vocabs()
    pairs = make_date_pairs(3000, 0, seed=1).train
    for s, t in pairs:
        assert src.decode(src.encode(s)) == s
        assert tgt.decode(tgt.encode(t, bos=True, eos=True)) == t
    assert len(tgt) == 3 + 11


def test_char_vocab_errors():
    v = CharVocab("ab")
    with pytest.raises(ValueError, match="'c'.*at position 1"):
        v.encode("ac")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        v.decode([7])
    with pytest.raises(ValueError):
        CharVocab("")


def test_make_batch_shapes_and_padding():
    src, tgt = date_vocabs()
    pairs = [("23.11.2026", "2026-11-23"), ("the first of May 1999", "1999-05-01")]
    b = make_batch(pairs, src, tgt)
    assert b.src_ids.shape == (2, len("the first of May 1999"))
    assert b.src_mask[0].sum() == len("23.11.2026") and b.src_ids[0, -1] == src.pad_id
    assert b.tgt_in[:, 0].eq(tgt.bos_id).all() and b.tgt_out[:, -1].eq(tgt.eos_id).all()
    assert torch.equal(b.tgt_in[:, 1:], b.tgt_out[:, :-1])  # shifted by one (teacher forcing)
    with pytest.raises(ValueError, match="empty"):
        make_batch([], src, tgt)


def test_exact_match():
    assert exact_match(["a", "b", "c"], ["a", "x", "c"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        exact_match(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        exact_match([], [])


# ----------------------------------------------------------------------------- beam search


def _toy_lm(seed: int, vocab: int = 6, scale: float = 8.0) -> GPT:
    torch.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=vocab, block_size=32, n_layers=2, n_heads=2, d_model=16)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)  # sharper, more varied next-token distributions than the tiny init
    return m


def _next_log_probs(model: GPT):
    return lambda tokens: model(tokens).logits[:, -1].log_softmax(-1)


@pytest.mark.parametrize("num_beams", [1, 2, 4])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_search_equals_transformers(num_beams, length_penalty):
    transformers = pytest.importorskip("transformers")
    from companion.interop.hf import gpt_to_hf

    transformers.logging.set_verbosity_error()
    for seed in range(4):
        model = _toy_lm(seed)
        hf = gpt_to_hf(model).eval()
        start = torch.randint(6, (3, 3), generator=torch.Generator().manual_seed(seed))
        ours = beam_search(
            _next_log_probs(model),
            start,
            num_beams=num_beams,
            max_new_tokens=5,
            eos_id=5,
            length_penalty=length_penalty,
        )
        out = hf.generate(
            start,
            attention_mask=torch.ones_like(start),
            num_beams=num_beams,
            max_new_tokens=5,
            do_sample=False,
            length_penalty=length_penalty,
            early_stopping=False,
            eos_token_id=5,
            pad_token_id=5,
            output_scores=True,
            return_dict_in_generate=True,
        )
        theirs = out.sequences[:, 3:]
        width = max(theirs.shape[1], ours.sequences.shape[1])
        pad = lambda t, width=width: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=5)  # noqa: E731
        assert torch.equal(pad(ours.sequences), pad(theirs))
        if num_beams > 1:
            assert torch.allclose(ours.scores, out.sequences_scores, atol=1e-4)


def test_beam_search_without_eos_equals_transformers():
    pytest.importorskip("transformers")
    from companion.interop.hf import gpt_to_hf

    model = _toy_lm(7, vocab=11)
    start = torch.randint(11, (4, 2), generator=torch.Generator().manual_seed(0))
    ours = beam_search(_next_log_probs(model), start, num_beams=3, max_new_tokens=6)
    out = (
        gpt_to_hf(model)
        .eval()
        .generate(
            start,
            attention_mask=torch.ones_like(start),
            num_beams=3,
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    )
    assert torch.equal(ours.sequences, out[:, 2:])


def _all_hypotheses(model: GPT, start: torch.Tensor, vocab: int, max_new: int, eos: int):
    """Every possible continuation (ending at eos or at max_new tokens) with its summed log-prob."""
    nlp = torch.no_grad()(_next_log_probs(model))
    out = []
    for length in range(1, max_new + 1):
        for seq in itertools.product(range(vocab), repeat=length):
            if eos in seq[:-1] or (length < max_new and seq[-1] != eos):
                continue
            toks = torch.tensor([list(start) + list(seq)])
            lp = sum(float(nlp(toks[:, : len(start) + t])[0, seq[t]]) for t in range(length))
            out.append((lp, list(seq)))
    return out


def test_wide_beam_finds_the_most_probable_sequence_and_greedy_can_miss_it():
    vocab, eos, max_new = 4, 3, 3
    misses = 0
    for seed in range(6):
        model = _toy_lm(seed, vocab=vocab, scale=3.0)
        start = [seed % vocab]
        hyps = _all_hypotheses(model, start, vocab, max_new, eos)
        best_lp, best_seq = max(hyps)
        wide = beam_search(
            _next_log_probs(model),
            torch.tensor([start]),
            num_beams=vocab**max_new,
            max_new_tokens=max_new,
            eos_id=eos,
            length_penalty=0.0,
        )
        got = wide.sequences[0].tolist()[: len(best_seq)]
        assert got == best_seq and float(wide.scores[0]) == pytest.approx(best_lp, abs=1e-4)
        greedy = beam_search(
            _next_log_probs(model),
            torch.tensor([start]),
            num_beams=1,
            max_new_tokens=max_new,
            eos_id=eos,
            length_penalty=0.0,
        )
        assert float(greedy.scores[0]) <= best_lp + 1e-6
        misses += float(greedy.scores[0]) < best_lp - 1e-4
    assert misses >= 1, "greedy found the best sequence every time: the test shows nothing"


def test_beam_search_errors():
    with pytest.raises(ValueError, match="num_beams"):
        beam_search(lambda t: t, torch.zeros(1, 1, dtype=torch.long), num_beams=0, max_new_tokens=2)
    with pytest.raises(ValueError, match="non-empty"):
        beam_search(lambda t: t, torch.zeros(0, 1, dtype=torch.long), num_beams=2, max_new_tokens=2)


# ----------------------------------------------------------------------------- encoder-decoder


def _tiny_seq2seq(seed: int = 0) -> tuple[EncoderDecoder, CharVocab, CharVocab]:
    src, tgt = date_vocabs()
    torch.manual_seed(seed)
    model = EncoderDecoder(
        EncoderDecoderConfig(
            src_vocab_size=len(src),
            tgt_vocab_size=len(tgt),
            block_size=48,
            n_encoder_layers=1,
            n_decoder_layers=2,
            n_heads=2,
            d_model=32,
        )
    )
    return model, src, tgt


def test_greedy_decode_equals_beam_of_one_and_teacher_forcing():
    model, src, tgt = _tiny_seq2seq()
    b = make_batch(make_date_pairs(6, 0, seed=2).train, src, tgt)
    g = greedy_decode(model, b.src_ids, b.src_mask, bos_id=tgt.bos_id, eos_id=tgt.eos_id, max_len=11)
    one = seq2seq_beam_search(
        model, b.src_ids, b.src_mask, bos_id=tgt.bos_id, eos_id=tgt.eos_id, max_len=11, num_beams=1, length_penalty=0.0
    )
    assert torch.equal(g, one.sequences[:, : g.shape[1]])
    # greedy's own tokens, fed back with teacher forcing, are each the arg-max of the logits
    row = g[0].tolist()
    n = row.index(tgt.eos_id) + 1 if tgt.eos_id in row else len(row)
    tgt_in = torch.tensor([[tgt.bos_id] + row[: n - 1]])
    logits = model(b.src_ids[:1], decoder_idx=tgt_in, attention_mask=b.src_mask[:1]).logits
    assert logits.argmax(-1)[0].tolist() == row[:n]
    # the beam score with length_penalty 0 is the sequence log-probability
    lp = sequence_log_prob(model, b.src_ids[:1], tgt_in, torch.tensor([row[:n]]), b.src_mask[:1])
    assert float(one.scores[0]) == pytest.approx(float(lp[0]), abs=1e-4)


def test_padding_does_not_change_decoding():
    model, src, tgt = _tiny_seq2seq(1)
    pairs = [("1 May 2001", "2001-05-01"), ("Wednesday 27 September 2023", "2023-09-27")]
    both = make_batch(pairs, src, tgt)
    alone = make_batch(pairs[:1], src, tgt)
    kw = dict(bos_id=tgt.bos_id, eos_id=tgt.eos_id, max_len=11)
    a = seq2seq_beam_search(model, both.src_ids, both.src_mask, num_beams=3, **kw)
    b = seq2seq_beam_search(model, alone.src_ids, alone.src_mask, num_beams=3, **kw)
    assert a.sequences[0, : b.sequences.shape[1]].tolist() == b.sequences[0].tolist()
    assert float(a.scores[0]) == pytest.approx(float(b.scores[0]), abs=1e-5)


def test_cross_attention_weights_shape_rows_and_padding():
    model, src, tgt = _tiny_seq2seq()
    b = make_batch([("1 May 2001", "2001-05-01"), ("the third of June 1950", "1950-06-03")], src, tgt)
    w = cross_attention_weights(model, b.src_ids, b.tgt_in, b.src_mask)
    assert w.shape == (2, 2, 2, b.tgt_in.shape[1], b.src_ids.shape[1])  # (layers, B, heads, T, S)
    assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5)
    assert w[:, 0, :, :, len("1 May 2001") :].abs().max() == 0  # padding gets no attention
    # the hooks are removed afterwards and the model's output is unchanged by them
    assert all(not blk.cross_attn._forward_hooks for blk in model.decoder_blocks)


def test_cross_attention_weights_recompute_the_layer_output():
    """The recorded weights, times the values, reproduce the layer's own attention output."""
    model, src, tgt = _tiny_seq2seq()
    b = make_batch([("12 Oct 1987", "1987-10-12")], src, tgt)
    w = cross_attention_weights(model, b.src_ids, b.tgt_in, b.src_mask)  # (L, 1, H, T, S)
    memory = model.encode(b.src_ids, attention_mask=b.src_mask)
    layer = model.decoder_blocks[0].cross_attn
    seen = {}

    def record(module, args, output):
        seen["out"] = output.out  # returns None: the output is left as it is

    handle = layer.register_forward_hook(record)
    with torch.no_grad():
        model(b.src_ids, decoder_idx=b.tgt_in, attention_mask=b.src_mask)
    handle.remove()
    v = layer.v_proj(memory).view(1, -1, 2, 16).transpose(1, 2)  # (1, H, S, d_head)
    y = (w[0] @ v).transpose(1, 2).reshape(1, -1, 32)  # (1, T, d_model)
    assert torch.allclose(layer.out_proj(y), seen["out"], atol=1e-5)


@pytest.mark.slow
def test_a_small_model_learns_dates():
    src, tgt = date_vocabs()
    torch.manual_seed(0)
    model = EncoderDecoder(
        EncoderDecoderConfig(
            src_vocab_size=len(src),
            tgt_vocab_size=len(tgt),
            block_size=48,
            n_encoder_layers=1,
            n_decoder_layers=1,
            n_heads=2,
            d_model=64,
        )
    )
    data = make_date_pairs(4000, 200, seed=0)

    def loss(idx):
        b = make_batch([data.train[i] for i in idx.tolist()], src, tgt)
        return model(
            b.src_ids, b.tgt_out, decoder_idx=b.tgt_in, attention_mask=b.src_mask, decoder_attention_mask=b.tgt_mask
        ).loss

    losses = fit(model, loss, len(data.train), FinetuneConfig(steps=150, batch_size=64, lr=3e-3, warmup_steps=20))
    assert sum(losses[-10:]) / 10 < 0.25 * sum(losses[:10]) / 10
    b = make_batch(data.test, src, tgt)
    pred = [
        tgt.decode(r)
        for r in greedy_decode(model, b.src_ids, b.src_mask, bos_id=tgt.bos_id, eos_id=tgt.eos_id, max_len=11)
    ]
    refs = [t for _, t in data.test]
    chars = sum(sum(a == c for a, c in zip(p, r)) for p, r in zip(pred, refs)) / sum(len(r) for r in refs)
    assert chars > 0.6, f"after 150 steps most characters of unseen dates should be right, got {chars:.2f}"


def test_char_vocab_is_a_char_tokenizer_with_framing_specials(tmp_path):
    v = CharVocab("ba")
    assert isinstance(v, CharTokenizer) and v.chars == ["<pad>", "<bos>", "<eos>", "a", "b"]
    assert v.encode("ab", bos=True, eos=True) == [1, 3, 4, 2]
    assert v.decode([1, 3, 0, 4, 2, 3]) == "ab"  # <bos>/<pad> skipped, stops at <eos>
    v.save(tmp_path / "v.json")
    back = CharVocab.load(tmp_path / "v.json")
    assert back.chars == v.chars and type(back) is CharVocab
    plain = CharTokenizer("ba")
    assert plain.chars == ["a", "b"] and plain.encode("ab") == [0, 1]  # no specials: ids unchanged
