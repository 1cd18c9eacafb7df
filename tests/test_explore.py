"""`python -m explore`: clip-retrieval's own inference, autofaiss index and back end over a real
shard set with one of our checkpoints, queried through its bundled front end in Debian's
headless Chromium (driven by Selenium)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flipcommon.checkpoints import latest_checkpoint, load_model
from pipeline.shard_tars import read_tar_samples

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# the front end's results: each figure's image source and caption, inside its shadow DOM
FIGURES_JS = """
const app = document.querySelector('clip-front');
if (!app || !app.shadowRoot) return [];
return [...app.shadowRoot.querySelectorAll('figure')].map(f => [
  (f.querySelector('img.pic') || {}).src || '',
  ((f.querySelector('figcaption') || {}).textContent || '').trim()]);
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shard_samples(shards: Path) -> dict[str, str]:
    """key -> caption of every sample of the shard set."""
    samples = {}
    for tar in sorted(shards.glob("*.tar")):
        for key, parts in read_tar_samples(str(tar)).items():
            samples[key] = parts["txt"].decode()
    return samples


def _explore(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "explore", "configs/explore/demo.yaml", *overrides]


def _wait_until_serving(process: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-4000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/indices-list", timeout=2) as r:
                if json.loads(r.read()) == ["shards"]:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the back end did not start: " + log.read_text()[-4000:])


def _knn(port: int, text: str) -> list[dict]:
    query = {"text": text, "modality": "image", "indice_name": "shards", "num_images": 10}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/knn-service",
        data=json.dumps({**query, "num_result_ids": 10}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _browser_results(port: int, query: str, screenshot: Path) -> list[list[str]]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,900")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/?query={query.replace(' ', '+')}")
        figures: list[list[str]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            figures = [f for f in driver.execute_script(FIGURES_JS) if f[0]]
            if figures:
                break
            time.sleep(0.25)
        time.sleep(1)  # the rest of the first page of results
        figures = [f for f in driver.execute_script(FIGURES_JS) if f[0]]
        driver.save_screenshot(str(screenshot))
        return figures
    finally:
        driver.quit()


@pytest.mark.slow
@pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and shutil.which(CHROMEDRIVER)),
    reason="make test installs Debian's chromium and chromium-driver",
)
def test_a_text_query_in_the_browser_shows_images_of_the_shard_set(tmp_path, shard_set, micro_run):
    checkpoint = latest_checkpoint(str(micro_run))
    out, port, log = tmp_path / "explore", _free_port(), tmp_path / "explore.log"
    args = [f"shards={shard_set}", f"model={checkpoint}", f"out_dir={out}", f"port={port}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("w") as sink:
        server = subprocess.Popen(
            _explore(*args), cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        _wait_until_serving(server, port, log)
        samples = _shard_samples(shard_set)

        # the back end's own answer: samples of this shard set, each with its image inlined
        results = _knn(port, "a red apple")
        assert results
        for result in results:
            assert result["key"] in samples and result["caption"] == samples[result["key"]]
            assert Path(result["image_path"]) == out / "images" / f"{result['key']}.jpg"
            assert result["image"]  # base64 JPEG: the shard set's own pixels

        # the front end, in a real browser: the same kind of results on screen
        figures = _browser_results(port, "a red apple", tmp_path / "explore.png")
        assert figures, log.read_text()[-3000:]
        captions = set(samples.values())
        for source, caption in figures:
            assert source.startswith("data:image/")
            shown = caption.removesuffix("...").strip()
            assert any(c.startswith(shown) for c in captions), caption
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)

    # clip-retrieval embedded with our checkpoint: its vectors are the model's own
    metadata = pd.read_parquet(out / "embeddings" / "metadata")
    vectors = np.load(out / "embeddings" / "img_emb" / "img_emb_0.npy").astype(np.float32)
    model, preprocess, _, _ = load_model(checkpoint)
    from PIL import Image

    for row in (0, len(metadata) - 1):
        image = Image.open(metadata["image_path"][row]).convert("RGB")
        with torch.no_grad():
            ours = model.encode_image(preprocess(image)[None], normalize=True)[0].numpy()
        assert float(ours @ vectors[row]) > 0.999
    assert sorted(metadata["key"]) == sorted(samples)

    # a rerun only serves: every step's output is complete
    rerun = subprocess.run(
        _explore(*args, "serve=false"), cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "index ready" in rerun.stdout and "inference over" not in rerun.stderr


def test_a_missing_shard_set_or_checkpoint_is_a_clear_error(tmp_path, micro_run, capsys):
    from explore.__main__ import main

    cases = {
        f"shards={tmp_path}/none": "a finished shard set?",
        "model=": "no checkpoint in",
    }
    for override, message in cases.items():
        with pytest.raises(SystemExit) as exit_:
            main(
                [
                    str(ROOT / "configs" / "explore" / "demo.yaml"),
                    f"model={latest_checkpoint(str(micro_run))}",
                    f"train_run_dir={tmp_path}",
                    f"out_dir={tmp_path}/out",
                    override,
                ]
            )
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
