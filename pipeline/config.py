"""The pipeline stage's config (``configs/pipeline/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from flipcommon.config import Check, Range

POSITIVE = Range(0, low_open=True)


def ip_network(value: str) -> None:
    import ipaddress

    ipaddress.ip_network(value, strict=False)


def origin(value: str) -> None:
    from pipeline.fetch import parse_origin

    parse_origin(value)


def fault_rates(rates: dict) -> None:
    from pipeline.demo.web import FaultRates

    FaultRates(**rates)  # an unknown kind is a TypeError


def model_spec(spec: str) -> None:
    """Our checkpoint folder, or ``open_clip:NAME@WEIGHTS``: without weights open_clip would
    build a model with random weights and the filter would score with it."""
    if spec.startswith("open_clip:"):
        name, _, weights = spec.removeprefix("open_clip:").partition("@")
        if not name or not weights:
            raise ValueError("open_clip models need local weights: open_clip:NAME@/path/file")


@dataclass
class DemoConfig:
    """The embedded default corpus, served over HTTP on loopback while the stage runs."""

    enabled: bool = False
    cache_dir: str = ".cache/demo_corpus"
    limit_per_source: int = 0  # 0 = the whole corpus; tests use a few per source
    fault_rates: Annotated[dict[str, float], Check(fault_rates, "fault rates")] = field(
        default_factory=dict
    )  # see pipeline.demo.web.FaultRates
    hang_seconds: float = 12.0


@dataclass
class InputConfig:
    """Metadata files: LAION-400M's parquet schema by default; other datasets by ``preset``
    or by naming their format and columns (``pipeline.ingest.PRESETS``)."""

    urls: list[str] = field(default_factory=list)  # files or folders, any fsspec URL
    # laion400m, laion5b, datacomp, coyo700m, cc12m, cc3m: their format and columns (then
    # leave format, url_col, caption_col and columns as they are)
    preset: Literal["laion400m", "laion5b", "datacomp", "coyo700m", "cc12m", "cc3m"] | None = None
    format: Literal["parquet", "csv", "tsv", "json", "jsonl"] = "parquet"  # json: JSON lines
    url_col: str = "URL"  # the image URL's column (case-insensitive)
    caption_col: str = "TEXT"  # the caption's
    # csv/tsv files without a header row: their columns' names, in order ([url, caption])
    columns: list[str] = field(default_factory=list)
    # auto: Spark's own reader where it needs no extra jars (local, hdfs, s3a with hadoop-aws),
    # else fsspec on the executors (s3://, gs://, …). Or force "spark" / "fsspec".
    reader: Literal["auto", "spark", "fsspec"] = "auto"
    # More of the metadata's columns to carry into every sample's JSON and the shard's parquet,
    # e.g. [punsafe, pwatermark] (LAION-5B) or [uid, face_bboxes] (DataComp). Lists, maps and
    # structs arrive as JSON text, bytes as base64, NaN as null; what the fsspec reader reads
    # (any fsspec URL) arrives as text.
    save_additional_columns: list[str] = field(default_factory=list)


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
    min_similarity: Annotated[float, Range(-1, 1)] = 0.0
    # ISO 639-1 codes to keep (e.g. [en]). The metadata's LANGUAGE column is used where present
    # (LAION-2B-multi has one); rows without it get the caption's detected language
    # (langid, ~1,000 captions/s/core) unless detect_language is false, in which case they pass.
    languages: list[str] = field(default_factory=list)
    detect_language: bool = True
    # LAION-5B's probabilities that the image is unsafe / watermarked: rows above the threshold
    # are dropped, rows without a value pass (LAION-5B's own release used 0.5 for both). 0: off.
    max_punsafe: Annotated[float, Range(0, 1)] = 0.0
    max_pwatermark: Annotated[float, Range(0, 1)] = 0.0


@dataclass
class FetchConfig:
    """How each URL is fetched (``pipeline.fetch``): bounded, polite, and never inward."""

    # Wall clock per attempt, every phase included: DNS, connect, TLS, headers, body, redirects.
    deadline_s: Annotated[float, POSITIVE] = 20.0
    socket_timeout_s: Annotated[float, POSITIVE] = 10.0  # per socket operation, within the deadline
    max_bytes: Annotated[int, Range(1)] = 32 * 1024 * 1024
    # Extra attempts within the task on 408/429/5xx and transport errors. 0: the final pass
    # (download.retry_pass), hours later, is the retry: a dead host then holds a thread for one
    # deadline, not three, and a flaky site has had time to recover.
    retries: int = 0
    backoff_base_s: float = 1.0  # doubles per attempt, jittered, capped at backoff_max_s
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 60.0  # a longer Retry-After leaves the URL to the final pass
    # Minimum gap between requests to one site (registrable domain) from the whole cluster;
    # each task paces a site by this × the site's shard spread (pipeline.domains). 0: off.
    per_domain_interval_s: float = 0.0
    # A site that many tasks share is paced this much slower than its share of the interval,
    # so the nodes' clocks disagreeing by ~1 ms (NTP) never put the cluster above one request
    # per interval in a 1-s window (the download simulation). Raise it where clocks drift more.
    shared_site_headroom: Annotated[float, Range(0.0, 1.0)] = 0.01
    max_redirects: Annotated[int, Range(0)] = 5
    # Networks exempt from the SSRF guard (CIDRs). Empty: only public addresses are fetched.
    allowed_networks: list[Annotated[str, Check(ip_network, "a CIDR")]] = field(
        default_factory=list
    )
    # Origins exempt from it by name (http://127.0.0.1:8000): exactly that scheme, host and
    # port, whatever the host resolves to. The demo adds its own server here at run time.
    allowed_origins: list[Annotated[str, Check(origin, "an origin like http://host:port")]] = field(
        default_factory=list
    )
    ca_file: str = ""  # extra CA certificates (PEM) to trust, beside the system's
    dns_cache_s: float = 300.0  # how long a host's resolved addresses are reused, per task
    dns_negative_cache_s: float = 60.0  # how long a failed lookup's answer is reused, per task
    user_agent_token: str = "flip-pipeline"
    # X-Robots-Tag directives (for all agents or for user_agent_token) that keep an image out
    disallowed_directives: list[str] = field(
        default_factory=lambda: ["noai", "noimageai", "noml", "noindex", "noimageindex"]
    )
    # robots.txt (RFC 9309, pipeline.robots_txt): each site's rules fetched once per task and
    # obeyed for user_agent_token. A site whose robots.txt does not answer (5xx, 429, timeout)
    # is not fetched from; its URLs fail as retryable and the task asks again after
    # robots_txt_unreachable_s. The rules a task keeps are bounded by robots_txt_cache_bytes
    # (least recently used dropped first, fetched again if met again).
    robots_txt: bool = True
    robots_txt_max_bytes: Annotated[int, Range(1)] = 512 * 1024  # the standard asks >= 500 KiB
    robots_txt_cache_bytes: Annotated[int, Range(1)] = 64 * 1024 * 1024
    robots_txt_unreachable_s: Annotated[float, POSITIVE] = 300.0
    # TDM-Rep: a `tdm-reservation: 1` response header reserves text and data mining rights
    tdm_reservation: bool = True


@dataclass
class DownloadConfig:
    image_size: Annotated[int, Range(1)] = 256
    # img2dataset's modes
    resize_mode: Literal["border", "center_crop", "keep_ratio", "keep_ratio_largest", "no"] = (
        "border"
    )
    samples_per_shard: Annotated[int, Range(1)] = 10000
    processes: Annotated[int, Range(1)] = 2  # Spark tasks at once
    threads: Annotated[int, Range(1, 4096)] = 64  # concurrent requests per task
    # Bytes of response bodies a task holds at once (fetched, not yet written), at least twice
    # fetch.max_bytes (a compressed body beside its decoded copy). A body not yet begun waits
    # for room up to its attempt's deadline, one begun a second (then the URL fails as
    # retryable "waited for memory"). A task's memory at most (pipeline.task_memory) is logged
    # at the start of the stage.
    max_bytes_in_flight: Annotated[int, Range(1)] = 128 * 1024 * 1024
    encode_quality: Annotated[int, Range(0, 100)] = 95
    # decompression bombs: the pixels an image may have, read from its header before it is
    # decoded (25 Mpx: 5,000 x 5,000, far past what a 256-px sample needs); at most 2**27,
    # OpenCV's own limit as the pipeline sets it (a backstop, pipeline.OPENCV_PIXEL_BACKSTOP).
    # Decoding one costs up to 33 bytes per pixel (pipeline.task_memory).
    max_pixels: Annotated[int, Range(1, 1 << 27)] = 25_000_000
    # Images longer than this many times their width, or wider (0: any). keep_ratio and
    # center_crop also refuse what would pass max_pixels once its shorter side is scaled.
    max_aspect_ratio: Annotated[float, Range(0)] = 0.0
    # A metadata column of boxes to blur in each image (img2dataset's bbox_col; DataComp:
    # face_bboxes): [[x_min, y_min, x_max, y_max], ...] in [0, 1] of the image as stored,
    # blurred as img2dataset does on the resized image. The column is carried into each
    # sample; a value that is not such a list fails the sample ("bad blur boxes").
    bbox_col: str = ""
    # A shard task stops starting requests after this long; what is left fails as retryable,
    # so one pathological shard cannot hold a whole Spark job.
    shard_deadline_s: Annotated[float, POSITIVE] = 3600.0
    retry_pass: bool = True  # after all shards, re-fetch samples that failed retryably
    # A retryable failure (timeout, 5xx, a host that does not answer) is tried once more in
    # its own task this long after it failed, when the task has at least this long plus
    # fetch.deadline_s of work left anyway; a second retryable failure is then final, and
    # only the rest wait for the final pass. null: every one waits for the final pass.
    retry_in_task_after_s: Annotated[float, Range(0)] | None = 60.0
    # Each task publishes its counts this often; the driver prints the sum just as often.
    progress_interval_s: Annotated[float, POSITIVE] = 10.0


@dataclass
class DecontaminationConfig:
    """Evaluation images to keep out of the shards (``pipeline.decontaminate``)."""

    # Folders of images and/or webdataset tars, or single files; any fsspec URL. Empty: off.
    sources: list[str] = field(default_factory=list)
    max_distance: int = 4  # pHash bits that may differ for a "near copy"


@dataclass
class ClipScoreConfig:
    """Optional CLIP-score filter of the finished shard set (``pipeline.clip_score``)."""

    enabled: bool = False
    # Our checkpoint directory (any fsspec URL) or "open_clip:NAME@/local/weights.safetensors".
    checkpoint: Annotated[str, Check(model_spec, "a checkpoint or open_clip:NAME@WEIGHTS")] = ""
    min_similarity: Annotated[float, Range(-1, 1)] | None = None  # keep pairs with cosine >= this
    # … or keep the best this-many percent (set one)
    top_percent: Annotated[float, Range(0, 100, low_open=True)] | None = None
    output_dir: str = ""  # the filtered shard set; default: "<output_dir>-clip"
    samples_per_shard: Annotated[int, Range(1)] = 10000
    batch_size: Annotated[int, Range(1)] = 64
    # "cpu", or "cuda": each embedding task then takes one of its executor's GPUs (Spark GPU
    # scheduling: the executors are started with spark.executor.resource.gpu.* set).
    device: Literal["cpu", "cuda"] = "cpu"
    # Cores per embedding task, which holds one model and runs this many torch threads. 1: a
    # model per task slot (most images/s per core, a model's memory per core); the executor's
    # cores: one model per executor. Taken by this job alone (stage-level scheduling), not
    # by the download; in local mode every task slot runs one, whatever this says.
    task_cpus: Annotated[int, Range(1, 1024)] = 1


@dataclass
class SparkConfig:
    master: str = "local[*]"  # "" under spark-submit: use the --master it was given
    driver_memory: str = "2g"  # when we start Spark (master set); spark-submit: --driver-memory
    app_name: str = "flip-pipeline"
    # Spark's default; a small corpus wants a handful
    shuffle_partitions: Annotated[int, Range(1)] = 200
    conf: dict[str, str] = field(default_factory=dict)  # any other spark.* setting


@dataclass
class PipelineConfig:
    output_dir: str = "runs/shards"
    input: InputConfig = field(default_factory=InputConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    clip_score: ClipScoreConfig = field(default_factory=ClipScoreConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
