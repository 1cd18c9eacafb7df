"""Optional CLIP-score filter: embed a finished shard set, keep the best-matching pairs, reshard.

1. **Embed** (one Spark task per source shard): image and caption embeddings from an open_clip
   model — one of our checkpoints (``flipcommon.checkpoints``) or ``open_clip:NAME@WEIGHTS``
   with local weights — written in clip-retrieval's inference layout, so its index and filter
   tools read them: ``embeddings/img_emb/img_emb_{shard}.npy``,
   ``text_emb/text_emb_{shard}.npy`` (float16, L2-normalised) and
   ``metadata/metadata_{shard}.parquet`` (``image_path``, ``caption``, the sample's key and
   url, and its ``similarity``). Each shard's files are written atomically, metadata last, so
   a rerun skips the embedded ones.
2. **Select**: keep pairs whose cosine similarity is ≥ ``min_similarity``, or the global top
   ``top_percent`` %, its threshold read from a histogram merged across shards on Spark (the
   driver never holds 400M scores).
3. **Reshard** the kept samples, in source order and with their original keys, into a new
   shard set (same layout and contract), closed by its own ``sizes.json`` and ``manifest.json``.

The embedding pass is ours rather than clip-retrieval's inference so that it runs as Spark
tasks on the pipeline's executors, one shard each, skipping shards already embedded; its
output is clip-retrieval's layout, which ``clip-retrieval index`` reads as it is (tested), and
its speed against clip-retrieval's inference is measured in
``benchmarks/embed_vs_clip_retrieval.py``.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from flipcommon.errors import UserError
from flipcommon.shard_set import MANIFEST_FILE, ShardSetMissing, close_shard_set, read_manifest
from flipcommon.shard_tars import read_tar_images, read_tar_samples
from flipcommon.storage import exists, url_join, write_bytes_atomic
from pipeline.config import ClipScoreConfig
from pipeline.manifest import (
    ReconciliationError,
    read_shard_stats,
    shard_set_manifest,
    shard_sizes,
)
from pipeline.shard_download import ShardWriter

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 20_000  # over [-1, 1]: a top-k% threshold within 1e-4 of the exact quantile


@functools.lru_cache(maxsize=1)
def _load_model(checkpoint: str, device: str):
    """Once per worker process: the model, its eval transform and tokenizer. A worker handed
    another GPU loads it there and drops the first copy (its CUDA context stays)."""
    from flipcommon.checkpoints import load_model  # the checkpoint contract's reader

    model, preprocess, tokenizer, _ = load_model(checkpoint)
    return model.to(device), preprocess, tokenizer


def granted_cpus(config: ClipScoreConfig) -> int:
    """The cores this task may use: what Spark granted it (1 per task in local mode, where
    every slot runs one), or ``task_cpus`` outside Spark."""
    from pyspark import TaskContext

    context = TaskContext.get()
    return int(context.cpus()) if context is not None else config.task_cpus


def task_device(device: str) -> str:
    """The torch device of this task: on "cuda", the GPU Spark gave the task, so tasks sharing
    an executor never share a GPU. Spark's address is the GPU's index as the discovery script
    saw it; where CUDA_VISIBLE_DEVICES renumbers the GPUs, its position in that list."""
    if device != "cuda":
        return device
    import os

    import torch
    from pyspark import TaskContext

    context = TaskContext.get()
    gpus = context.resources().get("gpu") if context is not None else None
    if gpus is None or not gpus.addresses:
        return "cuda"  # local mode: no GPU scheduling, the process's own device
    address = gpus.addresses[0]
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
    index = visible.index(address) if address in visible else address
    if not str(index).isdigit() or int(index) >= torch.cuda.device_count():
        raise UserError(
            f"Spark gave this task GPU {address!r}, which is not a CUDA device here "
            f"({torch.cuda.device_count()} visible, CUDA_VISIBLE_DEVICES={visible or 'unset'}): "
            "the executors' GPU discovery script must print CUDA indices"
        )
    return f"cuda:{index}"


def embedding_profile(spark: SparkSession, config: ClipScoreConfig):
    """The embedding job's task resources: ``task_cpus`` cores, and a GPU on "cuda" (Spark's
    stage-level scheduling, so the download's tasks keep one core each). ``None`` in local
    mode, which schedules no resources. A request no executor could meet would leave the job
    waiting forever: refused here."""
    if spark.sparkContext.master.startswith("local"):
        return None
    conf = spark.sparkContext.getConf()
    executor_cores = conf.get("spark.executor.cores")
    if executor_cores is not None:
        if not executor_cores.strip().isdigit():
            raise UserError(f"spark.executor.cores={executor_cores!r} is not a whole number")
        if int(executor_cores) < config.task_cpus:
            raise UserError(
                f"clip_score.task_cpus={config.task_cpus} is more than an executor's "
                f"{executor_cores} cores (spark.executor.cores): no executor could run the task"
            )
    if config.device == "cuda" and not conf.get("spark.executor.resource.gpu.amount"):
        raise UserError(
            "clip_score.device=cuda: the executors have no GPUs for Spark to give out; start "
            "them with spark.executor.resource.gpu.amount and a discovery script"
        )
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    requests = TaskResourceRequests().cpus(config.task_cpus)
    if config.device == "cuda":
        requests = requests.resource("gpu", 1.0)
    return ResourceProfileBuilder().require(requests).build


def check_config(config: ClipScoreConfig) -> None:
    """The rule across the filter's fields (each field's own range and choices are checked
    when the config loads): the stage calls this before the download, so a mistake does not
    wait hours to surface."""
    if (config.min_similarity is None) == (config.top_percent is None):
        raise UserError("clip_score: set exactly one of min_similarity or top_percent")


def read_shard_samples(tar_url: str) -> Iterator[tuple[str, bytes, str, dict]]:
    """(key, image bytes, caption, json metadata) for each sample of a shard, in tar order."""
    for key, parts in read_tar_samples(tar_url).items():
        if "jpg" in parts:
            meta = json.loads(parts.get("json", b"{}"))
            yield key, parts["jpg"], parts.get("txt", b"").decode("utf-8", "replace"), meta


class ShardEmbedder:
    """Spark task: embed one shard (skipping a done one); its histogram, a task of its own."""

    def __init__(self, source_dir: str, embeddings_dir: str, config: ClipScoreConfig):
        self.source_dir = source_dir
        self.embeddings_dir = embeddings_dir
        self.config = config

    def metadata_url(self, shard: str) -> str:
        return url_join(self.embeddings_dir, "metadata", f"metadata_{shard}.parquet")

    def __call__(self, shard: str) -> None:
        if not exists(self.metadata_url(shard)):  # a retried task's shard may be done
            self.embed(shard)

    def histogram(self, shard: str) -> np.ndarray:
        """The shard's similarity histogram, from its metadata file."""
        with fsspec.open(self.metadata_url(shard), "rb") as handle:
            scores = pq.read_table(handle, columns=["similarity"]).column(0).to_numpy()
        return np.histogram(scores, bins=HISTOGRAM_BINS, range=(-1.0, 1.0))[0]

    def embedded_shards(self) -> set[str]:
        """The shards whose embeddings are complete, from one listing of the metadata folder
        (each shard's metadata file is written last)."""
        fs, root = fsspec.core.url_to_fs(url_join(self.embeddings_dir, "metadata"))
        if not fs.exists(root):
            return set()
        names = (path.rstrip("/").rsplit("/", 1)[-1] for path in fs.ls(root, detail=False))
        return {
            n.removeprefix("metadata_").removesuffix(".parquet")
            for n in names
            if n.startswith("metadata_") and n.endswith(".parquet")
        }

    def embed(self, shard: str) -> None:
        import torch
        from PIL import Image

        device = task_device(self.config.device)
        cpus = granted_cpus(self.config)
        torch.set_num_threads(cpus)
        model, preprocess, tokenizer = _load_model(self.config.checkpoint, device)

        def decode(sample: tuple[str, bytes, str, dict]) -> torch.Tensor:
            return preprocess(Image.open(io.BytesIO(sample[1])).convert("RGB"))

        # decoding on the task's cores too: in one thread it would leave a many-core task's
        # model waiting (PIL and torch release the GIL)
        with ThreadPoolExecutor(cpus, thread_name_prefix="decode") as decoders:
            rows, image_embs, text_embs = [], [], []
            batch: list[tuple[str, bytes, str, dict]] = []
            samples = read_shard_samples(url_join(self.source_dir, f"{shard}.tar"))
            for sample in [*samples, None]:
                if sample is not None:
                    batch.append(sample)
                if batch and (sample is None or len(batch) == self.config.batch_size):
                    images = torch.stack(list(decoders.map(decode, batch)))
                    tokens = tokenizer([b[2] for b in batch])
                    with torch.no_grad():
                        image = model.encode_image(images.to(device), normalize=True)
                        text = model.encode_text(tokens.to(device), normalize=True)
                    similarity = (image * text).sum(-1).float().cpu().numpy()
                    image_embs.append(image.float().cpu().numpy().astype(np.float16))
                    text_embs.append(text.float().cpu().numpy().astype(np.float16))
                    for (key, _, caption, meta), score in zip(batch, similarity, strict=True):
                        rows.append(
                            {
                                "image_path": key,
                                "caption": caption,
                                "key": key,
                                "url": meta.get("url"),
                                "similarity": float(score),
                            }
                        )
                    batch = []
        dim = model.text_projection.shape[-1] if hasattr(model, "text_projection") else 0
        for kind, embs in (("img_emb", image_embs), ("text_emb", text_embs)):
            matrix = np.concatenate(embs) if embs else np.zeros((0, dim), np.float16)
            buffer = io.BytesIO()
            np.save(buffer, matrix)
            write_bytes_atomic(
                url_join(self.embeddings_dir, kind, f"{kind}_{shard}.npy"), buffer.getvalue()
            )
        schema = pa.schema(
            [
                ("image_path", pa.string()),
                ("caption", pa.string()),
                ("key", pa.string()),
                ("url", pa.string()),
                ("similarity", pa.float32()),
            ]
        )
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema), buffer)
        write_bytes_atomic(self.metadata_url(shard), buffer.getvalue())  # the shard's marker


def threshold_for_top_percent(histogram: np.ndarray, top_percent: float) -> float:
    """The lowest bin edge that keeps at most ``top_percent`` % of the scores above it (ties
    in the edge's bin are not split: the share kept can fall short by one bin's worth)."""
    total = int(histogram.sum())
    if total == 0:
        return 1.0
    want = total * top_percent / 100.0
    edges = np.linspace(-1.0, 1.0, HISTOGRAM_BINS + 1)
    kept = 0
    for index in range(HISTOGRAM_BINS - 1, -1, -1):
        if kept + histogram[index] > want:
            return float(edges[index + 1])
        kept += int(histogram[index])
    return -1.0


class Resharder:
    """Spark task: write one output shard from its slice of the kept samples."""

    def __init__(self, source_dir: str, embeddings_dir: str, output_dir: str, threshold: float):
        self.source_dir = source_dir
        self.embeddings_dir = embeddings_dir
        self.output_dir = output_dir
        self.threshold = threshold

    def __call__(self, job: tuple[int, list[tuple[str, int, int]]]) -> dict[str, Any]:
        """``job``: (output shard id, [(source shard, first kept index, end kept index)])."""
        shard_id, pieces = job
        start = time.time()
        writer = None
        for source, first, end in pieces:
            kept = self.kept_keys(source)[first:end]
            with fsspec.open(url_join(self.source_dir, f"{source}.parquet"), "rb") as handle:
                table = pq.read_table(handle)
            by_key = {row["key"]: row for row in table.to_pylist()}
            images = read_tar_images(url_join(self.source_dir, f"{source}.tar"))
            if writer is None:
                writer = ShardWriter(self.output_dir, shard_id, len(source), table.schema)
            for key in kept:
                writer.write(images[key], by_key[key])
        assert writer is not None, "a reshard job always has samples"
        return writer.commit(start, {"clip_score_threshold": self.threshold})

    def kept_keys(self, source: str) -> list[str]:
        url = url_join(self.embeddings_dir, "metadata", f"metadata_{source}.parquet")
        with fsspec.open(url, "rb") as handle:
            table = pq.read_table(handle, columns=["key", "similarity"])
        keys = table.column("key").to_pylist()
        scores = table.column("similarity").to_numpy()
        return [k for k, s in zip(keys, scores, strict=True) if s >= self.threshold]


def plan_reshard(
    kept_per_shard: list[tuple[str, int]], samples_per_shard: int
) -> list[tuple[int, list[tuple[str, int, int]]]]:
    """Cut the kept samples, in source order, into output shards of ``samples_per_shard``."""
    jobs: list[tuple[int, list[tuple[str, int, int]]]] = []
    current: list[tuple[str, int, int]] = []
    room = samples_per_shard
    for source, count in kept_per_shard:
        taken = 0
        while taken < count:
            n = min(room, count - taken)
            current.append((source, taken, taken + n))
            taken += n
            room -= n
            if room == 0:
                jobs.append((len(jobs), current))
                current, room = [], samples_per_shard
    if current:
        jobs.append((len(jobs), current))
    return jobs


def run_clip_score(spark: SparkSession, source_dir: str, config: ClipScoreConfig) -> dict:
    """Filter the complete shard set at ``source_dir`` into ``config.output_dir``."""
    finished = read_manifest(config.output_dir)
    if finished is not None:
        return finished
    check_config(config)
    source_manifest = read_manifest(source_dir)
    if source_manifest is None:
        raise ShardSetMissing(f"{source_dir} is not a finished shard set (no {MANIFEST_FILE})")
    shards = sorted(read_shard_stats(source_dir))
    embeddings_dir = url_join(config.output_dir, "embeddings")
    embedder = ShardEmbedder(source_dir, embeddings_dir, config)
    # The embedding job takes only the shards not embedded yet (a rerun's done ones would
    # make short tasks that keep idle Python workers, each holding a model, alive), under its
    # own task resources; the histogram is a job of one-core tasks over every shard.
    pending = sorted(set(shards) - embedder.embedded_shards())
    if pending:
        log.info("embedding %d of %d shards", len(pending), len(shards))
        to_embed = spark.sparkContext.parallelize(pending, len(pending))
        profile = embedding_profile(spark, config)
        if profile is not None:
            to_embed = to_embed.withResources(profile)
        to_embed.foreach(embedder)
    histogram = np.zeros(HISTOGRAM_BINS, np.int64)
    if shards:
        histogram = (
            spark.sparkContext.parallelize(shards, len(shards))
            .map(embedder.histogram)
            .treeReduce(np.add)
        )
    threshold = (
        float(config.min_similarity)
        if config.min_similarity is not None
        else threshold_for_top_percent(histogram, float(config.top_percent))
    )
    resharder = Resharder(source_dir, embeddings_dir, config.output_dir, threshold)
    # Counted on the executors: at LAION scale that is 41k metadata files, 400M scores.
    kept_per_shard = (
        spark.sparkContext.parallelize(shards, max(1, len(shards)))
        .map(lambda shard: (shard, len(resharder.kept_keys(shard))))
        .collect()
        if shards
        else []
    )
    jobs = plan_reshard(kept_per_shard, config.samples_per_shard)
    done = set(read_shard_stats(config.output_dir)) if exists(config.output_dir) else set()
    digits = len(shards[0]) if shards else 5
    todo = [job for job in jobs if f"{job[0]:0{digits}d}" not in done]
    if todo:
        spark.sparkContext.parallelize(todo, len(todo)).map(resharder).collect()
    return write_filtered_manifest(
        config, source_dir, source_manifest, histogram, threshold, kept_per_shard
    )


def write_filtered_manifest(
    config: ClipScoreConfig,
    source_dir: str,
    source_manifest: dict,
    histogram: np.ndarray,
    threshold: float,
    kept_per_shard: list[tuple[str, int]],
) -> dict:
    stats = read_shard_stats(config.output_dir)
    sizes = shard_sizes(stats)
    rows_in = int(source_manifest["counts"]["kept"])
    kept = sum(sizes.values())
    scored = int(histogram.sum())
    if scored != rows_in or kept != sum(n for _, n in kept_per_shard):
        raise ReconciliationError(
            f"CLIP-score counts do not add up: source kept {rows_in}, scored {scored}, "
            f"selected {sum(n for _, n in kept_per_shard)}, written {kept}"
        )
    manifest = shard_set_manifest(
        {"rows_in": rows_in, "clip_score_dropped": rows_in - kept, "kept": kept},
        {
            "checkpoint": config.checkpoint,
            "min_similarity": config.min_similarity,
            "top_percent": config.top_percent,
            "threshold": threshold,
            "samples_per_shard": config.samples_per_shard,
        },
        [source_dir],
        list(sizes),
        source_counts=source_manifest["counts"],
        similarity_histogram={
            "range": [-1.0, 1.0],
            "bins": 100,
            "counts": histogram.reshape(100, -1).sum(1).tolist(),
        },
        embeddings=url_join(config.output_dir, "embeddings"),
    )
    close_shard_set(config.output_dir, sizes, manifest)
    log.info("CLIP-score filter: kept %d of %d (threshold %.4f)", kept, rows_in, threshold)
    return manifest
