"""``python -m pipeline CONFIG [key=value ...]``: build a webdataset shard set."""

from __future__ import annotations

import copy
import json

from flipcommon.cli import run_stage, stage_parser
from pipeline.config import PipelineConfig

HELP = """\
Build a webdataset shard set from image-text metadata, on Spark.

Steps: read metadata (LAION-400M parquet schema by default; input.preset=laion5b, datacomp,
coyo700m, cc12m or cc3m for those datasets' files; or input.format=csv/tsv/jsonl with
input.url_col / input.caption_col, and input.columns for headerless csv/tsv) →
rule filters (caption length …) → exact dedup on (URL, TEXT) → URL list (one part per shard,
reused by a rerun) → download in one Spark job, one task per shard (img2dataset's resizer and
writer; our fetch step: one wall-clock
deadline per attempt over every phase — DNS, connect, TLS, headers, body, redirects —, a
per-site interval that holds for the whole cluster (fetch.per_domain_interval_s; large sites
are spread over every shard), the opt-outs (each site's robots.txt, fetched once per task and
obeyed for fetch.user_agent_token; X-Robots-Tag noai/noml…; tdm-reservation), an SSRF guard, a
decoded-pixel cap; a
shard budget, download.shard_deadline_s, that ends requests in flight) → a final pass
re-fetching samples that failed retryably (408/429/5xx, timeouts) into new shards — a task
with work left retries its own failures a minute later (download.retry_in_task_after_s), and
immediate retries need fetch.retries > 0 → sizes.json and manifest.json
(written last). While it downloads, the driver prints samples done, images/s, success rate
and the top failure reasons every download.progress_interval_s. Optional: decontamination
against evaluation images (decontamination.sources), and a CLIP-score filter into a new shard set
(clip_score.enabled=true clip_score.checkpoint=CKPT clip_score.top_percent=50).

Writes into output_dir: {shard:05d}.tar (KEY.jpg, KEY.txt, KEY.json), {shard}.parquet (every
sample with its status and failure reason), {shard}_stats.json (written last per shard: its
commit marker), sizes.json, manifest.json, report.html; _work/ holds the URL lists (urls/ and
the final pass's retry_urls/, each with domain_spread.json, domain_urls.json and its
_url_list.json marker), staging (local storage only) and the tasks' progress files.
A rerun keeps finished shards and redoes unfinished ones. Private, loopback and link-local
addresses are refused unless listed in fetch.allowed_networks or fetch.allowed_origins (the
demo allows exactly its own server's origin).

Scale out: spark.master=spark://HOST:7077 (or yarn, k8s://…) and download.processes=N, the
cluster's task slots (executors × cores): the per-site pacing divides by it.

Examples:
  python -m pipeline configs/pipeline/demo.yaml
  python -m pipeline configs/pipeline/laion400m.yaml output_dir=/data/shards spark.master=spark://m:7077
"""


def _run(config: PipelineConfig, _args) -> None:
    from pipeline.stage import run  # imported late: --help must not need Spark

    manifest = run(config)
    counts = copy.deepcopy(manifest["counts"])
    # the progress timeline is for the report's plot, not the console
    (counts.get("download", {}).get("run") or {}).pop("timeline", None)
    print(json.dumps(counts, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("python -m pipeline", HELP, "fetch.deadline_s=10")
    from pipeline.ingest import MetadataError
    from pipeline.stage import UrlListMismatchError

    run_stage(parser, PipelineConfig, _run, argv, user_errors=(MetadataError, UrlListMismatchError))


if __name__ == "__main__":  # img2dataset spawns processes: keep the entry point guarded
    main()
