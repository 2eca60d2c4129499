"""Tokenizers: characters, words and byte-level BPE sub-words, behind one `Tokenizer` interface.

`CharTokenizer` maps each character of a fixed alphabet to an id; `WordTokenizer` maps the words
and punctuation marks that `word_tokenize` finds to ids, with [PAD], [UNK] and [SEP]; the
byte-level BPE tokenizer lives in `companion.text.bpe` (its pre-tokenisation in
`companion.text.pretokenization`) and is importable from here too, beside the others. `pad_batch` turns
id lists of different lengths into one padded batch. (The module is named `tokenization`, not
`tokenizers`, so it can never shadow Hugging Face's `tokenizers` package.)
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from companion.text.bpe import BPETokenizer
from companion.utils import read_json

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "Tokenizer",
    "WORD_PATTERN",
    "WordTokenizer",
    "encode_texts",
    "load_tokenizer",
    "pad_batch",
    "rank_words",
    "word_tokenize",
]


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer of the book offers (`WordTokenizer` and `BPETokenizer` also have `to_hf`)."""

    @property
    def vocab_size(self) -> int:
        """Number of ids."""
        ...

    def encode(self, text: str) -> list[int]:
        """Text -> token ids."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text."""
        ...

    def save(self, path: str | Path) -> None:
        """Write the tokenizer to a JSON file."""
        ...

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer written by `save`."""
        ...


# A word (letters, digits or "_", keeping inner apostrophes: "it's") or one punctuation mark.
WORD_PATTERN = r"(\w+(?:'\w+)*)|[^\w\s]"
_WORD_RE = re.compile(WORD_PATTERN)


def word_tokenize(text: str, lower: bool = True, punctuation: bool = True) -> list[str]:
    """Split text into words (keeping inner apostrophes: "don't") and, with `punctuation`, single marks."""
    if lower:
        text = text.lower()
    if punctuation:
        return [m.group() for m in _WORD_RE.finditer(text)]
    return [w for w in _WORD_RE.findall(text) if w]  # findall gives the word group, "" for a mark


def rank_words(
    sentences: Iterable[Sequence[str]], min_count: int = 1, max_size: int | None = None
) -> tuple[list[str], list[int]]:
    """Words of tokenised sentences by decreasing count (ties: alphabetical), and their counts."""
    counts = Counter(w for s in sentences for w in s)
    items = sorted(((w, c) for w, c in counts.items() if c >= min_count), key=lambda wc: (-wc[1], wc[0]))
    if max_size is not None:
        items = items[: max(0, max_size)]
    return [w for w, _ in items], [c for _, c in items]


def _describe(ch: str) -> str:
    """A character shown unambiguously: 'é' (U+00E9)."""
    return f"{ch!r} (U+{ord(ch):04X})"


class CharTokenizer:
    """Character-level tokenizer: the sorted set of characters of a text is the vocabulary.

    `specials` (names such as "<pad>") take the first ids, before the characters; encoding never
    produces them (a text is characters only) and decoding writes them by name.
    """

    def __init__(self, text: str | Iterable[str], specials: Sequence[str] = ()):
        chars = sorted(set(text) - set(specials))
        if not chars:
            raise ValueError("cannot build a CharTokenizer from an empty text")
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer expects a string or an iterable of single characters")
        if len(set(specials)) != len(specials) or any(len(s) < 2 for s in specials):
            raise ValueError(f"specials must be distinct names of two or more characters, got {list(specials)}")
        self.specials: tuple[str, ...] = tuple(specials)
        self.chars: list[str] = list(specials) + chars  # id -> symbol
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        """Number of ids: the specials and the distinct characters."""
        return len(self.chars)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        """String -> list of ids; a character outside the vocabulary raises ValueError."""
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            for pos, c in enumerate(text):
                if c not in stoi:
                    raise ValueError(
                        f"character {_describe(c)} at position {pos} is not in the "
                        f"vocabulary of {self.vocab_size} characters"
                    ) from None
            raise

    def decode(self, ids: Iterable[int]) -> str:
        """List of ids -> string; an id outside [0, vocab_size) raises ValueError."""
        chars = self.chars
        out = []
        for pos, i in enumerate(ids):
            i = int(i)
            if not 0 <= i < len(chars):
                raise ValueError(f"id {i} at position {pos} is outside the vocabulary (vocab_size {self.vocab_size})")
            out.append(chars[i])
        return "".join(out)

    def save(self, path: str | Path) -> None:
        """Write the alphabet (and the specials' names) to a JSON file."""
        data = {"format": "companion-char", "chars": self.chars[len(self.specials) :], "specials": list(self.specials)}
        Path(path).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        """Read a tokenizer written by `save`."""
        data = read_json(path, "tokenizer file")
        if not isinstance(data, dict) or data.get("format") != "companion-char" or "chars" not in data:
            raise ValueError(f"{path} is not a companion-char JSON file")
        return cls(data["chars"], specials=tuple(data.get("specials", ())))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class WordTokenizer:
    """Word-level tokenizer: [PAD] = 0, [UNK] = 1, [SEP] = 2 (document boundary), then words."""

    specials = ("[PAD]", "[UNK]", "[SEP]")
    pad_id, unk_id, sep_id = 0, 1, 2

    def __init__(self, words: Iterable[str]):
        self.itos: list[str] = list(self.specials)
        for w in words:
            if w not in self.specials:
                self.itos.append(w)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("WordTokenizer got a repeated word")

    @classmethod
    def build(cls, texts: Iterable[str], max_size: int | None = None, min_count: int = 1) -> WordTokenizer:
        """The most frequent words of `texts` (ties broken alphabetically), at most max_size ids in all.

        `texts` is an iterable of strings; a single string counts as one text.
        """
        if isinstance(texts, str):
            texts = [texts]
        keep = None if max_size is None else max_size - len(cls.specials)
        words, _ = rank_words((word_tokenize(t) for t in texts), min_count, keep)
        return cls(words)

    @property
    def vocab_size(self) -> int:
        """Number of ids: the specials and the words."""
        return len(self.itos)

    def encode(self, text: str, max_len: int | None = None, sep: bool = True) -> list[int]:
        """Text -> ids, unknown words -> [UNK]; with `sep` a leading [SEP] marks the start of a document."""
        ids = [self.sep_id] * sep + [self.stoi.get(w, self.unk_id) for w in word_tokenize(text)]
        return ids if max_len is None else ids[:max_len]

    def encode_corpus(self, text: str) -> list[int]:
        """A corpus of documents separated by blank lines -> one id stream, [SEP] before each document."""
        ids: list[int] = []
        for doc in text.split("\n\n"):
            if doc.strip():
                ids += self.encode(doc)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> words joined by spaces (specials shown as written)."""
        return " ".join(self.itos[int(i)] for i in ids)

    def save(self, path: str | Path) -> None:
        """Write the words (in id order, after the specials) to a JSON file."""
        data = {"format": "companion-word", "words": self.itos[len(self.specials) :]}
        Path(path).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        """Read a tokenizer written by `save`."""
        data = read_json(path, "tokenizer file")
        if not isinstance(data, dict) or data.get("format") != "companion-word" or "words" not in data:
            raise ValueError(f"{path} is not a companion-word JSON file")
        return cls(data["words"])

    def to_hf(self):
        """The same tokenizer as a `transformers.PreTrainedTokenizerFast` (word-level model, same ids).

        Lower-casing, a split on whitespace, then `WORD_PATTERN`; a leading [SEP] is added as a
        special token, so ``tok(text)["input_ids"] == tokenizer.encode(text)``.
        """
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel(vocab=dict(self.stoi), unk_token="[UNK]"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")]
        )
        tok.post_processor = processors.TemplateProcessing(single="[SEP] $A", special_tokens=[("[SEP]", self.sep_id)])
        tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, tidies punctuation
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[SEP]", eos_token="[SEP]"
        )

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer file written by any tokenizer's `save`, whichever kind it is."""
    kinds = {"companion-char": CharTokenizer, "companion-word": WordTokenizer}
    data = read_json(path, "tokenizer file")
    fmt = data.get("format") if isinstance(data, dict) else None
    return kinds.get(fmt, BPETokenizer).load(path)  # BPETokenizer.load names a wrong format


# ----------------------------------------------------------------------------- batches of id lists


def encode_texts(tokenizer: WordTokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Encode each text with a leading [SEP], cut to max_len ids; an empty list raises."""
    if len(texts) == 0:
        raise ValueError("encode_texts got no texts: the dataset is empty")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    return [tokenizer.encode(t, max_len) for t in texts]


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad id lists -> (ids (B, T), attention_mask (B, T) with 1 = real token)."""
    if len(seqs) == 0 or any(len(s) == 0 for s in seqs):
        raise ValueError("pad_batch needs at least one sequence and no empty sequence")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask
