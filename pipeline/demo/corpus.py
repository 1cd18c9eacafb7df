"""Build (once, cached) the demo corpus: rendered images, captions, and LAION-schema metadata.

Layout of the cache folder::

    images/{key}.jpg        the "web" images, served by ``demo.web``
    items.parquet           key, caption, source, split, width, height, name, group, concept

Training pairs are OpenClipart + OpenMoji (split ``train``). Two evaluation sets are held out:
``heldout``, every emoji in the Noto art style (never trained on: out of distribution), and
``concept_heldout``, every image of one concept in ten, in the training art styles (whole
concepts never trained on: in distribution).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.demo import emoji, openclipart, render

log = logging.getLogger(__name__)

CORPUS_VERSION = 4  # bump when rendering or captioning changes, to invalidate caches
LAION_SCHEMA = pa.schema(
    [
        ("SAMPLE_ID", pa.int64()),
        ("URL", pa.string()),
        ("TEXT", pa.string()),
        ("HEIGHT", pa.int32()),
        ("WIDTH", pa.int32()),
        ("LICENSE", pa.string()),
        ("NSFW", pa.string()),
        ("similarity", pa.float64()),
    ]
)
LICENSES = {
    "openclipart": "https://creativecommons.org/publicdomain/zero/1.0/",
    "openmoji": "https://creativecommons.org/licenses/by-sa/4.0/",
    "noto": "https://scripts.sil.org/OFL",
}


# In-distribution held-out concepts: this many per thousand, chosen by a hash of the concept
# itself, so that a concept leaves training from both sources at once and for every version.
HELDOUT_CONCEPTS_PER_MILLE = 100
_SKIN_TONE = re.compile(r"\s*\b(light|medium-light|medium|medium-dark|dark) skin tone,?")
# Words that only say who is shown: "woman farmer", "man farmer" and "farmer" are one concept.
_PERSON_WORDS = {"man", "woman", "person", "men", "women", "people", "boy", "girl"}


def without_skin_tone(name: str) -> str:
    return " ".join(_SKIN_TONE.sub("", name).split()).strip(" ,")


def concept_of(name: str) -> str:
    """The concept an image shows: its name without skin tone or gender (variants of one emoji
    are near-duplicates, so they are held out or trained together)."""
    words = [w for w in re.findall(r"[\w'-]+", without_skin_tone(name.lower()))]
    kept = [w for w in words if w not in _PERSON_WORDS]
    while kept and kept[0] in ("and", "with"):
        kept = kept[1:]
    return " ".join(kept) or " ".join(words) or name.lower()


def is_heldout_concept(concept: str) -> bool:
    digest = hashlib.sha256(concept.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 1000 < HELDOUT_CONCEPTS_PER_MILLE


def training_split(concept: str) -> str:
    return "concept_heldout" if is_heldout_concept(concept) else "train"


@dataclass(frozen=True)
class CorpusSpec:
    cache_dir: str
    max_side: int = 160  # rendered size; the pipeline resizes down to the training size
    limit_per_source: int = 0  # 0 = all; tests use a handful per source
    processes: int = 0  # 0 = all cores


@dataclass(frozen=True)
class _RenderTask:
    key: str
    source: str
    caption: str
    split: str
    name: str
    group: str
    concept: str
    svg_path: str = ""
    emoji_text: str = ""


def _render(task: _RenderTask, images_dir: str, max_side: int) -> dict | None:
    try:
        if task.svg_path:
            image = render.render_svg(Path(task.svg_path).read_bytes(), max_side)
        else:
            glyph = render.render_emoji_glyph(task.emoji_text)
            if glyph is None:
                return None
            image = render.fit_within(glyph, max_side)
    except Exception as exc:  # one bad drawing must not stop the corpus; it is logged and counted
        log.warning("could not render %s (%s): %s", task.key, task.svg_path or task.name, exc)
        return None
    out = Path(images_dir) / f"{task.key}.jpg"
    out.write_bytes(render.encode_jpeg(image))
    return {
        "key": task.key,
        "caption": task.caption,
        "source": task.source,
        "split": task.split,
        "width": image.width,
        "height": image.height,
        "name": task.name,
        "group": task.group,
        "concept": task.concept,
    }


def _render_star(args: tuple[_RenderTask, str, int]) -> dict | None:
    return _render(*args)


def _limited(items: Iterable, limit: int) -> list:
    out = []
    for item in items:
        out.append(item)
        if limit and len(out) >= limit:
            break
    return out


def plan_tasks(limit_per_source: int) -> list[_RenderTask]:
    tasks: list[_RenderTask] = []
    for i, (item, _) in enumerate(_limited(openclipart.iter_openclipart(), limit_per_source)):
        name = openclipart.clean_title(item.title)
        tasks.append(
            _RenderTask(
                key=f"oca{i:05d}",
                source="openclipart",
                caption=openclipart.make_caption(item),
                split=training_split(concept_of(name)),
                name=name,
                concept=concept_of(name),
                group=item.path.relative_to(openclipart.OPENCLIPART_ROOT).parts[0],
                svg_path=str(item.path),
            )
        )
    concepts = emoji.read_emoji_test()
    for i, (concept, path) in enumerate(_limited(emoji.iter_openmoji(concepts), limit_per_source)):
        tasks.append(
            _RenderTask(
                key=f"omj{i:05d}",
                source="openmoji",
                caption=emoji.emoji_caption(concept),
                split=training_split(concept_of(concept.name)),
                name=concept.name,
                group=concept.group,
                concept=concept_of(concept.name),
                svg_path=str(path),
            )
        )
    # Held-out art style: one image per concept, skin-tone variants dropped so that every
    # class name is distinct.
    base_concepts = [c for c in concepts if "skin tone" not in c.name]
    for i, concept in enumerate(_limited(base_concepts, limit_per_source)):
        tasks.append(
            _RenderTask(
                key=f"noto{i:05d}",
                source="noto",
                caption=emoji.emoji_caption(concept),
                split="heldout",
                name=concept.name,
                group=concept.group,
                concept=concept_of(concept.name),
                emoji_text=concept.text,
            )
        )
    return tasks


def build_corpus(spec: CorpusSpec) -> Path:
    """Render the corpus into ``spec.cache_dir`` unless an up-to-date copy is already there."""
    cache = Path(spec.cache_dir)
    stamp = cache / "corpus.json"
    wanted = {"version": CORPUS_VERSION, "max_side": spec.max_side, "limit": spec.limit_per_source}
    if stamp.exists() and json.loads(stamp.read_text()).get("spec") == wanted:
        return cache
    images_dir = cache / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    tasks = plan_tasks(spec.limit_per_source)
    log.info("rendering %d demo images into %s", len(tasks), images_dir)
    processes = spec.processes or os.cpu_count() or 1
    args = [(t, str(images_dir), spec.max_side) for t in tasks]
    if processes > 1:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            rows = pool.map(_render_star, args, chunksize=16)
    else:
        rows = [_render_star(a) for a in args]
    kept = [r for r in rows if r is not None]
    pd.DataFrame(kept).to_parquet(cache / "items.parquet", index=False)
    counts = pd.DataFrame(kept).groupby("source").size().to_dict()
    stamp.write_text(
        json.dumps({"spec": wanted, "rendered": counts, "failed": len(rows) - len(kept)}, indent=2)
    )
    log.info("demo corpus ready: %s (%d could not be rendered)", counts, len(rows) - len(kept))
    return cache


def load_items(cache_dir: str | Path) -> pd.DataFrame:
    return pd.read_parquet(Path(cache_dir) / "items.parquet")


def write_laion_metadata(items: pd.DataFrame, base_url: str, out_path: str | Path) -> int:
    """Write the training pairs as LAION-400M-schema parquet whose URLs point at the demo web."""
    train = items[items["split"] == "train"].sort_values("key").reset_index(drop=True)
    table = pa.table(
        {
            "SAMPLE_ID": pa.array(range(len(train)), pa.int64()),
            "URL": [f"{base_url.rstrip('/')}/img/{k}.jpg" for k in train["key"]],
            "TEXT": train["caption"].tolist(),
            "HEIGHT": pa.array(train["height"].astype("int32")),
            "WIDTH": pa.array(train["width"].astype("int32")),
            "LICENSE": [LICENSES[s] for s in train["source"]],
            "NSFW": ["UNLIKELY"] * len(train),
            "similarity": pa.array([None] * len(train), pa.float64()),
        },
        schema=LAION_SCHEMA,
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_path)
    return len(train)
