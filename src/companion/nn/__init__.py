"""The networks (chapters 2-5): attention, positions, the Transformer block and the models built from it.

* `attention`  scaled dot-product and multi-head attention, masks
* `positional` sinusoidal, learned and rotary positions, ALiBi
* `blocks`     the Transformer block (pre- or post-LayerNorm) and its feed-forward layer
* `kv_cache`   the preallocated KV cache that attention appends to in place
* `output`     `ModelOutput`, what every model returns
* `gpt`        the decoder-only GPT
* `encoder`    a BERT-style bidirectional encoder, with masked-LM and classification heads
* `seq2seq`    the encoder-decoder
* `classifier` a pre-trained GPT body with a classification head (for fine-tuning)

The models are imported here, so ``from companion.nn import GPT, GPTConfig`` works.
"""

from companion.nn.blocks import FeedForward, TransformerBlock
from companion.nn.classifier import SequenceClassifier
from companion.nn.encoder import (
    Encoder,
    EncoderConfig,
    EncoderForMaskedLM,
    EncoderForSequenceClassification,
    mean_pool,
)
from companion.nn.gpt import GPT, GPTConfig, init_gpt_weights
from companion.nn.kv_cache import KVCache, LayerKVCache
from companion.nn.output import ModelOutput
from companion.nn.seq2seq import EncoderDecoder, EncoderDecoderConfig

__all__ = [
    "Encoder",
    "EncoderConfig",
    "EncoderDecoder",
    "EncoderDecoderConfig",
    "EncoderForMaskedLM",
    "EncoderForSequenceClassification",
    "FeedForward",
    "GPT",
    "GPTConfig",
    "KVCache",
    "LayerKVCache",
    "ModelOutput",
    "SequenceClassifier",
    "TransformerBlock",
    "init_gpt_weights",
    "mean_pool",
]
