"""Evaluation: metrics as pure functions, datasets, and the stage on a real tiny checkpoint."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluation import datasets, metrics
from evaluation.config import EvalConfig, TaskConfig
from flipcommon.errors import UserError


def test_classification_metrics_by_hand():
    logits = torch.tensor(
        [[3.0, 1, 0, 0, 0, 0], [0, 3.0, 1, 0, 0, 0], [3.0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 3.0]]
    )
    labels = torch.tensor([0, 2, 5, 5])
    out = metrics.classification_metrics(logits, labels)
    assert out["top1"] == pytest.approx(0.5)
    assert out["top5"] == pytest.approx(1.0)
    # class 0: 1/1, class 2: 0/1, class 5: 1/2
    assert out["mean_per_class_recall"] == pytest.approx((1 + 0 + 0.5) / 3)


def test_top5_absent_below_five_classes():
    out = metrics.classification_metrics(torch.eye(3), torch.arange(3))
    assert "top5" not in out and out["top1"] == 1.0


def test_class_embeddings_normalise_average_renormalise():
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    emb = metrics.class_embeddings([a])
    torch.testing.assert_close(emb[0], F.normalize(torch.tensor([1.0, 1.0]), dim=0))


def test_retrieval_metrics_with_several_captions_per_image():
    images = torch.eye(3)
    # captions 0,1 → image 0; caption 2 → image 1; caption 3 → image 2 (but looks like image 0)
    texts = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [1.0, 0, 0.5]])
    texts = F.normalize(texts, dim=-1)
    out = metrics.retrieval_metrics(images, texts, torch.tensor([0, 0, 1, 2]), ks=(1, 2))
    assert out["image_retrieval_recall@1"] == pytest.approx(3 / 4)
    assert out["image_retrieval_recall@2"] == pytest.approx(1.0)
    # image 0's best caption is 0 or 3 (tie-free here: caption 0) → hit; image 1 → caption 2;
    # image 2 → caption 3 → hit.
    assert out["text_retrieval_recall@1"] == pytest.approx(1.0)


def test_chance_levels():
    assert metrics.chance_level("zeroshot_classification", "top1", num_classes=10) == 0.1
    assert metrics.chance_level("zeroshot_classification", "top5", num_classes=10) == 0.5
    assert metrics.chance_level(
        "retrieval", "image_retrieval_recall@10", num_images=100, num_texts=100
    ) == pytest.approx(0.1)
    assert metrics.chance_level(
        "retrieval", "text_retrieval_recall@1", num_images=100, num_texts=100
    ) == pytest.approx(0.01)
    assert metrics.beats_chance(0.2, 0.1, 1000) and not metrics.beats_chance(0.11, 0.1, 1000)


def test_builtin_datasets_load():
    fashion = datasets.fashion_mnist("test", limit=50)
    assert len(fashion.images) == 50 and fashion.images[0].size == (28, 28)
    assert fashion.labels.max() < 10 and len(fashion.classnames) == 10
    animals = datasets.animal_mnist(limit=200)
    assert len(np.unique(animals.labels)) == 10
    tux = datasets.tuxpaint(limit=20)
    assert len(tux.images) == len(tux.captions) == 20 and all(tux.captions)


def test_missing_dataset_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path / "nope")
    with pytest.raises(datasets.DatasetMissing, match="dataset-fashion-mnist"):
        datasets.fashion_mnist("test")
    with pytest.raises(datasets.DatasetMissing, match="make shards"):
        datasets.heldout_retrieval(str(tmp_path), "emoji_heldout")


def test_held_out_concepts_are_the_corpus_items_never_trained_on(demo_corpus_dir, tmp_path):
    import pandas as pd

    items = pd.read_parquet(demo_corpus_dir / "items.parquet")
    held = items[items["split"] == "concept_heldout"]
    assert len(held) and not set(held["concept"]) & set(items[items["split"] == "train"]["concept"])
    names = datasets.heldout_classification(str(demo_corpus_dir), "concepts_heldout", "name")
    texts = datasets.heldout_retrieval(str(demo_corpus_dir), "concepts_heldout")
    kept = held[~held["name"].str.contains("skin tone")]
    assert len(names.images) == len(texts.images) == len(kept)
    assert sorted(names.classnames) == sorted(set(kept["name"].str.lower()))
    assert sorted(texts.captions) == sorted(kept["caption"])
    # a corpus rendered before concepts were held out says what to do
    items[items["split"] != "concept_heldout"].to_parquet(tmp_path / "items.parquet")
    with pytest.raises(datasets.DatasetMissing, match="older version"):
        datasets.heldout_retrieval(str(tmp_path), "concepts_heldout")


def _suite(limit: int) -> list[TaskConfig]:
    return [
        TaskConfig(
            "emoji/name",
            "emoji_heldout",
            "zeroshot_classification",
            label="name",
            templates=["{c}, emoji"],
            limit=limit,
        ),
        TaskConfig("emoji/retrieval", "emoji_heldout", "retrieval", limit=limit),
        TaskConfig(
            "fashion",
            "fashion_mnist",
            "zeroshot_classification",
            limit=limit,
            templates=["{c}", "a photo of a {c}"],
        ),
        TaskConfig("tux", "tuxpaint", "retrieval", limit=limit),
    ]


def test_eval_stage_on_a_trained_checkpoint(micro_run, demo_corpus_dir, tmp_path, capsys):
    from evaluation.stage import run

    config = EvalConfig(
        train_run_dir=str(micro_run),
        output_dir=str(tmp_path / "eval"),
        demo_corpus_dir=str(demo_corpus_dir),
        tasks=_suite(30),
        device="cpu",
    )
    records = run(config)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [r["task_name"] for r in results["results"]] == [
        "emoji/name",
        "emoji/retrieval",
        "fashion",
        "tux",
    ]
    for record in records:
        for metric, value in record["metrics"].items():
            assert 0.0 <= value <= 1.0 and 0.0 < record["chance"][metric] <= 1.0
    assert results["models"][-1]["checkpoint"].endswith("step_00000006")
    assert all(r["model"]["samples_seen"] == 48 for r in results["results"])
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "<img" in page
    # each retrieval task shows 3 captions with their top 5 images; results.json stays lean
    retrieval = [r for r in records if r["task"] == "retrieval"]
    assert page.count('alt="retrieved"') == 15 * len(retrieval) > 0
    assert all("examples" not in r for r in results["results"])
    assert "chance %" in capsys.readouterr().out
    assert "| fashion | top1 |" in (tmp_path / "eval" / "report.md").read_text()

    # CLIP_benchmark's own aggregation reads the per-task files written beside results.json
    import csv
    import subprocess
    import sys
    from pathlib import Path

    build = Path(sys.executable).parent / "clip_benchmark"
    table = tmp_path / "benchmark.csv"
    folder = tmp_path / "eval" / "clip_benchmark"
    subprocess.run([str(build), "build", str(folder), "--output", str(table)], check=True)
    rows = {row["dataset"]: row for row in csv.DictReader(table.open())}
    assert sorted(rows) == ["emoji/name", "emoji/retrieval", "fashion", "tux"]
    fashion = next(r for r in records if r["task_name"] == "fashion")
    assert float(rows["fashion"]["acc1"]) == fashion["metrics"]["top1"]
    assert rows["fashion"]["task"] == "zeroshot_classification"
    tux = next(r for r in records if r["task_name"] == "tux")
    assert rows["tux"]["task"] == "zeroshot_retrieval"
    recall = tux["metrics"]["image_retrieval_recall@5"]
    assert float(rows["tux"]["image_retrieval_recall@5"]) == recall
    assert rows["tux"]["model_fullname"].startswith("flip_micro ")


def test_linear_probe_metrics_take_clip_benchmarks_names():
    from evaluation.clip_benchmark_results import clip_benchmark_record

    record = {
        "model": {"checkpoint": "runs/x/checkpoints/step_1", "model_name": "flip_tiny"},
        "task_name": "fashion/probe",
        "dataset": "fashion_mnist",
        "task": "linear_probe",
        "metrics": {"top1": 0.7, "top5": 0.9, "mean_per_class_recall": 0.69},
    }
    converted = clip_benchmark_record(record)
    assert converted["task"] == "linear_probe" and converted["model"] == "flip_tiny"
    assert converted["metrics"] == {
        "lp_acc1": 0.7,
        "lp_acc5": 0.9,
        "lp_mean_per_class_recall": 0.69,
    }


def test_one_class_dataset_is_a_clear_error(micro_run, demo_corpus_dir, tmp_path):
    from evaluation.stage import run

    task = TaskConfig("one", "emoji_heldout", "zeroshot_classification", label="group", limit=1)
    config = EvalConfig(
        train_run_dir=str(micro_run),
        output_dir=str(tmp_path),
        demo_corpus_dir=str(demo_corpus_dir),
        tasks=[task],
        device="cpu",
    )
    with pytest.raises(UserError, match="at least 2 classes"):
        run(config)


def test_no_checkpoint_is_a_clear_error(tmp_path):
    from evaluation.stage import run
    from flipcommon.checkpoints import CheckpointError

    config = EvalConfig(train_run_dir=str(tmp_path), tasks=_suite(5))
    with pytest.raises(CheckpointError, match="make train"):
        run(config)


def test_every_checkpoint_of_a_run_gives_a_comparison(micro_run, demo_corpus_dir, tmp_path):
    from evaluation.stage import run

    tasks = [TaskConfig("tux", "tuxpaint", "retrieval", limit=20)]
    config = EvalConfig(
        train_run_dir=str(micro_run),
        output_dir=str(tmp_path),
        tasks=tasks,
        demo_corpus_dir=str(demo_corpus_dir),
        every_checkpoint=True,
        device="cpu",
    )
    records = run(config)
    assert [r["model"]["samples_seen"] for r in records] == [32, 48]
    report = (tmp_path / "report.md").read_text()
    assert "Comparison across checkpoints" in report
    assert "step_00000004 (32 samples)" in report and "step_00000006 (48 samples)" in report
    page = (tmp_path / "report.html").read_text()
    assert page.count("<img") - page.count('alt="retrieved"') == 2  # the two plots


def test_array_task_evaluates_its_own_checkpoint(micro_run, demo_corpus_dir, tmp_path, monkeypatch):
    from evaluation.stage import run

    config = EvalConfig(
        train_run_dir=str(micro_run),
        output_dir=str(tmp_path),
        tasks=[TaskConfig("tux", "tuxpaint", "retrieval", limit=10)],
        demo_corpus_dir=str(demo_corpus_dir),
        every_checkpoint=True,
        array_index_env="TEST_ARRAY_INDEX",
        device="cpu",
    )
    monkeypatch.setenv("TEST_ARRAY_INDEX", "1")
    records = run(config)
    assert [r["model"]["samples_seen"] for r in records] == [48]
    assert (tmp_path / "0001" / "results.json").exists()
    monkeypatch.setenv("TEST_ARRAY_INDEX", "2")
    config.output_dir = str(tmp_path)
    with pytest.raises(UserError, match="only 2 checkpoint"):
        run(config)


def test_any_open_clip_model_with_local_weights(micro_run, demo_corpus_dir, tmp_path):
    """The same weights through plain open_clip and through our checkpoint give equal figures."""
    from evaluation.stage import run
    from flipcommon.checkpoints import latest_checkpoint

    ckpt_dir = latest_checkpoint(str(micro_run))
    tasks = [TaskConfig("tux", "tuxpaint", "retrieval", limit=20)]
    ours = run(
        EvalConfig(
            checkpoint=ckpt_dir,
            output_dir=str(tmp_path / "a"),
            tasks=tasks,
            demo_corpus_dir=str(demo_corpus_dir),
            device="cpu",
        )
    )
    plain = run(
        EvalConfig(
            open_clip_model="micro-as-plain-open-clip",
            open_clip_config=f"{ckpt_dir}/open_clip_config.json",
            open_clip_weights=f"{ckpt_dir}/open_clip_model.safetensors",
            output_dir=str(tmp_path / "b"),
            tasks=tasks,
            demo_corpus_dir=str(demo_corpus_dir),
            device="cpu",
        )
    )
    assert plain[0]["metrics"] == ours[0]["metrics"]
    assert plain[0]["model"]["checkpoint"].startswith("open_clip:micro-as-plain-open-clip@")


def test_open_clip_model_without_weights_is_refused(tmp_path):
    from evaluation.stage import run
    from flipcommon.checkpoints import CheckpointError

    config = EvalConfig(open_clip_model="ViT-B-32", output_dir=str(tmp_path), tasks=_suite(5))
    with pytest.raises(CheckpointError, match="nothing is downloaded"):
        run(config)


def test_tasks_over_the_same_images_share_their_features(
    micro_run, demo_corpus_dir, tmp_path, monkeypatch
):
    from evaluation import tasks
    from evaluation.stage import run

    calls = []
    original = tasks.image_features

    def counting(model, images, *args, **kwargs):
        calls.append(len(images))
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(tasks, "image_features", counting)
    suite = [
        TaskConfig("name", "emoji_heldout", "zeroshot_classification", label="name", limit=30),
        TaskConfig(
            "name-2",
            "emoji_heldout",
            "zeroshot_classification",
            label="name",
            limit=30,
            templates=["{c}"],
        ),
        TaskConfig("retrieval", "emoji_heldout", "retrieval", limit=30),
    ]
    run(
        EvalConfig(
            train_run_dir=str(micro_run),
            output_dir=str(tmp_path),
            tasks=suite,
            demo_corpus_dir=str(demo_corpus_dir),
            device="cpu",
        )
    )
    assert calls == [30]


def _truncated_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    noise = torch.randint(0, 255, (30, 40, 3), dtype=torch.uint8).numpy()
    Image.fromarray(noise).save(buffer, "PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def test_loader_workers_give_the_same_features_and_skips():
    """The configured loader workers are used, and change nothing but the speed."""
    import io

    import open_clip
    from PIL import Image

    from evaluation.features import image_features
    from training.model import build_model, preprocess_cfg

    torch.manual_seed(0)
    model, _, _ = build_model("flip_micro")
    model.eval()
    preprocess = open_clip.image_transform(preprocess_cfg(model)["size"], is_train=False)
    good = [Image.new("RGB", (40, 30), (i * 20, 50, 200 - i * 10)) for i in range(9)]
    broken = Image.open(io.BytesIO(_truncated_png()))  # opens; fails when decoded
    images = good[:4] + [broken] + good[4:]
    plain, skipped = image_features(model, images, preprocess, "cpu", 4, "w0", workers=0)
    parallel, skipped_too = image_features(model, images, preprocess, "cpu", 4, "w2", workers=2)
    assert skipped == skipped_too == [4]
    torch.testing.assert_close(parallel, plain)
