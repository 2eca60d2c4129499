"""companion: the shared code of the book *LLM Principles*.

Its folders follow the path text takes through a language model (the book's "Code map" page maps
every chapter to its modules):

* `companion.text`        corpora, tokenizers, n-gram models, word vectors      (chapters 1-2)
* `companion.nn`          attention, positions, the Transformer block, models   (chapters 2-6)
* `companion.training`    the training loop, objectives, optimizers, checkpoints (chapters 5-9)
* `companion.inference`   sampling with the KV cache, beam search               (chapters 5, 7, 9)
* `companion.scaling`     counting parameters and FLOPs, scaling laws, fits     (chapters 5, 8)
* `companion.posttraining` checkable tasks, the chat template, SFT, LoRA, DPO, GRPO (post-training)
* `companion.analysis`    metrics, probes, interpretability, efficiency         (chapters 3, 9, 11)
* `companion.interop`     weights to and from Hugging Face `transformers`
* `companion.experiments` the long runs whose committed JSON the chapters plot
* `companion.threads`     how many CPU threads PyTorch uses on a shared machine (set on import)

Each module holds one concept; the chapter notebooks import them.
"""

from companion.threads import policy as _thread_policy
from companion.utils import get_device, set_seed

_thread_policy.check(force=True)  # threads = the CPUs really free to us (companion.threads)

__version__ = "0.1.0"
__all__ = ["get_device", "set_seed", "__version__"]
