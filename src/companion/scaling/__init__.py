"""Scaling (chapters 5, 8): counting parameters and FLOPs, the scaling laws, and fitting them.

* `counting` parameters and forward FLOPs of a GPT or a Llama from its config
* `laws`     training compute, the Kaplan and Chinchilla formulas, compute-optimal sizes
* `fit`      power-law and parametric fits with bootstrap confidence intervals
"""
