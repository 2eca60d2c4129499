"""Byte-level byte-pair encoding (BPE), GPT-2 style, written from scratch.

The pipeline is: text -> special tokens split off -> pre-tokens (a regex, GPT-2's by default, so
that no merge crosses a word boundary) -> UTF-8 bytes (ids 0..255) -> learned merges, applied
lowest rank first (the order they were learned) -> ids. Special tokens get the ids after the learned
vocabulary. The pattern, the order of the 256 byte ids and the special tokens' ids are data, so that
`BPETokenizer.from_tiktoken` can load a production vocabulary such as GPT-4's cl100k_base id for id.

`BPETokenizer.to_hf()` exports the same vocabulary and merges to a Hugging Face `tokenizers.Tokenizer`
so that the two implementations can be compared token for token (the tests do exactly that).
This module is called `bpe` (and the character tokenizer lives in `companion.text.tokenization`) so that
nothing of ours is ever confused with the Hugging Face package `tokenizers`.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import regex  # the `regex` package: unlike `re` it knows Unicode classes such as \p{L}

from companion.text.pretokenization import GPT2_PATTERN, onig_pattern, split_on_specials
from companion.utils import read_json

__all__ = ["BPETokenizer", "bytes_to_unicode"]

_FORMAT = "companion-byte-level-bpe"


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable Unicode characters (for display/export).

    Printable Latin-1 bytes map to themselves; the other 68 (control characters, space, ...) map to
    U+0100 upwards, so that the space byte 0x20 is shown as 'Ġ' and the newline 0x0A as 'Ċ'.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _merge_word(word: list[int], a: int, b: int, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of the pair (a, b), left to right, by new_id."""
    out, i, n = [], 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


class BPETokenizer:
    """A byte-level BPE tokenizer: `train`, `encode`, `decode`, `save`, `load`, `to_hf`, `from_tiktoken`.

    Ids 0..255 are the raw bytes (byte i by default; `byte_order[i]` if given, as tiktoken orders
    them); each merge (a, b) makes the token bytes(a) + bytes(b) (a new id, or the existing id if
    those bytes are already a token, as Hugging Face does); special tokens such as "<|endoftext|>"
    come last: the next ids in order, or the ids given by a {name: id} mapping.
    """

    def __init__(
        self,
        merges: Iterable[tuple[int, int]] = (),
        special_tokens: Iterable[str] | Mapping[str, int] = (),
        pattern: str = GPT2_PATTERN,
        byte_order: Sequence[int] | None = None,
    ):
        self.pattern = pattern
        self._re = regex.compile(pattern)
        self.byte_order = list(range(256)) if byte_order is None else [int(b) for b in byte_order]
        if sorted(self.byte_order) != list(range(256)):
            raise ValueError("byte_order must list each of the 256 byte values exactly once")
        self.vocab: list[bytes] = [bytes([b]) for b in self.byte_order]  # id -> bytes
        self._id_of_byte = bytes(sorted(range(256), key=self.byte_order.__getitem__))  # byte -> its id
        self._token_to_id: dict[bytes, int] = {t: i for i, t in enumerate(self.vocab)}
        self.merges: list[tuple[int, int]] = []
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}  # pair -> (rank, merged id)
        for a, b in merges:
            self._add_merge(int(a), int(b))
        self.special_tokens: dict[str, int] = {}
        self._special_by_id: dict[int, str] = {}
        self._add_special_tokens(special_tokens)
        self._cache: dict[str, list[int]] = {}

    def _add_special_tokens(self, special_tokens: Iterable[str] | Mapping[str, int]) -> None:
        """Register special tokens: each at the id a mapping gives, or else at the next free id."""
        given = special_tokens.items() if isinstance(special_tokens, Mapping) else ((s, None) for s in special_tokens)
        for s, i in given:
            if not isinstance(s, str) or not s:
                raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
            if s in self.special_tokens:
                raise ValueError(f"special token {s!r} given twice")
            i = self.vocab_size if i is None else int(i)
            if i < len(self.vocab) or i in self._special_by_id:
                raise ValueError(
                    f"special token {s!r}: id {i} is already taken (the merges make {len(self.vocab)} ids)"
                )
            self.special_tokens[s] = i
            self._special_by_id[i] = s

    def _add_merge(self, a: int, b: int) -> int:
        """Record the merge (a, b) and return the id of the merged token."""
        n = len(self.vocab)
        if not (0 <= a < n and 0 <= b < n):
            raise ValueError(f"merge ({a}, {b}) refers to an id outside the vocabulary of {n}")
        if (a, b) in self._ranks:
            raise ValueError(f"merge ({a}, {b}) appears twice")
        merged = self.vocab[a] + self.vocab[b]
        new_id = self._token_to_id.get(merged)
        if new_id is None:
            new_id = len(self.vocab)
            self.vocab.append(merged)
            self._token_to_id[merged] = new_id
        self._ranks[(a, b)] = (len(self.merges), new_id)
        self.merges.append((a, b))
        return new_id

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + learned tokens + special tokens (+ any unused ids below a special's)."""
        return max([len(self.vocab), *(i + 1 for i in self._special_by_id)])

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Iterable[str] = ("<|endoftext|>",),
        pattern: str = GPT2_PATTERN,
        verbose: bool = False,
    ) -> BPETokenizer:
        """Learn merges on `text` until the vocabulary (bytes + merges + specials) has vocab_size ids.

        Each step merges the most frequent adjacent pair (ties: the smallest pair of ids). Pair
        counts are kept incrementally: they are counted once over the unique pre-tokens weighted by
        their frequency, and after a merge only the pre-tokens that contain the merged pair (found
        through a pair -> pre-tokens index) are updated. A max-heap with lazy deletion finds the
        most frequent pair. Special tokens in `text` are cut out and never merged. Training stops
        early if no pair is left (then the vocabulary is smaller than asked).
        """
        special_tokens = tuple(special_tokens)
        tok = cls(special_tokens=(), pattern=pattern)
        n_learned = vocab_size - len(special_tokens)
        if n_learned < 256:
            raise ValueError(
                f"vocab_size {vocab_size} is too small: it must be at least 256 bytes "
                f"+ {len(special_tokens)} special tokens = {256 + len(special_tokens)}"
            )

        word_counts: Counter[str] = Counter()
        for chunk, is_special in split_on_specials(text, special_tokens):
            if not is_special:
                word_counts.update(tok._re.findall(chunk))
        words = [tok._byte_ids(w) for w in word_counts]  # unique pre-tokens as id lists
        freqs = list(word_counts.values())

        counts: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> indices of words
        for w, (word, f) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                counts[pair] += f
                where[pair].add(w)
        # Heap entries (-count, pair) are upper bounds on the true counts: a count that grows gets
        # a fresh entry; a count that shrinks is corrected when its stale entry is popped.
        heap = [(-c, p) for p, c in counts.items()]
        heapq.heapify(heap)

        while len(tok.vocab) < n_learned:
            best = None
            while heap:
                neg_c, pair = heapq.heappop(heap)
                c = counts.get(pair, 0)
                if c == -neg_c:
                    best = pair
                    break
                if c > 0:
                    heapq.heappush(heap, (-c, pair))
            if best is None:
                break  # every pre-token is a single token: nothing left to merge
            a, b = best
            if best in tok._ranks:  # the pair came back (its token was re-made by another merge)
                new_id = tok._ranks[best][1]
            else:
                new_id = tok._add_merge(a, b)
            if verbose and len(tok.merges) % 100 == 0:
                print(f"merge {len(tok.merges)}: {tok.vocab[a]!r} + {tok.vocab[b]!r} (count {c})")
            touched: set[tuple[int, int]] = set()
            for w in where.pop(best, ()):
                word = words[w]
                new_word = _merge_word(word, a, b, new_id)
                if len(new_word) == len(word):
                    continue  # stale index entry: this word no longer contains the pair
                f = freqs[w]
                for pair in zip(word, word[1:]):
                    counts[pair] -= f
                for pair in zip(new_word, new_word[1:]):
                    counts[pair] += f
                    if new_id in pair:  # only pairs with the new token can have grown
                        where[pair].add(w)
                        touched.add(pair)
                words[w] = new_word
            counts.pop(best, None)
            for pair in touched:
                heapq.heappush(heap, (-counts[pair], pair))

        tok._add_special_tokens(special_tokens)  # after the learned vocabulary
        return tok

    @classmethod
    def from_tiktoken(cls, name_or_encoding: str | object) -> BPETokenizer:
        """A `tiktoken` encoding (or its name, e.g. "cl100k_base", read offline) as our tokenizer, id for id.

        The merges are recovered from tiktoken's ranks (see `companion.text.tiktoken_import`); the
        split pattern, the byte order and the special tokens' ids are tiktoken's.
        """
        from companion.text.tiktoken_import import tiktoken_parts

        merges, special_tokens, pattern, byte_order = tiktoken_parts(name_or_encoding)
        return cls(merges, special_tokens, pattern, byte_order)

    # ------------------------------------------------------------------ encoding
    def _byte_ids(self, piece: str) -> list[int]:
        """The ids of a string's UTF-8 bytes (`translate` maps each byte to its id, which is below 256)."""
        return list(piece.encode("utf-8").translate(self._id_of_byte))

    def _bpe(self, piece: str) -> list[int]:
        """Apply the merges to one pre-token: repeatedly merge the adjacent pair of lowest rank.

        All its occurrences merge at once (tiktoken merges the leftmost and looks again, which ends
        alike: a pair containing the new token ranks after it). Pre-tokens are short, so this loop over
        the pairs measured faster than min(pairs, key=rank), a heap, or one occurrence at a time.
        """
        word = self._byte_ids(piece)
        ranks = self._ranks
        while len(word) >= 2:
            best, best_rank = None, None
            for pair in zip(word, word[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r[0] < best_rank):
                    best, best_rank = pair, r[0]
            if best is None:
                break
            word = _merge_word(word, best[0], best[1], ranks[best][1])
        return word

    def _encode_ordinary(self, text: str) -> list[int]:
        """Encode text with no special-token handling."""
        ids: list[int] = []
        cache = self._cache
        for piece in self._re.findall(text):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = self._bpe(piece)
                if len(cache) < 100_000:
                    cache[piece] = piece_ids
            ids.extend(piece_ids)
        return ids

    def encode(self, text: str, allowed_special: str | Collection[str] = "all") -> list[int]:
        """Encode a string to ids.

        Special tokens: by default (`allowed_special="all"`) every registered special token that
        appears in the text, e.g. "<|endoftext|>", becomes its single id (as in Hugging Face
        `tokenizers`, and as tiktoken's `encode(text, allowed_special="all")`). Pass a set of names to
        recognise only those, or `()` to encode the text of special tokens as ordinary bytes (tiktoken's
        `encode_ordinary`). tiktoken's own default differs: special tokens' text is an error there.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        else:
            allowed = set(allowed_special)
            unknown = allowed - set(self.special_tokens)
            if unknown:
                raise ValueError(f"unknown special tokens {sorted(unknown)}; registered: {sorted(self.special_tokens)}")
        ids: list[int] = []
        for chunk, is_special in split_on_specials(text, allowed):
            if is_special:
                ids.append(self.special_tokens[chunk])
            else:
                ids.extend(self._encode_ordinary(chunk))
        return ids

    # ------------------------------------------------------------------ decoding
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one id (a special token's UTF-8 text for special ids)."""
        if 0 <= token_id < len(self.vocab):
            return self.vocab[token_id]
        if token_id in self._special_by_id:
            return self._special_by_id[token_id].encode("utf-8")
        if 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is unused: no token has it (vocab_size {self.vocab_size})")
        raise ValueError(f"token id {token_id} is outside the vocabulary (vocab_size {self.vocab_size})")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenate the bytes of the ids (exact inverse of encode at the byte level)."""
        return b"".join(self.token_bytes(int(i)) for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids to a string.

        An id sequence may end (or start) in the middle of a multi-byte UTF-8 character, e.g. when
        a model generates one token at a time; such incomplete bytes become U+FFFD '�'
        (`errors="replace"`) instead of raising. `decode(encode(s)) == s` holds for every string.
        """
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """Each id shown in GPT-2's printable byte alphabet ('Ġ' = space), for display."""
        table = bytes_to_unicode()
        out = []
        for i in ids:
            i = int(i)
            out.append(
                self._special_by_id[i] if i in self._special_by_id else "".join(table[b] for b in self.token_bytes(i))
            )
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the tokenizer (pattern, byte order, merges, special tokens and their ids) to a JSON file."""
        data = {
            "format": _FORMAT,
            "version": 2,
            "pattern": self.pattern,
            "vocab_size": self.vocab_size,
            "byte_order": self.byte_order,
            "merges": [list(m) for m in self.merges],
            "special_tokens": self.special_tokens,
        }
        Path(path).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizer written by `save` (version 1 files, from before `byte_order`, still load)."""
        data = read_json(path, "tokenizer file")
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a {_FORMAT} JSON file")
        if data.get("version") not in (1, 2):
            raise ValueError(f"{path}: unsupported version {data.get('version')!r}")
        required = ["merges", "special_tokens", "pattern", "vocab_size"] + (
            ["byte_order"] if data["version"] == 2 else []
        )
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"{path}: the tokenizer file lacks {missing}")
        tok = cls(
            merges=[tuple(m) for m in data["merges"]],
            special_tokens=data["special_tokens"],  # a list (version 1) or a {name: id} mapping
            pattern=data["pattern"],
            byte_order=data.get("byte_order"),
        )
        if tok.vocab_size != data["vocab_size"]:
            raise ValueError(f"{path}: vocab_size {data['vocab_size']} does not match the merges ({tok.vocab_size})")
        return tok

    def to_hf(self):
        """The same tokenizer as a Hugging Face `tokenizers.Tokenizer` (BPE model, ByteLevel parts).

        Vocabulary strings use GPT-2's printable byte alphabet (`bytes_to_unicode`); merges keep our
        order, their rank. Our pattern, rewritten for Hugging Face's regex engine (`onig_pattern`), runs
        as a `Split` before a ByteLevel step that only maps bytes; a pattern that engine cannot compile
        is a ValueError. Checked on GPT-2's and cl100k's patterns (the engine's `^`, `$` and `.` are
        line-based, Python's are not: a pattern that hangs on them would need its own check).
        """
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # Hugging Face's package

        try:  # tokenizers raises a bare Exception for a pattern it cannot compile
            split = pre_tokenizers.Split(Regex(onig_pattern(self.pattern)), behavior="isolated")
        except Exception as err:
            raise ValueError(f"to_hf: Hugging Face's regex engine cannot compile the pattern ({err})") from None
        table = bytes_to_unicode()
        as_str = ["".join(table[b] for b in t) for t in self.vocab]
        vocab = {s: i for i, s in enumerate(as_str)}
        vocab.update(self.special_tokens)
        merges = [(as_str[a], as_str[b]) for a, b in self.merges]
        hf = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens(list(self.special_tokens))
        return hf

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={list(self.special_tokens)})"
        )
