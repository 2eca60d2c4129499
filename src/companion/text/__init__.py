"""From raw text to token ids (chapters 1-2): corpora, tokenizers, n-gram models and word vectors.

* `corpora`         the offline corpora, labelled review data sets and a parallel English-Chinese text
* `tokenization`    the `Tokenizer` interface, the character and word tokenizers, padding a batch
* `pretokenization` the regex that cuts text into pre-tokens; special tokens split off
* `bpe`             byte-level byte-pair encoding, GPT-2 style, from scratch
* `tiktoken_import` a production tokenizer (GPT-4's cl100k_base) read as our BPE's merges
* `ngram`           count-based n-gram language models: add-k and interpolated Kneser-Ney
* `word_vectors`    skip-gram word vectors with negative sampling
* `dates`           a generated translation task (dates written many ways -> ISO 8601)
* `passages`        a retrieval benchmark: passages of Python's reference topics and questions about them
"""
