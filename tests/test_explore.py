"""`python -m explore`: clip-retrieval's own inference, autofaiss index and back end over a real
shard set with one of our checkpoints, queried through its bundled front end in Debian's
headless Chromium (driven by Selenium)."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flipcommon.checkpoints import latest_checkpoint, load_model
from flipcommon.shard_tars import read_tar_samples

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


def _post(port: int, path: str, body: dict, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _listening_addresses(port: int) -> set[str]:
    """The local addresses a TCP socket listens on at ``port``, from the kernel's table."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if int(hex_port, 16) == port and state == "0A":  # LISTEN
                addresses.add(address)
    return addresses


def _assert_guarded(port: int) -> None:
    """What another page, another machine or a hostile query gets from the running explorer."""
    # listens on loopback only: 127.0.0.1 in the kernel's byte order
    assert _listening_addresses(port) == {"0100007F"}
    query = {"text": "apple", "modality": "image", "indice_name": "shards", "num_images": 5}
    # a page of another origin: refused, and no CORS header would let it read anything
    status, _ = _post(port, "/knn-service", query, {"Origin": "http://evil.example"})
    assert status == 403
    # a DNS name rebound to 127.0.0.1: its Host is not a loopback name
    host = f"evil.example:{port}"
    status, _ = _post(port, "/knn-service", query, {"Host": host, "Origin": f"http://{host}"})
    assert status == 403
    # the page's own origin works, and says nothing about other origins
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/knn-service",
        data=json.dumps(query).encode(),
        headers={"Origin": f"http://127.0.0.1:{port}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        assert "Access-Control-Allow-Origin" not in response.headers
    # a query by URL is refused before anything is fetched: a listener there hears nothing
    heard = []

    class Listener(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            heard.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    listener = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Listener)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    try:
        target = f"http://127.0.0.2:{listener.server_address[1]}/x.jpg"
        status, body = _post(port, "/knn-service", {**query, "image_url": target}, {})
        assert status == 400 and b"image_url" in body
    finally:
        listener.shutdown()
    assert heard == []
    # result counts are capped, whatever a query asks
    status, body = _post(port, "/knn-service", {**query, "num_images": 10**9}, {})
    assert status == 200 and len(json.loads(body)) <= 1000
    status, _ = _post(port, "/metadata", {"ids": list(range(2000)), "indice_name": "shards"}, {})
    assert status == 400


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
            assert "image_path" not in result  # no file path of the server's
            assert result["image"]  # base64 JPEG: the shard set's own pixels
        _assert_guarded(port)

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


def test_guards_of_the_explorer_app():
    from explore.serve import (
        MAX_RESULTS,
        allowed_hosts,
        capped_query,
        chosen_index,
        request_refusal,
    )

    # a shared ?query= link's first query can come before the page knows the index names
    assert chosen_index("", ["shards"]) == chosen_index(None, ["shards"]) == "shards"
    assert chosen_index("shards", ["shards"]) == "shards"
    for name in ("other", ""):
        with pytest.raises(ValueError, match="no index"):
            chosen_index(name, ["shards", "more"] if name == "" else ["shards"])

    hosts = allowed_hosts("127.0.0.1", 1234)
    assert request_refusal({"Host": "127.0.0.1:1234"}, hosts) is None
    same_origin = {"Host": "localhost:1234", "Origin": "http://localhost:1234"}
    assert request_refusal(same_origin, hosts) is None
    assert "Host" in request_refusal({"Host": "evil.example:1234"}, hosts)
    assert "cross-origin" in request_refusal(
        {"Host": "127.0.0.1:1234", "Origin": "http://evil.example"}, hosts
    )
    # exposed on purpose: only the names it was told browsers use, and only their own origin
    exposed = allowed_hosts("0.0.0.0", 1234, ["box.internal:1234"])
    assert request_refusal({"Host": "box.internal:1234"}, exposed) is None
    assert request_refusal({"Host": "rebound.example:1234"}, exposed)
    assert request_refusal({"Host": "box.internal:1234", "Origin": "http://evil.example"}, exposed)
    # IPv6 loopback in brackets; port 80 without its number, as browsers send it
    assert request_refusal({"Host": "[::1]:1234"}, allowed_hosts("::1", 1234)) is None
    assert request_refusal({"Host": "localhost"}, allowed_hosts("127.0.0.1", 80)) is None
    assert capped_query({"num_images": 10**9, "num_result_ids": -5}) == {
        "num_images": MAX_RESULTS,
        "num_result_ids": 1,
    }
    with pytest.raises(ValueError, match="image_url"):
        capped_query({"image_url": "file:///etc/passwd"})


@pytest.mark.parametrize("name", ["/tmp/escaped", "../escaped", "a/b", ".hidden"])
def test_a_tar_member_that_is_a_path_is_refused_not_written(tmp_path, name):
    import io
    import tarfile

    from explore.build import write_images
    from flipcommon.shard_tars import UnsafeSampleKey

    tar_path = tmp_path / "00000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for member, data in ((f"{name}.jpg", b"\xff\xd8\xff"), (f"{name}.txt", b"x")):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "metadata").mkdir()
    with pytest.raises(UnsafeSampleKey, match="not a plain name"):
        write_images({str(tar_path): 1}, tmp_path / "images", tmp_path / "metadata")
    assert not Path("/tmp/escaped.jpg").exists() and not (tmp_path / "escaped.jpg").exists()
    assert not list((tmp_path / "images").iterdir())


def test_names_read_from_sizes_json_and_latest_are_checked(tmp_path):
    from flipcommon.checkpoints import CheckpointError
    from flipcommon.shard_set import ShardSetMissing, read_sizes

    (tmp_path / "sizes.json").write_text(json.dumps({"../../etc/x.tar": 3}))
    with pytest.raises(ShardSetMissing, match="not a tar name"):
        read_sizes(str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "LATEST").write_text("../../elsewhere")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        latest_checkpoint(str(tmp_path))


def test_an_exposed_explorer_needs_the_names_browsers_reach_it_by(tmp_path, capsys):
    from explore.__main__ import main

    for override, message in {
        "host=": "is not an IP address or localhost",
        "host=127.example.com": "is not an IP address or localhost",
    }.items():
        with pytest.raises(SystemExit):
            main([str(ROOT / "configs/explore/demo.yaml"), f"out_dir={tmp_path}", override])
        assert message in capsys.readouterr().err


def test_an_uploaded_query_image_is_checked_before_decoding():
    import base64
    import io

    from PIL import Image

    from explore.serve import capped_query
    from tests.hostile_web import png_bomb

    small = io.BytesIO()
    Image.new("RGB", (8, 8)).save(small, "PNG")
    assert capped_query({"image": base64.b64encode(small.getvalue()).decode()})
    with pytest.raises(ValueError, match="pixels"):
        capped_query({"image": base64.b64encode(png_bomb(7000)).decode()})
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    with pytest.raises(ValueError, match="refused"):
        capped_query({"image": base64.b64encode(gif.getvalue()).decode()})
