"""Contracts against the peers themselves: open_clip's own loader and model factory."""

import argparse
import json

import open_clip
import torch
from PIL import Image


def test_open_clip_training_loader_reads_our_shards(shard_set):
    from open_clip_train.data import get_wds_dataset

    sizes = json.loads((shard_set / "sizes.json").read_text())
    names = sorted(sizes)
    pattern = str(shard_set / f"{{{names[0][:5]}..{names[-1][:5]}}}.tar")
    args = argparse.Namespace(
        train_data=pattern,
        val_data=None,
        train_num_samples=sum(sizes.values()),
        train_data_upsampling_factors=None,
        dataset_resampled=False,
        seed=0,
        batch_size=4,
        workers=1,
        world_size=1,
        distributed=False,
    )
    preprocess = open_clip.image_transform(32, is_train=True)
    tokenizer = open_clip.get_tokenizer("RN50")  # open_clip's default BPE tokenizer, 77 tokens
    data = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer)
    images, texts = next(iter(data.dataloader))
    assert images.shape == (4, 3, 32, 32)
    assert texts.shape == (4, 77)


def test_open_clip_loads_our_checkpoint_with_the_same_embeddings(micro_run):
    from flipcommon.checkpoints import latest_checkpoint, load_model

    ckpt_dir = latest_checkpoint(str(micro_run))
    ours, preprocess, tokenizer, _ = load_model(ckpt_dir)

    # Plain open_clip: register the config from the checkpoint, weights as `pretrained`.
    config = json.loads(
        (
            micro_run / "checkpoints" / ckpt_dir.rsplit("/", 1)[1] / "open_clip_config.json"
        ).read_text()
    )
    cfg_path = micro_run / "plain-open-clip-micro.json"
    cfg_path.write_text(json.dumps(config["model_cfg"]))
    open_clip.add_model_config(cfg_path)
    theirs, _, their_preprocess = open_clip.create_model_and_transforms(
        "plain-open-clip-micro", pretrained=f"{ckpt_dir}/open_clip_model.safetensors"
    )
    theirs.eval()
    image = Image.new("RGB", (50, 40), (200, 30, 30))
    texts = ["a red square", "a dog"]
    with torch.no_grad():
        ours_img = ours.encode_image(preprocess(image)[None])
        theirs_img = theirs.encode_image(their_preprocess(image)[None])
        ours_txt = ours.encode_text(tokenizer(texts))
        theirs_txt = theirs.encode_text(open_clip.get_tokenizer("plain-open-clip-micro")(texts))
    torch.testing.assert_close(ours_img, theirs_img)
    torch.testing.assert_close(ours_txt, theirs_txt)


def test_the_pipeline_reads_checkpoints_and_shard_sets_without_training_or_evaluation(
    micro_run, shard_set
):
    """The contracts live in flipcommon: a pipeline image (the CLIP-score filter loads a
    checkpoint, the stage reads a shard set's manifest) needs neither training nor evaluation."""
    import subprocess
    import sys

    from flipcommon.checkpoints import latest_checkpoint

    code = (
        "import sys\n"
        "from flipcommon.checkpoints import load_model\n"
        "from flipcommon.shard_set import read_manifest, read_sizes\n"
        "import pipeline.clip_score, pipeline.stage\n"
        f"model, _, _, config = load_model({latest_checkpoint(str(micro_run))!r})\n"
        f"assert read_manifest({str(shard_set)!r})['counts'] and read_sizes({str(shard_set)!r})\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'training', 'evaluation'})\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
