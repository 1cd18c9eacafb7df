"""The CLIP-score filter's embedding pass against clip-retrieval's own inference, on the same
shard set, checkpoint and cores: samples embedded per second, alternating rounds in one script.

Ours: one Spark task per shard (local[N], the way the pipeline runs it on executors), each
task decoding and embedding its shard with one torch thread. Theirs: `clip_retrieval`'s
inference in webdataset mode, one process with N decoding workers (its default single-machine
strategy). Both write the same layout (img_emb/, text_emb/, metadata/).

    python benchmarks/embed_vs_clip_retrieval.py SHARDS CHECKPOINT [--cores 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explore.build import (  # noqa: E402
    clip_model_name,
    clip_retrieval_inference,
    shard_sizes,
)
from pipeline.clip_score import ShardEmbedder  # noqa: E402
from pipeline.config import ClipScoreConfig  # noqa: E402


def ours(spark, shards: str, checkpoint: str, out: str, batch: int) -> None:
    config = ClipScoreConfig(enabled=True, checkpoint=checkpoint, batch_size=batch)
    embedder = ShardEmbedder(os.path.abspath(shards), out, config)
    names = [Path(p).stem for p in shard_sizes(shards)]
    spark.sparkContext.parallelize(names, len(names)).map(embedder).collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards")
    parser.add_argument("checkpoint")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(f"local[{args.cores}]")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    samples = sum(shard_sizes(args.shards).values())
    clip_model = clip_model_name(args.checkpoint)
    times: dict[str, list[float]] = {"ours": [], "clip-retrieval": []}
    for round_ in range(args.rounds):
        order = ["ours", "clip-retrieval"] if round_ % 2 == 0 else ["clip-retrieval", "ours"]
        for name in order:
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                if name == "ours":
                    ours(spark, args.shards, args.checkpoint, out, args.batch)
                else:
                    tars = shard_sizes(args.shards)
                    clip_retrieval_inference(tars, out, clip_model, args.batch, args.cores)
                times[name].append(time.perf_counter() - start)
            print(f"round {round_}: {name} {samples / times[name][-1]:.0f} samples/s", flush=True)
    rates = {name: samples / statistics.median(t) for name, t in times.items()}
    print(
        f"{samples} samples, {args.cores} cores: ours {rates['ours']:.0f} samples/s, "
        f"clip-retrieval {rates['clip-retrieval']:.0f} samples/s, "
        f"ratio {rates['ours'] / rates['clip-retrieval']:.2f}x"
    )


if __name__ == "__main__":
    main()
