"""The networks (chapters 2-6): attention, positions, the Transformer block and the models built from it.

* `attention`  scaled dot-product and multi-head attention, masks
* `positional` sinusoidal, learned and rotary positions, ALiBi
* `blocks`     the Transformer block (pre- or post-LayerNorm), its feed-forward layer, RMSNorm and SwiGLU
* `kv_cache`   the preallocated KV cache that attention appends to in place
* `output`     `ModelOutput`, what every model returns
* `gpt`        the decoder-only GPT
* `llama`      the modern decoder (Llama family): RMSNorm, SwiGLU, rotary, grouped-query attention
* `moe`        the mixture-of-experts feed-forward: top-k routing, load-balancing loss
* `encoder`    a BERT-style bidirectional encoder, with masked-LM and classification heads
* `seq2seq`    the encoder-decoder
* `classifier` a pre-trained GPT body with a classification head (for fine-tuning)

The models are imported here, so ``from companion.nn import GPT, GPTConfig, Llama, LlamaConfig`` works.
"""

from companion.nn.blocks import FeedForward, RMSNorm, SwiGLU, TransformerBlock
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
from companion.nn.llama import Llama, LlamaBlock, LlamaConfig
from companion.nn.moe import MixtureOfExperts
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
    "Llama",
    "LlamaBlock",
    "LlamaConfig",
    "MixtureOfExperts",
    "ModelOutput",
    "RMSNorm",
    "SequenceClassifier",
    "SwiGLU",
    "TransformerBlock",
    "init_gpt_weights",
    "mean_pool",
]
