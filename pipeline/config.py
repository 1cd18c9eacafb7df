"""The pipeline stage's config (``configs/pipeline/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DemoConfig:
    """The embedded default corpus, served over HTTP on loopback while the stage runs."""

    enabled: bool = False
    cache_dir: str = ".cache/demo_corpus"
    limit_per_source: int = 0  # 0 = the whole corpus; tests use a few per source
    fault_rates: dict[str, float] = field(default_factory=dict)  # see pipeline.demo.web.FaultRates
    hang_seconds: float = 12.0


@dataclass
class InputConfig:
    """Metadata in the LAION-400M parquet schema, or csv/jsonl with the same columns."""

    urls: list[str] = field(default_factory=list)  # files or folders, any fsspec URL
    format: str = "parquet"  # parquet | csv | json


@dataclass
class FilterConfig:
    """Rules on the metadata; 0 (or an empty list) turns a rule off."""

    min_caption_chars: int = 5
    max_caption_chars: int = 1000
    min_caption_words: int = 0
    max_caption_words: int = 0
    # From the metadata's WIDTH/HEIGHT; rows without a size pass (the downloader sees the truth).
    min_image_side: int = 0
    max_aspect_ratio: float = 0.0
    # LAION's NSFW tag; rows without a tag pass. Empty list: no NSFW rule.
    nsfw_allowed: list[str] = field(default_factory=list)
    # LAION's CLIP similarity; with a threshold set, rows without a valid value are dropped.
    min_similarity: float = 0.0


@dataclass
class DownloadConfig:
    image_size: int = 256
    resize_mode: str = "border"  # img2dataset: border | center_crop | keep_ratio | no
    samples_per_shard: int = 10000
    processes: int = 2  # Spark tasks at once
    threads: int = 64  # concurrent requests per task
    timeout: int = 10  # seconds per socket operation (img2dataset's semantics)
    retries: int = 0
    encode_quality: int = 95


@dataclass
class SparkConfig:
    master: str = "local[*]"
    driver_memory: str = "2g"
    app_name: str = "flip-pipeline"
    shuffle_partitions: int = 200  # Spark's default; a small corpus wants a handful


@dataclass
class PipelineConfig:
    output_dir: str = "runs/shards"
    input: InputConfig = field(default_factory=InputConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
