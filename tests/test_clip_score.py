"""The CLIP-score filter on a real shard set with one of our checkpoints: clip-retrieval's
embedding layout, the selection rule, and a resharded set whose counts reconcile."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from flipcommon.checkpoints import latest_checkpoint
from pipeline.clip_score import plan_reshard, run_clip_score, threshold_for_top_percent
from pipeline.config import ClipScoreConfig


def _keys(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return [m.name.split(".")[0] for m in tar if m.name.endswith(".jpg")]


def test_plan_reshard_cuts_in_source_order():
    jobs = plan_reshard([("00000", 5), ("00001", 0), ("00002", 4)], 4)
    assert jobs == [
        (0, [("00000", 0, 4)]),
        (1, [("00000", 4, 5), ("00002", 0, 3)]),
        (2, [("00002", 3, 4)]),
    ]


def test_top_percent_threshold_keeps_at_most_that_share():
    scores = np.random.default_rng(0).uniform(-0.2, 0.6, 10_000)
    histogram = np.histogram(scores, bins=20_000, range=(-1, 1))[0]
    threshold = threshold_for_top_percent(histogram, 30)
    kept = (scores >= threshold).mean()
    assert 0.299 <= kept <= 0.30


@pytest.fixture(scope="module")
def filtered(tmp_path_factory, spark, shard_set, micro_run):
    out = tmp_path_factory.mktemp("clip") / "shards-clip"
    config = ClipScoreConfig(
        enabled=True,
        checkpoint=latest_checkpoint(str(micro_run)),
        top_percent=50,
        output_dir=str(out),
        samples_per_shard=7,
        batch_size=8,
    )
    return config, run_clip_score(spark, str(shard_set), config)


def test_embeddings_in_clip_retrieval_layout(filtered, shard_set):
    config, _ = filtered
    root = Path(config.output_dir) / "embeddings"
    for stats in sorted(shard_set.glob("*_stats.json")):
        shard = stats.name.removesuffix("_stats.json")
        n = json.loads(stats.read_text())["successes"]
        img = np.load(root / "img_emb" / f"img_emb_{shard}.npy")
        txt = np.load(root / "text_emb" / f"text_emb_{shard}.npy")
        meta = pd.read_parquet(root / "metadata" / f"metadata_{shard}.parquet")
        assert img.dtype == txt.dtype == np.float16 and img.shape == txt.shape == (n, img.shape[1])
        assert np.allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1, atol=1e-2)
        assert list(meta.columns) == ["image_path", "caption", "key", "url", "similarity"]
        assert meta["key"].tolist() == _keys(shard_set / f"{shard}.tar")
        cosine = (img.astype(np.float32) * txt.astype(np.float32)).sum(1)
        assert np.allclose(cosine, meta["similarity"], atol=2e-2)


def test_similarity_matches_the_model_run_directly(filtered, shard_set):
    """An independent check: the score of one sample, computed here with the checkpoint."""
    from flipcommon.checkpoints import load_model

    config, _ = filtered
    model, preprocess, tokenizer, _ = load_model(config.checkpoint)
    shard = sorted(shard_set.glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        key = names[0].split(".")[0]
        image = Image.open(io.BytesIO(tar.extractfile(f"{key}.jpg").read())).convert("RGB")
        caption = tar.extractfile(f"{key}.txt").read().decode()
    with torch.no_grad():
        a = model.encode_image(preprocess(image)[None], normalize=True)
        b = model.encode_text(tokenizer([caption]), normalize=True)
    expected = float((a * b).sum())
    meta = pd.read_parquet(
        Path(config.output_dir) / "embeddings" / "metadata" / f"metadata_{shard.stem}.parquet"
    )
    assert meta.set_index("key").loc[key, "similarity"] == pytest.approx(expected, abs=1e-4)


def test_filtered_set_keeps_the_top_half_with_original_keys(filtered, shard_set):
    config, manifest = filtered
    out = Path(config.output_dir)
    meta = pd.concat(
        pd.read_parquet(p) for p in sorted((out / "embeddings" / "metadata").glob("*.parquet"))
    )
    threshold = manifest["parameters"]["threshold"]
    expected = meta.loc[meta["similarity"] >= threshold, "key"].tolist()
    kept = [k for t in sorted(out.glob("*.tar")) for k in _keys(t)]
    assert kept == expected  # source order, original keys
    counts = manifest["counts"]
    assert counts["rows_in"] == len(meta) == counts["kept"] + counts["clip_score_dropped"]
    assert 0.4 * len(meta) <= counts["kept"] <= 0.5 * len(meta)
    # the same manifest shape as the pipeline's own: its source, when and by which code
    source = json.loads((Path(shard_set) / "manifest.json").read_text())
    assert manifest["sources"] == [str(shard_set)] and manifest["created_at"]
    assert {k for k in source if k != "parameters"} <= set(manifest)
    sizes = json.loads((out / "sizes.json").read_text())
    assert sum(sizes.values()) == counts["kept"] and max(sizes.values()) <= 7
    with tarfile.open(sorted(out.glob("*.tar"))[0]) as tar:
        first = tar.getnames()[0].split(".")[0]
        sample = json.loads(tar.extractfile(f"{first}.json").read())
        assert {"url", "caption", "sha256", "status"} <= set(sample)


def test_rerun_is_a_no_op(filtered, spark, shard_set):
    config, manifest = filtered
    tars = {p.name: p.stat().st_mtime_ns for p in Path(config.output_dir).glob("*.tar")}
    assert run_clip_score(spark, str(shard_set), config) == manifest
    assert {p.name: p.stat().st_mtime_ns for p in Path(config.output_dir).glob("*.tar")} == tars


def test_pipeline_stage_runs_the_filter_into_its_default_folder(
    spark, shard_set, micro_run, demo_corpus_dir, tmp_path
):
    """The stage's wiring: a finished shard set is kept, the filter writes "<output_dir>-clip",
    and the caller's config is left as given."""
    import shutil

    from pipeline.stage import run
    from tests.conftest import small_pipeline_config

    shards = tmp_path / "shards"
    shutil.copytree(shard_set, shards)
    config = small_pipeline_config(str(shards), demo_corpus_dir)
    config.clip_score = ClipScoreConfig(
        enabled=True, checkpoint=latest_checkpoint(str(micro_run)), min_similarity=-1.0
    )
    manifest = run(config, spark)
    assert manifest == json.loads((shard_set / "manifest.json").read_text())
    sizes = json.loads((tmp_path / "shards-clip" / "sizes.json").read_text())
    assert sum(sizes.values()) == manifest["counts"]["kept"]  # similarity >= -1 keeps all
    assert config.clip_score.output_dir == ""


def test_clip_retrieval_indexes_what_we_write(filtered, tmp_path):
    """clip-retrieval's own indexer (`clip-retrieval index`, autofaiss) reads the filter's
    embeddings as they are: one vector per sample, each image found as its own nearest
    neighbour, and the metadata copied beside the index in the vectors' order. (faiss runs in
    subprocesses: its OpenMP runtime would change this process's threading for later tests.)"""
    import subprocess
    import sys

    config, _ = filtered
    embeddings = Path(config.output_dir) / "embeddings"
    index = tmp_path / "index"
    tool = Path(sys.executable).parent / "clip-retrieval"
    built = subprocess.run(
        [str(tool), "index", str(embeddings), str(index), "--nb_cores", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    images = np.concatenate(
        [np.load(p) for p in sorted((embeddings / "img_emb").glob("*.npy"))]
    ).astype(np.float32)
    np.save(tmp_path / "queries.npy", images[:5])
    search = (
        "import faiss, json, numpy as np, sys\n"
        "image = faiss.read_index(sys.argv[1] + '/image.index')\n"
        "text = faiss.read_index(sys.argv[1] + '/text.index')\n"
        "_, found = image.search(np.load(sys.argv[2]), 1)\n"
        "print(json.dumps([image.ntotal, text.ntotal, found[:, 0].tolist()]))\n"
    )
    answer = subprocess.run(
        [sys.executable, "-c", search, str(index), str(tmp_path / "queries.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]
    image_total, text_total, nearest = json.loads(answer.stdout.strip().splitlines()[-1])
    assert image_total == text_total == len(images)
    assert np.allclose(images[nearest], images[:5], atol=1e-3)  # itself, or an identical image
    ours = pd.concat(
        [pd.read_parquet(p) for p in sorted((embeddings / "metadata").glob("*.parquet"))]
    )
    assert pd.read_parquet(index / "metadata")["key"].tolist() == ours["key"].tolist()


def test_a_filter_without_exactly_one_rule_is_refused_before_any_work(tmp_path):
    """Each field's range and choices are the config loader's (tests/test_config_errors.py);
    the rule across fields is checked by the stage before Spark starts or anything is built."""
    from flipcommon.config import load_config
    from flipcommon.errors import UserError
    from pipeline.config import PipelineConfig
    from pipeline.stage import run

    demo = Path(__file__).parent.parent / "configs/pipeline/demo.yaml"
    for rules in ([], ["clip_score.min_similarity=0.3", "clip_score.top_percent=50"]):
        overrides = [f"output_dir={tmp_path}/shards", "clip_score.enabled=true", *rules]
        config = load_config(PipelineConfig, demo, [*overrides, "clip_score.checkpoint=x"])
        with pytest.raises(UserError, match="exactly one of min_similarity or top_percent"):
            run(config)
    assert not (tmp_path / "shards").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_task_cpus_benchmark_runs_at_toy_size(tmp_path):
    """``benchmarks/clip_score_task_cpus.py`` with a small architecture and two tiny shards, so
    it cannot rot (its figures: docs/benchmarks.md)."""
    import subprocess
    import sys

    figures_file = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/clip_score_task_cpus.py",
            "--model=ViT-S-32",
            "--shards=2",
            "--samples-per-shard=8",
            "--batch=4",
            "--rounds=1",
            f"--json={figures_file}",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    figures = json.loads(figures_file.read_text())
    assert figures["processes"] == {"model per core": 2, "model per executor": 1}
    assert all(rate > 0 for rate in figures["samples_per_s"].values())
