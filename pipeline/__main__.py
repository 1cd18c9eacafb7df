"""``python -m pipeline CONFIG [key=value ...]``: build a webdataset shard set."""

from __future__ import annotations

import json

from flipcommon.cli import run_stage, stage_parser
from pipeline.config import PipelineConfig

HELP = """\
Build a webdataset shard set from image-text metadata, on Spark.

Steps: read metadata (LAION-400M parquet schema, or csv/json with URL and TEXT columns) →
rule filters (caption length …) → exact dedup on (URL, TEXT) → URL list → download with
img2dataset, one Spark task per shard → sizes.json and manifest.json (written last).

Writes into output_dir: {shard:05d}.tar (KEY.jpg, KEY.txt, KEY.json), {shard}.parquet,
{shard}_stats.json, sizes.json, manifest.json; _work/ holds the intermediate URL list.
A rerun keeps finished shards and redoes unfinished ones.

Scale out: spark.master=spark://HOST:7077 (or yarn, k8s://…) and download.processes=N.

Examples:
  python -m pipeline configs/pipeline/demo.yaml
  python -m pipeline configs/pipeline/laion400m.yaml output_dir=/data/shards spark.master=spark://m:7077
"""


def _run(config: PipelineConfig, _args) -> None:
    from pipeline.stage import run  # imported late: --help must not need Spark

    manifest = run(config)
    print(json.dumps(manifest["counts"], indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("python -m pipeline", HELP, "download.timeout=5")
    from pipeline.ingest import MetadataError

    run_stage(parser, PipelineConfig, _run, argv, user_errors=(MetadataError,))


if __name__ == "__main__":  # img2dataset spawns processes: keep the entry point guarded
    main()
