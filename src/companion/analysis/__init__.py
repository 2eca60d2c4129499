"""Measuring and looking inside models (chapters 3, 8-9).

* `metrics`    bits per character/byte, accuracy, F1, mean and standard error
* `baselines`  bag-of-words logistic regression and the linear probe (L-BFGS)
* `interpret`  attention patterns, the logit lens, association tests, memorisation
* `efficiency` quantisation, KV-cache memory, tiled attention, distillation, energy
* `plotting`   loss curves of a training run
"""
