"""The evaluation stage's config (``configs/eval/*.yaml``): a checkpoint and a suite of tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from flipcommon.config import Range


@dataclass
class TaskConfig:
    name: str = ""  # a label for the results table, e.g. "fashion_mnist/zeroshot"
    # built in: fashion_mnist | animal_mnist | tuxpaint | emoji_heldout | concepts_heldout
    # (the last two are held out of the demo corpus: the Noto emoji style, and whole concepts)
    # on disk (set path): image_folder | clip_benchmark_wds | shard_set (tar URLs, comma-separated)
    dataset: Literal[
        "",
        "fashion_mnist",
        "animal_mnist",
        "tuxpaint",
        "emoji_heldout",
        "concepts_heldout",
        "image_folder",
        "clip_benchmark_wds",
        "shard_set",
    ] = ""
    task: Literal["zeroshot_classification", "retrieval", "linear_probe"] = (
        "zeroshot_classification"
    )
    split: str = "test"
    train_split: str = "train"  # linear_probe: where the probe is fitted
    train_limit: int = 0  # linear_probe: 0 = the whole training split
    label: Literal["name", "group"] = "name"  # emoji_heldout, concepts_heldout classification
    # prompt templates with {c}; "@clip_benchmark:imagenet1k" expands to a set clip_benchmark
    # ships (CLIP's 80 ImageNet prompts), "@imagenet7" to CLIP's 7-prompt ensemble subset;
    # empty: the dataset's own templates, else "{c}"
    templates: list[str] = field(default_factory=list)
    limit: int = 0  # 0 = whole split; a positive number evaluates the first N samples
    path: str = ""  # where an on-disk dataset lives (any fsspec URL)


@dataclass
class EvalConfig:
    checkpoint: str = ""  # a checkpoint folder (any fsspec URL); empty = newest of train_run_dir
    checkpoints: list[str] = field(default_factory=list)  # several (runs or steps) to compare
    every_checkpoint: bool = False  # all checkpoints of train_run_dir: metric vs samples seen
    # Array jobs: evaluate only the checkpoint at this index of the list above (written under
    # output_dir/NNNN). The index comes from the environment variable named here, as batch
    # systems set it: AWS_BATCH_JOB_ARRAY_INDEX, JOB_COMPLETION_INDEX (Kubernetes),
    # SLURM_ARRAY_TASK_ID.
    array_index_env: str = ""
    # Any open_clip model instead of our checkpoints: a model name (registered by open_clip, or
    # defined by open_clip_config, a JSON model config) and a local weights file.
    open_clip_model: str = ""
    open_clip_weights: str = ""
    open_clip_config: str = ""
    train_run_dir: str = "runs/demo/train"
    output_dir: str = "runs/demo/eval"
    demo_corpus_dir: str = ".cache/demo_corpus"  # where the held-out emoji set was rendered
    batch_size: Annotated[int, Range(1)] = 256
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = 2  # loader processes decoding and preprocessing images
    tasks: list[TaskConfig] = field(default_factory=list)
