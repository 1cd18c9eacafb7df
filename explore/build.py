"""Build what clip-retrieval's back end serves, with clip-retrieval's own tools:

1. **inference** (``clip_retrieval.clip_inference``) over the shard set's tars in webdataset
   format: image and caption embeddings, and a metadata parquet (the sample's key as
   ``image_path``, its caption, its json fields);
2. **images**: each sample's image written as a file and its path put in ``image_path``, so the
   back end returns the image itself (it inlines files it can open) and the front end shows the
   shard set's own pixels, not the source URLs (which may be gone);
3. **index** (``clip_retrieval.clip_index``: autofaiss) of the image and text embeddings, the
   metadata copied beside it.

Each step is skipped when its output is complete, so a rerun only serves.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from pathlib import Path

import pyarrow.parquet as pq

from explore.config import ExploreConfig
from flipcommon.checkpoints import (
    OPEN_CLIP_PREFIX,
    WEIGHTS_FILE,
    latest_checkpoint,
    read_config,
    register_model_config,
)
from flipcommon.errors import UserError
from flipcommon.shard_set import read_sizes
from flipcommon.shard_tars import read_tar_images
from flipcommon.storage import url_join

log = logging.getLogger(__name__)

DONE = "_DONE"  # written last in each step's folder


class ExploreError(UserError):
    pass


def resolve_model(config: ExploreConfig) -> str:
    """The configured model, or the newest checkpoint of ``train_run_dir``."""
    if config.model:
        return config.model
    if config.train_run_dir:
        newest = latest_checkpoint(config.train_run_dir)
        if newest:
            return newest
        raise ExploreError(f"no checkpoint in {config.train_run_dir}: train first (make train)")
    raise ExploreError("set model= (a checkpoint folder or open_clip:NAME@WEIGHTS)")


def clip_model_name(model: str) -> str:
    """The name clip-retrieval's model loader (all_clip) takes: ``open_clip:NAME/WEIGHTS``; it
    splits at the first "/", so an absolute weights path keeps its own. A checkpoint's
    architecture is registered with open_clip under a name of its own, in this process: the
    back end must run in the process that called this."""
    if model.startswith(OPEN_CLIP_PREFIX):
        name, _, weights = model.removeprefix(OPEN_CLIP_PREFIX).partition("@")
        if not weights or not os.path.isfile(weights):
            raise ExploreError(f"{model}: give local weights, open_clip:NAME@/path/to/file")
        return f"open_clip:{name}/{os.path.abspath(weights)}"
    weights = url_join(model, WEIGHTS_FILE)
    if "://" in model or not os.path.isfile(weights):
        raise ExploreError(f"{model}: a local checkpoint folder holding {WEIGHTS_FILE}")
    name = "explore-" + hashlib.sha1(os.path.abspath(model).encode()).hexdigest()[:12]
    register_model_config(name, read_config(model)["model_cfg"])
    return f"open_clip:{name}/{os.path.abspath(weights)}"


def shard_sizes(shards: str) -> dict[str, int]:
    """The finished shard set's tars, as absolute local paths, with their sample counts."""
    if "://" in shards:
        raise ExploreError(f"{shards}: clip-retrieval reads the tars by path; copy or mount it")
    root = os.path.abspath(shards)
    return {os.path.join(root, name): n for name, n in sorted(read_sizes(root).items())}


def _done(folder: Path) -> bool:
    return (folder / DONE).exists()


def clip_retrieval_inference(
    tars: dict[str, int], out: str, clip_model: str, batch_size: int, workers: int
) -> None:
    """clip-retrieval's inference over the tars in webdataset format, metadata included."""
    from clip_retrieval.clip_inference.main import main as clip_inference

    clip_inference(
        input_dataset="{" + ",".join(tars) + "}",  # brace-expanded by clip-retrieval
        output_folder=out,
        input_format="webdataset",
        enable_metadata=True,
        clip_model=clip_model,
        use_jit=False,
        batch_size=batch_size,
        num_prepro_workers=workers,
        wds_number_file_per_input_file=max(tars.values()),
    )


def embed(tars: dict[str, int], out: Path, clip_model: str, config: ExploreConfig) -> None:
    if _done(out):
        return
    log.info("clip-retrieval inference over %d shards into %s", len(tars), out)
    clip_retrieval_inference(tars, str(out), clip_model, config.batch_size, config.workers)
    (out / DONE).touch()


def write_images(tars: dict[str, int], images: Path, metadata: Path) -> None:
    """Every sample's image as ``images/KEY.jpg``; ``image_path`` in the metadata then names
    it (the back end inlines an ``image_path`` it can open)."""
    if _done(images):
        return
    images.mkdir(parents=True, exist_ok=True)
    written = set()
    folded: dict[str, str] = {}  # one file per key, on a case-insensitive disk too
    for tar in tars:
        for key, jpg in read_tar_images(tar).items():
            if key.casefold() in folded:
                raise ExploreError(
                    f"{tar}: sample key {key} is already in the shard set "
                    f"(as {folded[key.casefold()]}): keys must be unique"
                )
            folded[key.casefold()] = key
            (images / f"{key}.jpg").write_bytes(jpg)
            written.add(key)
    for part in sorted(glob.glob(str(metadata / "*.parquet"))):
        table = pq.read_table(part)
        keys = table.column("image_path").to_pylist()
        missing = [key for key in keys if key not in written]
        if missing:
            raise ExploreError(f"{len(missing)} indexed samples have no image, e.g. {missing[0]}")
        paths = [str(images / f"{key}.jpg") for key in keys]
        index = table.schema.get_field_index("image_path")
        table = table.set_column(index, "image_path", [paths])
        pq.write_table(table, part)
    (images / DONE).touch()


def build_index(embeddings: Path, index: Path, config: ExploreConfig) -> None:
    from clip_retrieval.clip_index import clip_index

    if _done(index):
        return
    log.info("clip-retrieval index (autofaiss) into %s", index)
    clip_index(
        str(embeddings),
        str(index),
        max_index_memory_usage=config.max_index_memory,
        current_memory_available=config.available_memory,
        nb_cores=os.cpu_count(),
    )
    (index / DONE).touch()


def build(config: ExploreConfig, clip_model: str) -> Path:
    """Embeddings, images and index under ``out_dir``; returns the index folder."""
    out = Path(config.out_dir).resolve()
    tars = shard_sizes(config.shards)
    embeddings, index = out / "embeddings", out / "index"
    embed(tars, embeddings, clip_model, config)
    write_images(tars, out / "images", embeddings / "metadata")
    build_index(embeddings, index, config)
    return index
