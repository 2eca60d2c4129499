"""Tokenizers: characters, words and byte-level BPE sub-words.

`CharTokenizer` maps each character of a fixed alphabet to an id; `word_tokenize` is the simple word
splitter used for word-level counts and word vectors; the byte-level BPE tokenizer lives in
`companion.text.bpe` and is re-exported here. (The module is named `tokenization`, not `tokenizers`, so it
can never shadow Hugging Face's `tokenizers` package.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import regex

from companion.text.bpe import GPT2_PATTERN, BPETokenizer, bytes_to_unicode, pretokenize
from companion.utils import read_json

__all__ = ["CharTokenizer", "BPETokenizer", "GPT2_PATTERN", "bytes_to_unicode", "pretokenize", "word_tokenize"]

_WORD_RE = regex.compile(r"[\p{L}\p{N}]+(?:'[\p{L}]+)*")


def word_tokenize(text: str, lower: bool = True) -> list[str]:
    """Split text into words: runs of letters/digits, keeping inner apostrophes ("don't")."""
    if lower:
        text = text.lower()
    return _WORD_RE.findall(text)


def _describe(ch: str) -> str:
    """A character shown unambiguously: 'é' (U+00E9)."""
    return f"{ch!r} (U+{ord(ch):04X})"


class CharTokenizer:
    """Character-level tokenizer: the sorted set of characters of a text is the vocabulary."""

    def __init__(self, text: str | Iterable[str]):
        chars = sorted(set(text))
        if not chars:
            raise ValueError("cannot build a CharTokenizer from an empty text")
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer expects a string or an iterable of single characters")
        self.chars: list[str] = chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars)}

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

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
        """Write the alphabet to a JSON file."""
        Path(path).write_text(
            json.dumps({"format": "companion-char", "chars": self.chars}, ensure_ascii=False), encoding="utf-8"
        )

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        """Read a tokenizer written by `save`."""
        data = read_json(path, "tokenizer file")
        if not isinstance(data, dict) or data.get("format") != "companion-char" or "chars" not in data:
            raise ValueError(f"{path} is not a companion-char JSON file")
        return cls(data["chars"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
