"""The glossary's other direction: its Chinese terms in pinyin order, each with its English term.

Usage:
    python tools/glossary_index.py          # writes book/_generated/glossary_index.md from book/glossary.md

book/glossary.md lists the terms in English alphabetical order (English | 中文 | Definition | Where);
a reader who meets 词元 in a Chinese course needs the way back. This writes that index, grouped by
the first letter of the pinyin, as the glossary includes it (a test keeps it in step with the table).
Each cell is copied verbatim from the table, so the Chinese edition's catalogue already holds it (the
English and 中文 columns keep msgstr = msgid) and the index adds no message to translate.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GLOSSARY = ROOT / "book" / "glossary.md"
OUT = ROOT / "book" / "_generated" / "glossary_index.md"
NOTE = re.compile(r"[（(][^）)]*[）)]")  # parenthesised parts: "（概率的）链式法则" sorts under 链


def rows(markdown: str) -> list[tuple[str, str]]:
    """The (English, 中文) cells of every row of the glossary's table."""
    found = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] not in ("English", "---"):
            found.append((cells[0], cells[1]))
    if not found:
        raise ValueError("book/glossary.md has no table with the columns English | 中文 | Definition | Where")
    return found


def sort_key(chinese: str) -> tuple[str, str]:
    """Pinyin without tones (letters kept as they are, lower case), then the term itself to break ties."""
    from pypinyin import Style, lazy_pinyin

    text = NOTE.sub("", chinese).strip() or chinese
    return " ".join(lazy_pinyin(text, style=Style.TONE3)).lower(), chinese


def render(markdown: str) -> str:
    """The index as Markdown: a table per initial letter of the pinyin, terms in pinyin order."""
    entries = sorted(((zh, en) for en, zh in rows(markdown)), key=lambda e: sort_key(e[0]))
    out = ["<!-- Written by python tools/glossary_index.py from book/glossary.md: do not edit. -->", ""]
    letter = None
    for zh, en in entries:
        first = sort_key(zh)[0][:1].upper()
        if first != letter:
            if letter is not None:
                out.append("")
            letter = first
            out += [f"**{letter}**", "", "| 中文 | English |", "|---|---|"]
        out.append(f"| {zh} | {en} |")
    return "\n".join(out) + "\n"


def main() -> int:
    """Write book/_generated/glossary_index.md."""
    OUT.write_text(render(GLOSSARY.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
