"""Post-training (chapter 10, from a pre-trained model to an assistant).

* `lora`  low-rank adapters: W' = W + (alpha / r) B A on frozen linear layers, merged for inference
"""
