"""From raw text to token ids (chapters 1-2): corpora, tokenizers, n-gram models and word vectors.

* `corpora`      the offline corpora and labelled review data sets (nothing downloads)
* `tokenization` the `Tokenizer` interface, the character and word tokenizers, padding a batch
* `bpe`          byte-level byte-pair encoding, GPT-2 style, from scratch
* `ngram`        count-based n-gram language models: add-k and interpolated Kneser-Ney
* `word_vectors` skip-gram word vectors with negative sampling
* `dates`        a generated translation task (dates written many ways -> ISO 8601)
"""
