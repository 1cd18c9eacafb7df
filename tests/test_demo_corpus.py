"""The demo corpus: real packaged artwork, human captions, and a demo web that breaks like the
real one."""

import io
import urllib.error
import urllib.request

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.demo import emoji, openclipart, render
from pipeline.demo.corpus import (
    LAION_SCHEMA,
    concept_of,
    load_items,
    plan_tasks,
    write_laion_metadata,
)
from pipeline.demo.web import NO_FAULTS, DemoWeb, FaultRates, fault_for


def test_openclipart_drops_generated_and_generic_files():
    items = [item for item, _ in zip(openclipart.iter_openclipart(), range(300), strict=False)]
    assert len(items) == 300
    for item, data in items:
        assert b"gramastar" not in data.lower()
        assert "/icons/" not in item.path.as_posix()
        assert openclipart.clean_title(item.title)


def test_caption_joins_title_keywords_and_short_description():
    item = openclipart.ClipartItem(
        path=None,
        title="Clipart by Nicu Buculei - red_apple 01",
        keywords=("fruit", "hash", "apple", "food"),
        description="A shiny apple.",
    )
    assert openclipart.make_caption(item) == "red apple, fruit, apple, food. A shiny apple."


def test_emoji_test_names_and_groups():
    concepts = emoji.read_emoji_test()
    by_text = {c.text: c for c in concepts}
    assert by_text["\U0001f600"].name == "grinning face"
    assert by_text["\U0001f600"].group == "Smileys & Emotion"
    assert by_text["\U0001f1e8\U0001f1e6"].name == "flag of canada"


def test_noto_glyph_renders_opaque_rgb():
    image = render.render_emoji_glyph("\U0001f600")
    assert image is not None and image.mode == "RGB"
    assert 80 < image.width < 140


def test_svg_transparency_becomes_white():
    svg = (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b'<rect x="0" y="0" width="5" height="10" fill="red"/></svg>'
    )
    image = render.render_svg(svg, 40)
    assert image.mode == "RGB"
    assert image.getpixel((35, 20)) == (255, 255, 255)
    assert image.getpixel((5, 20))[0] > 200 and image.getpixel((5, 20))[1] < 50


def test_corpus_items_and_laion_metadata(demo_corpus_dir, tmp_path):
    items = load_items(demo_corpus_dir)
    assert set(items["source"]) == {"openclipart", "openmoji", "noto"}
    assert set(items[items["source"] == "noto"]["split"]) == {"heldout"}
    assert set(items[items["source"] != "noto"]["split"]) <= {"train", "concept_heldout"}
    out = tmp_path / "meta.parquet"
    rows = write_laion_metadata(items, "http://127.0.0.1:1", out)
    table = pq.read_table(out)
    assert table.schema == LAION_SCHEMA
    assert rows == (items["split"] == "train").sum() == table.num_rows
    frame = table.to_pandas()
    assert frame["SAMPLE_ID"].is_unique
    assert frame["URL"].str.startswith("http://127.0.0.1:1/img/").all()


def test_fault_assignment_is_deterministic_and_near_its_rates():
    rates = FaultRates()
    kinds = pd.Series([fault_for(f"k{i}", rates) for i in range(20000)])
    assert kinds.tolist() == [fault_for(f"k{i}", rates) for i in range(20000)]
    share = kinds.value_counts(normalize=True)
    assert abs(share["not_found"] - rates.not_found) < 0.01
    assert abs(share["ok"] - 0.91) < 0.02


def _get(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.headers["Content-Type"], response.read()


def test_demo_web_serves_images_and_faults(demo_corpus_dir):
    items = load_items(demo_corpus_dir)
    keys = list(items["key"])
    rates = FaultRates(not_found=0.2, server_error=0.2, hang=0.0, truncated=0.2, not_image=0.2)
    by_kind = {}
    for key in keys:
        by_kind.setdefault(fault_for(key, rates), key)
    with DemoWeb(demo_corpus_dir / "images", rates) as web:
        status, ctype, body = _get(f"{web.base_url}/img/{by_kind['ok']}.jpg")
        assert status == 200 and ctype == "image/jpeg"
        Image.open(io.BytesIO(body)).load()
        for kind, code in (("not_found", 404), ("server_error", 500)):
            with pytest.raises(urllib.error.HTTPError) as err:
                _get(f"{web.base_url}/img/{by_kind[kind]}.jpg")
            assert err.value.code == code
        _, ctype, body = _get(f"{web.base_url}/img/{by_kind['not_image']}.jpg")
        assert ctype == "text/html" and body.startswith(b"<html>")
        _, _, body = _get(f"{web.base_url}/img/{by_kind['truncated']}.jpg")
        with pytest.raises(OSError):
            Image.open(io.BytesIO(body)).load()


def test_demo_web_hang_outlasts_client_timeout(demo_corpus_dir):
    rates = FaultRates(0, 0, 1.0, 0, 0)
    key = load_items(demo_corpus_dir)["key"].iloc[0]
    with (
        DemoWeb(demo_corpus_dir / "images", rates, hang_seconds=2) as web,
        pytest.raises((TimeoutError, urllib.error.URLError)),
    ):
        _get(f"{web.base_url}/img/{key}.jpg", timeout=0.5)


def test_demo_web_without_faults_serves_everything(demo_corpus_dir):
    key = load_items(demo_corpus_dir)["key"].iloc[0]
    with DemoWeb(demo_corpus_dir / "images", NO_FAULTS) as web:
        assert _get(f"{web.base_url}/img/{key}.jpg")[0] == 200
        with pytest.raises(urllib.error.HTTPError):
            _get(f"{web.base_url}/img/does-not-exist.jpg")


def test_variants_of_one_emoji_are_one_concept():
    assert concept_of("woman farmer medium-dark skin tone") == "farmer"
    assert concept_of("man farmer") == concept_of("farmer") == "farmer"
    assert concept_of("woman and man holding hands light skin tone, dark skin tone") == (
        concept_of("people holding hands")
    )
    assert concept_of("kiss man, man, medium-light skin tone") == "kiss"
    assert concept_of("Red Apple") == "red apple"
    assert concept_of("man") == "man"  # nothing left but the person: the name stays


def test_held_out_concepts_never_reach_training():
    """A whole concept leaves training from every source (the real plan: every emoji, every
    clip art); about one in ten concepts, with images of both training art styles."""
    tasks = plan_tasks(limit_per_source=0)
    trained = {t.concept for t in tasks if t.split == "train"}
    held = [t for t in tasks if t.split == "concept_heldout"]
    assert held and not trained & {t.concept for t in held}
    assert {t.source for t in held} == {"openclipart", "openmoji"}
    share = len({t.concept for t in held}) / len(trained | {t.concept for t in held})
    assert 0.07 < share < 0.13
