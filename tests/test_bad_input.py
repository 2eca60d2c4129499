"""Every public entry point meets bad input with a ValueError that names the problem.

Never a library's internal traceback (IndexError, RuntimeError, ZeroDivisionError, ...), a NaN,
or a silent wrong answer. The command line answers with one line and exit status 2. Each case
below is one bad call; `test_number_of_cases` reports how many the module tries.
"""

from __future__ import annotations

import datetime as dt
import math

import pytest
import torch

from companion.analysis import attention_cost, baselines, distillation, interpret, metrics, quantization
from companion.inference import decoding, generation
from companion.interop import hf
from companion.interop import llama as hf_llama
from companion.nn import (
    GPT,
    Encoder,
    EncoderConfig,
    EncoderDecoder,
    EncoderDecoderConfig,
    EncoderForSequenceClassification,
    GPTConfig,
    KVCache,
    Llama,
    LlamaConfig,
    MixtureOfExperts,
    RMSNorm,
    attention,
    classifier,
    positional,
)
from companion.scaling import counting
from companion.scaling import fit as scaling_fit
from companion.scaling import laws as scaling
from companion.text import bpe, ngram, tokenization
from companion.text import corpora as data
from companion.text import dates as seq2seq_data
from companion.text import word_vectors as embeddings
from companion.training import batching, finetune, optim
from companion.training.checkpoint import load_pretrained, save_checkpoint
from companion.training.trainer import TrainConfig, train

T = torch.tensor


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=10, block_size=8, n_layers=1, n_heads=2, d_model=8))


def tiny_llama(**kw) -> Llama:
    torch.manual_seed(0)
    shape = dict(vocab_size=10, block_size=8, n_layers=1, n_heads=2, n_kv_heads=1, d_model=8, d_ff=12)
    return Llama(LlamaConfig(**{**shape, **kw}))


def tiny_seq2seq() -> EncoderDecoder:
    torch.manual_seed(0)
    return EncoderDecoder(
        EncoderDecoderConfig(
            src_vocab_size=9,
            tgt_vocab_size=7,
            block_size=8,
            n_encoder_layers=1,
            n_decoder_layers=1,
            n_heads=2,
            d_model=8,
        )
    )


def char_tok():
    return tokenization.CharTokenizer("abc")


def bpe_tok():
    return bpe.BPETokenizer.train("hello hello world", 260)


def nan_gpt() -> GPT:
    m = tiny_gpt()
    with torch.no_grad():
        m.lm_head.weight.fill_(math.nan)
    return m


def damaged_checkpoint(tmp_path):
    save_checkpoint(tmp_path, tiny_gpt())
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    return load_pretrained(tmp_path)


CASES = {
    # data
    "load_corpus unknown name": lambda: data.load_corpus("no-such-corpus"),
    "load_sentiment unknown name": lambda: data.load_sentiment("no-such-set"),
    "load_parallel unknown name": lambda: data.load_parallel("no-such-text"),
    # tokenizers
    "CharTokenizer empty text": lambda: tokenization.CharTokenizer(""),
    "CharTokenizer encode unknown char": lambda: char_tok().encode("abz"),
    "CharTokenizer decode id out of range": lambda: char_tok().decode([0, 99]),
    "CharTokenizer decode negative id": lambda: char_tok().decode([-1]),
    "BPETokenizer.train vocab below 256": lambda: bpe.BPETokenizer.train("abc", 100),
    "BPETokenizer decode id out of range": lambda: bpe_tok().decode([10**6]),
    "BPETokenizer load missing file": lambda: bpe.BPETokenizer.load("/nonexistent/tok.json"),
    "BPETokenizer.from_tiktoken unknown encoding": lambda: bpe.BPETokenizer.from_tiktoken("no-such-encoding"),
    "BPETokenizer byte_order not a permutation": lambda: bpe.BPETokenizer(byte_order=range(1, 257)),
    "BPETokenizer special token on a byte's id": lambda: bpe.BPETokenizer(special_tokens={"<s>": 65}),
    "encode_texts max_len = 0": lambda: tokenization.encode_texts(tokenization.WordTokenizer(["a"]), ["a"], 0),
    # batching
    "get_batch data shorter than block": lambda: batching.get_batch(torch.arange(5), 2, 8),
    "get_batch zero batch": lambda: batching.get_batch(torch.arange(50), 0, 8),
    "BlockSampler float data": lambda: batching.BlockSampler(torch.rand(50), 2, 8),
    "as_token_tensor 2-D": lambda: batching.as_token_tensor(torch.zeros(2, 3, dtype=torch.long)),
    # n-grams and metrics
    "NGramModel n = 0": lambda: ngram.NGramModel(0),
    "NGramModel unknown smoothing": lambda: ngram.NGramModel(2, smoothing="magic"),
    "NGramModel discount above 1": lambda: ngram.NGramModel(2, discount=1.5),
    "NGramModel perplexity before fit": lambda: ngram.NGramModel(2).perplexity("abc"),
    "unseen_ngram_share n = 0": lambda: ngram.unseen_ngram_share("abc", "abc", 0),
    "accuracy length mismatch": lambda: metrics.accuracy([0, 1], [0]),
    "accuracy label out of range": lambda: metrics.accuracy([0, 5], [0, 1]),
    "accuracy empty": lambda: metrics.accuracy([], []),
    "mean_std empty": lambda: metrics.mean_std([]),
    "mean_se empty": lambda: metrics.mean_se([]),
    "exact_match length mismatch": lambda: seq2seq_data.exact_match(["a"], []),
    # positions and attention
    "sinusoidal_encoding d_model = 0": lambda: positional.sinusoidal_encoding(8, 0),
    "sinusoidal_encoding negative length": lambda: positional.sinusoidal_encoding(-1, 8),
    "sinusoidal_shift_matrix odd d_model": lambda: positional.sinusoidal_shift_matrix(1, 7),
    "SinusoidalPositionalEncoding too long": lambda: positional.SinusoidalPositionalEncoding(4, 8)(5),
    "LearnedPositionalEmbedding too long": lambda: positional.LearnedPositionalEmbedding(4, 8)(5),
    "RotaryEmbedding odd d_head": lambda: positional.RotaryEmbedding(7),
    "causal_mask negative length": lambda: attention.causal_mask(-1),
    "split_heads not divisible": lambda: attention.split_heads(torch.zeros(1, 2, 6), 4),
    "sdpa mismatched d_head": lambda: attention.scaled_dot_product_attention(
        torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 5), torch.zeros(1, 2, 3, 4)
    ),
    "sdpa mask of wrong shape": lambda: attention.scaled_dot_product_attention(
        torch.zeros(1, 1, 3, 4),
        torch.zeros(1, 1, 3, 4),
        torch.zeros(1, 1, 3, 4),
        mask=torch.ones(5, 5, dtype=torch.bool),
    ),
    "MultiHeadAttention n_heads = 0": lambda: attention.MultiHeadAttention(8, 0),
    "MultiHeadAttention not divisible": lambda: attention.MultiHeadAttention(8, 3),
    "MultiHeadAttention wrong width": lambda: attention.MultiHeadAttention(8, 2)(torch.zeros(1, 3, 6)),
    # model configs
    "GPTConfig n_heads = 0": lambda: GPTConfig(n_heads=0),
    "GPTConfig n_layers = -1": lambda: GPTConfig(n_layers=-1),
    "GPTConfig dropout = 1": lambda: GPTConfig(dropout=1.0),
    "GPTConfig unknown norm": lambda: GPTConfig(norm="mid"),
    "GPTConfig unknown activation": lambda: GPTConfig(activation="swish!"),
    "GPTConfig float width": lambda: GPTConfig(d_model=64.0),
    "EncoderConfig n_heads = 0": lambda: EncoderConfig(n_heads=0),
    "EncoderConfig n_layers = -1": lambda: EncoderConfig(n_layers=-1),
    "EncoderConfig pad id out of range": lambda: EncoderConfig(vocab_size=10, pad_token_id=10),
    "EncoderDecoderConfig n_heads = 0": lambda: EncoderDecoderConfig(n_heads=0),
    "EncoderDecoderConfig no decoder layers": lambda: EncoderDecoderConfig(n_decoder_layers=0),
    # model forward
    "GPT token id out of range": lambda: tiny_gpt()(T([[1, 10]])),
    "GPT negative token id": lambda: tiny_gpt()(T([[1, -1]])),
    "GPT sequence longer than block_size": lambda: tiny_gpt()(torch.zeros(1, 9, dtype=torch.long)),
    "GPT 1-D input": lambda: tiny_gpt()(T([1, 2])),
    "GPT float input": lambda: tiny_gpt()(torch.zeros(1, 3)),
    "GPT targets of wrong shape": lambda: tiny_gpt()(T([[1, 2]]), targets=T([[1]])),
    "Encoder token id out of range": lambda: Encoder(
        EncoderConfig(vocab_size=10, block_size=8, n_layers=1, n_heads=2, d_model=8)
    )(T([[1, 10]])),
    "EncoderDecoder target id out of range": lambda: tiny_seq2seq()(T([[1, 2]]), decoder_idx=T([[1, 7]])),
    "EncoderForSequenceClassification targets of wrong shape": lambda: EncoderForSequenceClassification(
        EncoderConfig(vocab_size=10, block_size=8, n_layers=1, n_heads=2, d_model=8), n_classes=2
    )(T([[1, 2]]), T([[1, 1]])),
    "GPT kv_cache of the wrong kind": lambda: tiny_gpt()(T([[1, 2]]), kv_cache=[]),
    # generation
    "generate negative max_new_tokens": lambda: generation.generate(tiny_gpt(), [1], -1),
    "generate prompt longer than block_size": lambda: generation.generate(tiny_gpt(), [1] * 9, 1),
    "generate prompt id out of range": lambda: generation.generate(tiny_gpt(), [10], 1),
    "generate empty prompt": lambda: generation.generate(tiny_gpt(), [], 1),
    "generate negative temperature": lambda: generation.generate(tiny_gpt(), [1], 1, temperature=-1.0),
    "generate top_k = 0": lambda: generation.generate(tiny_gpt(), [1], 1, top_k=0),
    "generate top_p = 0": lambda: generation.generate(tiny_gpt(), [1], 1, top_p=0.0),
    "generate eos id out of range": lambda: generation.generate(tiny_gpt(), [1], 1, eos_id=10),
    "generate NaN logits (greedy)": lambda: generation.generate(nan_gpt(), [1], 3, temperature=0),
    "generate NaN logits (sampled)": lambda: generation.generate(nan_gpt(), [1], 3, seed=0),
    "sample_next_token inf logits": lambda: generation.sample_next_token(T([[math.inf, 0.0]])),
    "top_k_filter k = 0": lambda: generation.top_k_filter(torch.zeros(1, 4), 0),
    "top_p_filter p = 2": lambda: generation.top_p_filter(torch.zeros(1, 4), 2.0),
    "kv_cache_bytes negative": lambda: generation.kv_cache_bytes(-1, 8, 8),
    # seq2seq decoding
    "beam_search num_beams = 0": lambda: decoding.beam_search(
        lambda x: torch.zeros(len(x), 4).log_softmax(-1), T([0]), num_beams=0, max_new_tokens=2
    ),
    "greedy_decode bos out of range": lambda: decoding.greedy_decode(
        tiny_seq2seq(), T([[1, 2]]), bos_id=7, eos_id=1, max_len=3
    ),
    "make_date_pairs negative count": lambda: seq2seq_data.make_date_pairs(-1, 1),
    "format_date unknown style": lambda: seq2seq_data.format_date(dt.date(2020, 1, 1), "klingon"),
    "CharVocab encode unknown char": lambda: seq2seq_data.date_vocabs()[1].encode("xyz!"),
    # training and checkpoints
    "TrainConfig log_interval = 0": lambda: TrainConfig(log_interval=0),
    "TrainConfig steps = 0": lambda: TrainConfig(steps=0),
    "TrainConfig negative warmup": lambda: TrainConfig(warmup_steps=-1),
    "TrainConfig unknown optimizer": lambda: TrainConfig(optimizer="sgdd"),
    "TrainConfig min_lr above lr": lambda: TrainConfig(lr=1e-3, min_lr=1e-2),
    "TrainConfig betas out of range": lambda: TrainConfig(betas=(0.9, 1.5)),
    "train data shorter than block": lambda: train(
        tiny_gpt(), torch.arange(5), None, TrainConfig(steps=1, block_size=8, device="cpu"), progress=False
    ),
    "train token id beyond vocab": lambda: train(
        tiny_gpt(),
        torch.arange(100),
        None,
        TrainConfig(steps=1, block_size=8, batch_size=2, device="cpu"),
        progress=False,
    ),
    "train block_size beyond the model's": lambda: train(
        tiny_gpt(),
        torch.arange(100) % 10,
        None,
        TrainConfig(steps=1, block_size=16, batch_size=2, device="cpu"),
        progress=False,
    ),
    "load_pretrained damaged weights": damaged_checkpoint,
    "load_pretrained empty folder": lambda tmp_path: load_pretrained(tmp_path),
    # Hugging Face interop
    "gpt_to_hf post-LN model": lambda: hf.gpt_to_hf(
        GPT(GPTConfig(vocab_size=10, block_size=8, n_layers=1, n_heads=1, d_model=8, norm="post"))
    ),
    "gpt_to_hf eos id out of range": lambda: hf.gpt_to_hf(tiny_gpt(), eos_token_id=10),
    # fine-tuning and baselines
    "SequenceClassifier one class": lambda: classifier.SequenceClassifier(tiny_gpt(), 1),
    "SequenceClassifier unknown pooling": lambda: classifier.SequenceClassifier(tiny_gpt(), 2, pooling="median"),
    "pad_batch empty": lambda: tokenization.pad_batch([]),
    "FinetuneConfig steps = 0": lambda: finetune.FinetuneConfig(steps=0),
    "fit_classifier labels length mismatch": lambda: finetune.fit_classifier(
        classifier.SequenceClassifier(tiny_gpt(), 2), [[1, 2]], [0, 1], finetune.FinetuneConfig(steps=1)
    ),
    "fit_bag_of_words label out of range": lambda: finetune_bow_bad_label(),
    "fit_linear_probe features/labels mismatch": lambda: baselines.fit_linear_probe(torch.zeros(3, 2), T([0, 1])),
    "word2vec no sentences": lambda: embeddings.train_word2vec([]),
    "Word2VecConfig window = 0": lambda: embeddings.Word2VecConfig(window=0),
    "WordVectors unknown word": lambda: embeddings.WordVectors(["a", "b"], torch.eye(2)).nearest_neighbours("zzz"),
    # scaling
    "training_flops negative": lambda: scaling.training_flops(-1, 10),
    "tokens_for_budget zero params": lambda: scaling.tokens_for_budget(1e18, 0),
    "fit_power_law two points": lambda: scaling_fit.fit_power_law([1, 2], [1, 2]),
    "fit_power_law non-positive": lambda: scaling_fit.fit_power_law([1, 2, 3], [1, 0, 2]),
    "fit_isoflop_minimum two points": lambda: scaling_fit.fit_isoflop_minimum([1, 2], [1, 2]),
    "gpt_parameters of a non-config": lambda: counting.gpt_parameters({"d_model": 8}),
    # efficiency (quantisation, attention cost, distillation) and interpretation
    "qparams 1 bit": lambda: quantization.qparams(torch.randn(4), n_bits=1),
    "online_softmax block 0": lambda: attention_cost.online_softmax(torch.randn(2, 8), 0),
    "tiled_attention block 0": lambda: attention_cost.tiled_attention(*[torch.randn(1, 1, 4, 2)] * 3, block_size=0),
    "distillation_loss temperature 0": lambda: distillation.distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0),
    "distillation_loss shape mismatch": lambda: distillation.distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4)),
    "induction_scores period 0": lambda: interpret.induction_scores(torch.rand(1, 1, 8, 8), 0),
    "weat_effect_size empty set": lambda: interpret.weat_effect_size(
        torch.zeros(0, 2), torch.ones(2, 2), torch.ones(2, 2), torch.ones(2, 2)
    ),
    "newton_schulz 1-D": lambda: optim.newton_schulz(torch.randn(4)),
    "hidden_matrices of a model without Linear layers": lambda: optim.Muon(optim.hidden_matrices(torch.nn.ReLU())),
    # the modern decoder
    "LlamaConfig n_kv_heads not dividing n_heads": lambda: LlamaConfig(n_heads=4, n_kv_heads=3, d_model=32),
    "LlamaConfig n_kv_heads = 0": lambda: LlamaConfig(n_heads=4, n_kv_heads=0, d_model=32),
    "LlamaConfig odd d_head": lambda: LlamaConfig(n_heads=4, d_model=12),
    "LlamaConfig rope_theta NaN": lambda: LlamaConfig(rope_theta=math.nan),
    "LlamaConfig norm_eps = 0": lambda: LlamaConfig(norm_eps=0.0),
    "LlamaConfig negative aux_loss_coef": lambda: LlamaConfig(aux_loss_coef=-0.1),
    "LlamaConfig negative n_experts": lambda: LlamaConfig(n_experts=-1),
    "LlamaConfig more experts per token than experts": lambda: LlamaConfig(n_experts=2, n_experts_per_token=3),
    "Llama token id out of range": lambda: tiny_llama()(T([[1, 10]])),
    "Llama sequence longer than block_size": lambda: tiny_llama()(torch.zeros(1, 9, dtype=torch.long)),
    "Llama attention_mask of wrong shape": lambda: tiny_llama()(T([[1, 2]]), attention_mask=T([[1, 1, 1]])),
    "Llama targets of wrong shape": lambda: tiny_llama(n_experts=2)(T([[1, 2]]), targets=T([[1]])),
    "Llama kv_cache of the wrong kind": lambda: tiny_llama()(T([[1, 2]]), kv_cache=[]),
    "Llama kv_cache with n_heads heads": lambda: tiny_llama()(
        T([[1]]), kv_cache=KVCache.for_model(tiny_gpt(), batch_size=1)
    ),
    "MultiHeadAttention n_kv_heads not dividing": lambda: attention.MultiHeadAttention(8, 4, n_kv_heads=3),
    "MultiHeadAttention rotary of another d_head": lambda: attention.MultiHeadAttention(
        8, 2, rotary=positional.RotaryEmbedding(8)
    ),
    "RotaryEmbedding float16 angles": lambda: positional.RotaryEmbedding(8, angle_dtype=torch.float16),
    "RotaryEmbedding base 1": lambda: positional.RotaryEmbedding(8, base=1.0),
    "RMSNorm eps = 0": lambda: RMSNorm(8, eps=0.0),
    "MixtureOfExperts no experts": lambda: MixtureOfExperts(8, 12, 0, 1),
    "MixtureOfExperts k > n_experts": lambda: MixtureOfExperts(8, 12, 2, 3),
    "kv_cache_bytes n_heads without n_kv_heads": lambda: generation.kv_cache_bytes(2, 8, 16, n_heads=2),
    "kv_cache_bytes n_kv_heads not dividing": lambda: generation.kv_cache_bytes(2, 8, 16, n_heads=4, n_kv_heads=3),
    "llama_parameters of a GPTConfig": lambda: counting.llama_parameters(GPTConfig()),
    "llama_from_hf of a GPT-2": lambda: hf_llama.llama_from_hf(hf.gpt_to_hf(tiny_gpt())),
    "llama_to_hf eos out of range": lambda: hf_llama.llama_to_hf(tiny_llama(), eos_token_id=10),
}


def finetune_bow_bad_label():
    from companion.analysis.baselines import fit_bag_of_words

    return fit_bag_of_words([[1, 2], [2, 3]], [0, 7], vocab_size=5, n_classes=2)


def raised_by_companion(excinfo: pytest.ExceptionInfo) -> bool:
    """True when the exception was raised by the package's own code, not deep inside a library."""
    return "/companion/" in excinfo.traceback[-1].path.as_posix()


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_a_clear_error(name, tmp_path):
    """A ValueError (TypeError for a wrong type, FileNotFoundError for a missing file), raised by the
    package itself with a message that says what is wrong."""
    call = CASES[name]
    with pytest.raises((ValueError, TypeError, FileNotFoundError)) as err:
        call(tmp_path) if call.__code__.co_argcount else call()
    message = str(err.value)
    assert len(message) > 15, f"{name}: uninformative message {message!r}"
    assert raised_by_companion(err), f"{name}: raised inside a library: {err.typename}: {message}"


def test_all_ignored_targets_give_a_defined_loss():
    """A batch with every target ignored (-100) has nothing to learn from: loss 0, zero gradients, not NaN."""
    model = tiny_gpt()
    out = model(T([[1, 2, 3]]), targets=T([[-100, -100, -100]]))
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.parameters())


def test_tiny_temperature_is_greedy_not_an_error():
    logits = T([[0.5, 2.0, 1.0]])
    assert generation.sample_next_token(logits, temperature=1e-30).item() == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--text", "/nonexistent.txt", "--steps", "1"],
        ["train", "no-such-corpus", "--steps", "1"],
        ["sample", "--ckpt", "/nonexistent-folder"],
        ["train", "shakespeare", "--text", "x"],
        ["train", "shakespeare", "--val-fraction", "2"],
        ["train", "shakespeare", "--steps", "-3"],
        ["sample", "--ckpt", ".", "--temperature", "hot"],
    ],
)
def test_cli_bad_input_is_one_line_and_status_2(argv, capsys):
    from companion.cli import main

    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("companion") and "error:" in err[0], err


def test_cli_damaged_checkpoint_is_one_line(tmp_path, capsys):
    from companion.cli import TOKENIZER_FILE, main

    save_checkpoint(tmp_path, tiny_gpt())
    char_tok().save(tmp_path / TOKENIZER_FILE)
    (tmp_path / "checkpoint.json").write_text("{broken")
    assert main(["sample", "--ckpt", str(tmp_path), "--prompt", "a"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint.json" in err[0], err


def test_number_of_cases(capsys):
    n = len(CASES) + 2 + 7 + 1  # + the defined-result tests and the command-line cases
    with capsys.disabled():
        print(f"\nbad-input cases tried: {n}")
    assert n >= 100
