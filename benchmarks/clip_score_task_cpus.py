"""The CLIP-score filter's embedding on CPU: one model per core against one model per executor,
on the same shards and cores, alternating rounds in one script.

Per core (``clip_score.task_cpus: 1``, the default): one worker process per core, each with its
own model and one torch thread, each embedding its share of the shards. Per executor
(``task_cpus`` = the cores): one process, one model, as many torch threads as cores, every
shard. Both run the filter's own embedding code (``pipeline.clip_score.ShardEmbedder``) on
processes started the way PySpark starts its workers (fresh interpreters); Spark's scheduling
of the two (stage-level task resources) is tested in ``tests/test_clip_score_cluster.py``.

The model is open_clip's architecture with random weights (the figures do not depend on the
weights; nothing is downloaded); the shards hold synthetic 256×256 JPEGs with captions.
Reported: samples/s of each layout (the model load excluded: once per process), the peak
resident memory of each process, and the ratios.

    python benchmarks/clip_score_task_cpus.py [--model ViT-B-32] [--cores 2] [--shards 4]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import resource
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def write_shards(folder: Path, shards: int, samples: int) -> list[str]:
    """Synthetic shards in the pipeline's layout: NNNNN.tar of key.jpg / key.txt / key.json."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    names = []
    for shard in range(shards):
        name = f"{shard:05d}"
        with tarfile.open(folder / f"{name}.tar", "w") as tar:
            for index in range(samples):
                key = f"{name}{index:04d}"
                pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                image = Image.fromarray(pixels).resize((256, 256), Image.BILINEAR)
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=90)
                caption = f"a synthetic picture number {index} of shard {shard}"
                meta = json.dumps({"url": f"http://example.invalid/{key}.jpg"})
                for extension, data in (
                    ("jpg", buffer.getvalue()),
                    ("txt", caption.encode()),
                    ("json", meta.encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        names.append(name)
    return names


def embed_worker(args: tuple[str, str, str, int, int, list[str]]) -> tuple[float, int, int]:
    """One worker process: load the model (untimed, on a first shard), then embed its shards.
    Returns (seconds, samples, peak RSS in bytes)."""
    source, out, checkpoint, task_cpus, batch, names = args
    from pipeline.clip_score import ShardEmbedder, read_shard_samples
    from pipeline.config import ClipScoreConfig

    config = ClipScoreConfig(
        enabled=True, checkpoint=checkpoint, batch_size=batch, task_cpus=task_cpus
    )
    embedder = ShardEmbedder(source, f"{out}/warm-up", config)
    embedder.embed(names[0])  # the model load, once per process as on an executor
    embedder = ShardEmbedder(source, out, config)
    samples = sum(len(list(read_shard_samples(f"{source}/{n}.tar"))) for n in names)
    start = time.perf_counter()
    for name in names:
        embedder.embed(name)
    seconds = time.perf_counter() - start
    return seconds, samples, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_layout(
    source: str, checkpoint: str, names: list[str], cores: int, task_cpus: int, batch: int
) -> tuple[float, int]:
    """(samples/s, the largest process's peak RSS) of one layout."""
    processes = cores // task_cpus
    shares = [names[i::processes] for i in range(processes)]
    context = multiprocessing.get_context("spawn")  # fresh interpreters, like Spark's workers
    with tempfile.TemporaryDirectory() as out, context.Pool(processes) as pool:
        jobs = [
            (source, f"{out}/{i}", checkpoint, task_cpus, batch, share)
            for i, share in enumerate(shares)
        ]
        results = pool.map(embed_worker, jobs)
    seconds = max(r[0] for r in results)  # the layout ends with its last process
    samples = sum(r[1] for r in results)
    return samples / seconds, max(r[2] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="an open_clip architecture")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--shards", type=int, default=4, help="per round (a multiple of cores)")
    parser.add_argument("--samples-per-shard", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    import open_clip
    import torch

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        weights = root / "weights.pt"
        torch.manual_seed(0)
        torch.save(open_clip.create_model(args.model, pretrained=None).state_dict(), weights)
        checkpoint = f"open_clip:{args.model}@{weights}"
        (root / "shards").mkdir()
        names = write_shards(root / "shards", args.shards, args.samples_per_shard)
        layouts = {"model per core": 1, "model per executor": args.cores}
        rates: dict[str, list[float]] = {name: [] for name in layouts}
        memory: dict[str, int] = {}
        for round_ in range(args.rounds):
            order = list(layouts) if round_ % 2 == 0 else list(reversed(layouts))
            for name in order:
                rate, peak = run_layout(
                    str(root / "shards"), checkpoint, names, args.cores, layouts[name], args.batch
                )
                rates[name].append(rate)
                memory[name] = max(memory.get(name, 0), peak)
                print(f"round {round_}: {name}: {rate:.1f} samples/s", flush=True)
    per_core, per_executor = (statistics.median(rates[n]) for n in layouts)
    figures = {
        "model": args.model,
        "cores": args.cores,
        "samples_per_round": args.shards * args.samples_per_shard,
        "samples_per_s": {n: round(statistics.median(r), 1) for n, r in rates.items()},
        "samples_per_s_per_core": {
            n: round(statistics.median(r) / args.cores, 1) for n, r in rates.items()
        },
        "peak_rss_mib_per_process": {n: round(m / 2**20) for n, m in memory.items()},
        "processes": {n: args.cores // c for n, c in layouts.items()},
        "executor_over_core_throughput": round(per_executor / per_core, 2),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
