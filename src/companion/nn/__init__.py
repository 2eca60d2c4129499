"""The networks (chapters 2-5): attention, positions, the Transformer block and the models built from it.

* `attention`  scaled dot-product and multi-head attention, masks
* `positional` sinusoidal, learned and rotary positions, ALiBi
* `blocks`     the Transformer block (pre- or post-LayerNorm) and its feed-forward layer
* `gpt`        the decoder-only GPT
* `encoder`    a BERT-style bidirectional encoder, with masked-LM and classification heads
* `seq2seq`    the encoder-decoder
* `classifier` a pre-trained GPT body with a classification head (for fine-tuning)

The models are imported here, so ``from companion.nn import GPT, GPTConfig`` works.
"""

from companion.nn.blocks import FeedForward, TransformerBlock
from companion.nn.classifier import SequenceClassifier
from companion.nn.encoder import (
    ClassifierOutput,
    Encoder,
    EncoderConfig,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    MaskedLMOutput,
    mean_pool,
)
from companion.nn.gpt import GPT, GPTConfig, GPTOutput, init_gpt_weights
from companion.nn.seq2seq import EncoderDecoder, EncoderDecoderConfig, Seq2SeqOutput

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
    "SequenceClassifier",
    "TransformerBlock",
    "init_gpt_weights",
    "mean_pool",
]
