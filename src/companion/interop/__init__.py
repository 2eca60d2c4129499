"""Interoperability (chapters 4, 5, 7, 9): weights to and from Hugging Face `transformers`.

* `hf`    copy weights between GPT-2 / BERT and our models, export tokenizers
* `llama` copy weights between Llama / Mixtral and our `Llama`
"""
