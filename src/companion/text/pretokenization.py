"""Pre-tokenisation: the regex that cuts text into the pieces ("words") inside which BPE may merge.

GPT-2's pattern is here; a production tokenizer brings its own (tiktoken's cl100k_base, GPT-4's,
keeps runs of letters with one leading symbol, splits digits into groups of one to three and keeps
line breaks apart), so the pattern is data. Special tokens are split off first and never merged.
"""

from __future__ import annotations

from collections.abc import Collection

import regex  # the `regex` package: unlike `re` it knows Unicode classes such as \p{L}

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
"""The pre-tokenisation regex of GPT-2 (Radford et al., 2019), also used by Hugging Face's ByteLevel."""

# A possessive bounded repeat such as cl100k's \p{N}{1,3}+, after an atom that is a \p{...} class,
# an escape, a [...] set or one plain character.
_POSSESSIVE_REPEAT = regex.compile(r"(\\p\{[^}]*\}|\\.|\[(?:\\.|[^\]\\])*\]|[^\\()\[\]{}|?*+])(\{\d+(?:,\d*)?\})\+")
_ANY_POSSESSIVE_REPEAT = regex.compile(r"(?<!\\)\{\d+(?:,\d*)?\}\+")


def pretokenize(text: str, pattern: str = GPT2_PATTERN) -> list[str]:
    """Split text into the pre-tokens ("words") inside which BPE merges are allowed."""
    return regex.findall(pattern, text)


def split_on_specials(text: str, specials: Collection[str]) -> list[tuple[str, bool]]:
    """Split text into (chunk, is_special) pieces; the longest special token wins at a position."""
    if not specials or not text:
        return [(text, False)] if text else []
    alternation = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
    pieces, start = [], 0
    for m in regex.finditer(alternation, text):
        if m.start() > start:
            pieces.append((text[start : m.start()], False))
        pieces.append((m.group(), True))
        start = m.end()
    if start < len(text):
        pieces.append((text[start:], False))
    return pieces


def onig_pattern(pattern: str) -> str:
    """The same pattern in the dialect of Oniguruma, the regex engine of Hugging Face `tokenizers`.

    Python's `regex` reads X{1,3}+ as a possessive repeat (it never gives characters back);
    Oniguruma's default (Ruby) syntax reads it as (X{1,3})+, one or more runs of one to three, so
    cl100k's digit groups would swallow "3132" whole. The atomic group (?>X{1,3}) means the possessive
    repeat in both, and is written instead. (`?+`, `*+` and `++` are possessive in both.)
    """
    out = _POSSESSIVE_REPEAT.sub(r"(?>\1\2)", pattern)
    left = _ANY_POSSESSIVE_REPEAT.search(out)
    if left:
        raise ValueError(f"cannot rewrite the possessive repeat {left.group()!r} of {pattern!r} for Oniguruma")
    return out
