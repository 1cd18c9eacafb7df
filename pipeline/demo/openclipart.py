"""Read OpenClipart SVGs (Debian ``openclipart-svg``) and their human-written metadata."""

from __future__ import annotations

import collections
import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

OPENCLIPART_ROOT = Path("/usr/share/openclipart/svg")

_DC = "{http://purl.org/dc/elements/1.1/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"

# Collection names used as the title of whole icon sets: they describe no single picture.
_GENERIC_TITLE = re.compile(
    r"collection|theme|\bicons?\b|iconset|sibmission|submission|various|^card$|^people$"
    r"|advertising|aiga_symbol|rpg map elements",
    re.IGNORECASE,
)
_TITLE_PREFIX = re.compile(r"^clipart by [^-]+-\s*", re.IGNORECASE)
# Keywords that tag the file, not the picture.
_NOISE_KEYWORDS = {
    "hash",
    "unsorted",
    "icon",
    "icons",
    "clip art",
    "clipart",
    "image",
    "media",
    "svg",
    "png",
    "public domain",
    "externalsource",
    "theme",
    "computer",
    "signs_and_symbols",
    "sign",
    "openclipart",
    "remix",
    "lemon_theme_icon",
}
# A title shared by this many files names a collection rather than a picture.
MAX_FILES_PER_TITLE = 8


@dataclass(frozen=True)
class ClipartItem:
    path: Path
    title: str
    keywords: tuple[str, ...]
    description: str


def parse_clipart(svg_bytes: bytes, path: Path) -> ClipartItem | None:
    try:
        root = ET.fromstring(svg_bytes)
    except ET.ParseError:
        return None
    work = next((e for e in root.iter() if e.tag.endswith("}Work")), None)
    if work is None:
        return None
    title = (work.findtext(f"{_DC}title") or "").strip()
    description = (work.findtext(f"{_DC}description") or "").strip()
    keywords = tuple(
        li.text.strip()
        for li in work.findall(f"{_DC}subject/{_RDF}Bag/{_RDF}li")
        if li.text and li.text.strip()
    )
    return ClipartItem(path, title, keywords, description)


def clean_title(title: str) -> str:
    title = _TITLE_PREFIX.sub("", title)
    title = re.sub(r"[_\s]+", " ", title)
    title = re.sub(r"\b\d+\b", "", title)
    return " ".join(title.split()).strip(" -,.")


def make_caption(item: ClipartItem, max_chars: int = 200) -> str:
    """Title, then the distinct keywords, then a short description: the text a page would show."""
    title = clean_title(item.title)
    words = [k.replace("_", " ") for k in item.keywords if k.lower() not in _NOISE_KEYWORDS]
    seen = {title.lower()}
    keywords = [w for w in words if not (w.lower() in seen or seen.add(w.lower()))]
    caption = title
    if keywords:
        caption += ", " + ", ".join(keywords[:8])
    description = " ".join(item.description.split())
    if (
        description
        and len(description) < 120
        and "@" not in description
        and "http" not in description
    ):
        caption += ". " + description
    return caption[:max_chars].strip()


def iter_openclipart(root: Path = OPENCLIPART_ROOT) -> Iterator[tuple[ClipartItem, bytes]]:
    """Yield each distinct real picture once, skipping generated art and icon-theme files."""
    seen_hashes: set[str] = set()
    parsed: list[tuple[ClipartItem, bytes]] = []
    for path in sorted(root.rglob("*.svg")):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen_hashes:
            continue  # the package ships the same file under several category folders
        seen_hashes.add(digest)
        if b"gramastar" in data.lower() or "/icons/" in path.as_posix():
            continue  # generated star polygons and icon themes: no human description
        item = parse_clipart(data, path)
        if item is None or not clean_title(item.title) or _GENERIC_TITLE.search(item.title):
            continue
        parsed.append((item, data))
    per_title = collections.Counter(item.title.lower() for item, _ in parsed)
    for item, data in parsed:
        if per_title[item.title.lower()] < MAX_FILES_PER_TITLE:
            yield item, data
