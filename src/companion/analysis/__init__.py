"""Measuring and looking inside models (chapters 3, 9, 11).

* `metrics`        bits per character/byte, accuracy, F1, mean and standard error, paired tests
* `baselines`      bag-of-words logistic regression and the linear probe (L-BFGS)
* `interpret`      attention patterns, the logit lens, association tests, memorisation
* `induction`      a two-layer attention-only model trained to copy; its previous-token and induction heads
* `quantization`   int8 quantisers of tensors, dynamic int8 quantisation of a model
* `memory`         bytes of a model's weights and of its KV cache
* `attention_cost` tiled attention with the online softmax; attention's measured time and memory
* `measure`        the wall time and the peak tensor memory of one call
* `distillation`   knowledge distillation of a student from a teacher
* `energy`         GPU-hours, energy and CO2 of a training run
* `plotting`       loss curves of a training run
* `retrieval`      BM25 and dense retrieval, recall@k and MRR
"""
