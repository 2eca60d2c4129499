"""Using a trained model (chapters 5, 7 and 9): sampling with a KV cache, beam search, a CPU fast path.

* `generation` greedy and sampled decoding (temperature, top-k, top-p) with the KV cache
* `decoding`   greedy decoding and beam search for encoder-decoder models
* `packing`    an opt-in copy of a model whose Linear layers store W as (in, out), for CPU decoding
"""
