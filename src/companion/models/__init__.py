"""Transformer models built from one block: GPT (decoder-only), a BERT-style encoder, an encoder-decoder."""

from companion.models.blocks import FeedForward, TransformerBlock
from companion.models.encoder import (
    ClassifierOutput,
    Encoder,
    EncoderConfig,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    MaskedLMOutput,
    mean_pool,
)
from companion.models.gpt import GPT, GPTConfig, GPTOutput, init_gpt_weights
from companion.models.seq2seq import EncoderDecoder, EncoderDecoderConfig, Seq2SeqOutput

__all__ = [
    "ClassifierOutput",
    "Encoder",
    "EncoderConfig",
    "EncoderDecoder",
    "EncoderDecoderConfig",
    "EncoderForMaskedLM",
    "EncoderForSequenceClassification",
    "FeedForward",
    "GPT",
    "GPTConfig",
    "GPTOutput",
    "MaskedLMOutput",
    "Seq2SeqOutput",
    "TransformerBlock",
    "init_gpt_weights",
    "mean_pool",
]
