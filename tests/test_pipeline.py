"""The pipeline stage on Spark local mode, downloading from the demo web on loopback."""

import html
import json
import re
import tarfile

import pandas as pd
import pytest

from pipeline import filters, ingest
from pipeline.config import FilterConfig
from pipeline.manifest import ReconciliationError, reconcile


def test_normalise_cleans_junk_values(spark):
    rows = [
        {
            "SAMPLE_ID": "7",
            "url": " http://a/1.jpg ",
            "TEXT": "a  red\n apple",
            "HEIGHT": 0,
            "WIDTH": "640",
            "NSFW": "unlikely",
            "similarity": 6016.0,
        },
        {
            "SAMPLE_ID": "8",
            "url": "http://a/2.jpg",
            "TEXT": "   ",
            "HEIGHT": 10,
            "WIDTH": -1,
            "NSFW": "maybe",
            "similarity": 0.31,
        },
    ]
    df = ingest.normalise(spark.createDataFrame(pd.DataFrame(rows)))
    out = df.orderBy("SAMPLE_ID").toPandas()
    assert list(out.columns) == list(ingest.NORMALISED_COLUMNS)
    assert out["URL"].tolist() == ["http://a/1.jpg", "http://a/2.jpg"]
    assert out["TEXT"].tolist()[0] == "a red apple" and out["TEXT"].isna().tolist()[1]
    assert out["HEIGHT"].isna().tolist() == [True, False]
    assert out["WIDTH"].isna().tolist() == [False, True]
    assert out["NSFW"].tolist()[0] == "UNLIKELY" and out["NSFW"].isna().tolist()[1]
    assert out["similarity"].isna().tolist()[0] and out["similarity"].tolist()[1] == 0.31
    assert out["LICENSE"].isna().all()


def test_metadata_without_url_is_a_clear_error(spark):
    df = spark.createDataFrame(pd.DataFrame({"TEXT": ["x"]}))
    with pytest.raises(ingest.MetadataError, match=r"lacks column\(s\) \['URL'\]"):
        ingest.normalise(df)


def test_rule_drop_counts_add_up(spark):
    rows = pd.DataFrame(
        {
            "URL": ["http://a/1", None, "ftp://x", "http://a/4", "http://a/5", "http://a/6"],
            "TEXT": ["fine caption", "fine caption", "ok ok ok", None, "abc", "x" * 50],
        }
    )
    df = ingest.normalise(spark.createDataFrame(rows))
    kept, drops = filters.apply_rules(df, filters.build_rules(FilterConfig(5, 20)))
    assert drops == {"missing_url": 2, "missing_caption": 1, "caption_length": 2, "_kept": 1}
    assert kept.count() == 1


def test_spark_arrow_path_works_with_pinned_pyarrow(spark):
    """pyspark 4.1 + pyarrow 15: pandas UDF batches travel through Arrow."""
    df = spark.range(100).repartition(2)

    def double(batches):
        for batch in batches:
            yield batch.assign(id=batch["id"] * 2)

    out = df.mapInPandas(double, schema="id long").toPandas()
    assert sorted(out["id"]) == [2 * i for i in range(100)]


def test_reconcile_catches_a_lost_row():
    counts = {
        "rows_in": 10,
        "filters": {"a": 1},
        "duplicates": 1,
        "sent_to_download": 8,
        "download": {
            "attempted": 8,
            "succeeded": 6,
            "failed_to_download": 1,
            "failed_to_resize": 0,
        },
    }
    with pytest.raises(ReconciliationError, match="do not add up"):
        reconcile(counts)


def test_shard_set_layout_and_manifest(shard_set):
    manifest = json.loads((shard_set / "manifest.json").read_text())
    sizes = json.loads((shard_set / "sizes.json").read_text())
    counts = manifest["counts"]
    dl = counts["download"]
    assert (
        counts["rows_in"]
        == sum(counts["filters"].values())
        + counts["duplicates"]
        + dl["failed_to_download"]
        + dl["failed_to_resize"]
        + counts["kept"]
    )
    assert counts["kept"] == sum(sizes.values()) > 0
    assert dl["failed_to_download"] + dl["failed_to_resize"] > 0, "the demo web breaks some URLs"
    report = html.unescape((shard_set / "report.html").read_text())
    # five plots, and the download's throughput once its progress holds two points or more
    # (how many it holds depends on how long the download took)
    timeline = dl.get("run", {}).get("timeline") or []
    assert report.count('alt="plot"') == 5 + (len(timeline) >= 2)
    # the counts open the page as a table a person reads (the raw JSON is folded away below)
    table = report[report.index("<table>") : report.index("</table>")]
    kept_row = "<td style='padding-left:8px'>kept</td><td style='text-align:right'>{:,}</td>"
    assert kept_row.format(counts["kept"]) in table
    assert report.index("<table>") < report.index("<details>")
    assert report.count('alt="sample"') == min(24, counts["kept"])  # the grid of kept samples
    # one example per failure reason (the manifest's), with a URL of the demo web
    assert dl["errors"]
    for reason in dl["errors"]:
        pattern = f"<tr><td>{re.escape(reason)}</td><td>\\d+</td><td>\\w+</td><td>(.*?)</td>"
        row = re.search(pattern, report)
        assert row and row.group(1).startswith("http://127.0.0.1:"), reason
    for name, n in sizes.items():
        shard = name.removesuffix(".tar")
        with tarfile.open(shard_set / name) as tar:
            members = tar.getnames()
        keys = {m.split(".")[0] for m in members}
        assert len(keys) == n
        for key in keys:
            assert {f"{key}.jpg", f"{key}.txt", f"{key}.json"} <= set(members)
        meta = pd.read_parquet(shard_set / f"{shard}.parquet")
        assert (meta["status"] == "success").sum() == n
        assert {"SAMPLE_ID", "LICENSE", "url", "caption", "sha256"} <= set(meta.columns)
        assert (shard_set / f"{shard}_stats.json").exists()


def test_rerun_of_a_complete_shard_set_is_a_no_op(shard_set, spark, demo_corpus_dir):
    from pipeline.stage import run
    from tests.conftest import small_pipeline_config

    before = (shard_set / "manifest.json").read_text()
    tars = {p.name: p.stat().st_mtime_ns for p in shard_set.glob("*.tar")}
    run(small_pipeline_config(str(shard_set), demo_corpus_dir), spark)
    assert (shard_set / "manifest.json").read_text() == before
    assert {p.name: p.stat().st_mtime_ns for p in shard_set.glob("*.tar")} == tars


def test_interrupted_run_redoes_only_unfinished_shards(tmp_path, spark, demo_corpus_dir):
    from pipeline.stage import run
    from tests.conftest import small_pipeline_config

    out = tmp_path / "shards"
    config = small_pipeline_config(str(out), demo_corpus_dir)
    first = run(config, spark)
    # Simulate a kill: the manifest was never written and shard 1 never finished.
    (out / "manifest.json").unlink()
    (out / "00001_stats.json").unlink()
    (out / "00001.tar").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("0000[02]*.tar")}
    second = run(config, spark)
    # Same rows, same shards; outcomes of the redone shard may differ by a request that timed
    # out under load, as on the real web. write_manifest has reconciled the counts again.
    for key in ("rows_in", "filters", "duplicates", "sent_to_download"):
        assert second["counts"][key] == first["counts"][key]
    assert second["counts"]["download"]["attempted"] == first["counts"]["download"]["attempted"]
    assert (out / "00001.tar").exists()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("0000[02]*.tar")} == kept


def test_metadata_rules_each_count_their_drops(spark):
    rows = pd.DataFrame(
        {
            "URL": [f"http://a/{i}" for i in range(8)],
            "TEXT": [
                "two words",
                "one",
                "a fine long caption here",
                "small image here",
                "very wide image",
                "nsfw tagged image",
                "low similarity pair",
                "no size known",
            ],
            "WIDTH": [300, 300, 300, 40, 1200, 300, 300, None],
            "HEIGHT": [300, 300, 300, 40, 100, 300, 300, None],
            "NSFW": [
                "UNLIKELY",
                "UNLIKELY",
                "UNLIKELY",
                "UNLIKELY",
                "UNLIKELY",
                "NSFW",
                None,
                None,
            ],
            "similarity": [0.35, 0.35, 0.35, 0.35, 0.35, 0.35, 0.1, 0.4],
        }
    )
    df = ingest.normalise(spark.createDataFrame(rows))
    config = FilterConfig(
        min_caption_chars=3,
        max_caption_chars=100,
        min_caption_words=2,
        max_caption_words=4,
        min_image_side=64,
        max_aspect_ratio=3.0,
        nsfw_allowed=["unlikely", "unsure"],
        min_similarity=0.3,
    )
    rules = filters.build_rules(config)
    kept, drops = filters.apply_rules(df, rules)
    assert drops == {
        "missing_url": 0,
        "missing_caption": 0,
        "caption_length": 0,
        "caption_words": 2,
        "image_side": 1,
        "aspect_ratio": 1,
        "nsfw": 1,
        "similarity": 1,
        "_kept": 2,
    }
    assert sorted(r["TEXT"] for r in kept.collect()) == ["no size known", "two words"]
    assert {r.name: r.params for r in rules}["nsfw"] == {"allowed": ["UNLIKELY", "UNSURE"]}


def test_rules_that_are_off_are_not_applied():
    names = [r.name for r in filters.build_rules(FilterConfig())]
    assert names == ["missing_url", "missing_caption", "caption_length"]


def test_csv_and_parquet_metadata_read_into_one_schema(spark, tmp_path):
    frame = pd.DataFrame(
        {"URL": ["http://a/1", "http://a/2"], "TEXT": ['a, quoted "one"', "b"], "WIDTH": [10, 20]}
    )
    frame.to_csv(tmp_path / "m.csv", index=False)
    frame.to_parquet(tmp_path / "m.parquet")
    from_csv = ingest.read_metadata(spark, [str(tmp_path / "m.csv")], "csv")
    from_parquet = ingest.read_metadata(spark, [str(tmp_path / "m.parquet")], "parquet")
    both = from_csv.unionByName(from_parquet).orderBy("URL").toPandas()
    assert both["TEXT"].tolist() == ['a, quoted "one"', 'a, quoted "one"', "b", "b"]
    assert both["WIDTH"].tolist() == [10, 10, 20, 20]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json"])
def test_fsspec_reader_matches_sparks_own(spark, tmp_path, fmt):
    """The reader for storage Spark cannot reach gives the same normalised rows as Spark's."""
    frame = pd.DataFrame(
        {
            "url": ["http://a/1", "http://a/2", "http://a/3"],
            "TEXT": ['a, quoted "one"', "line\nbreak", "c"],
            "WIDTH": [10, 0, 20],
            "similarity": [0.3, 6016.0, None],
            "NSFW": ["unlikely", None, "NSFW"],
        }
    )
    folder = tmp_path / "meta"
    folder.mkdir()
    if fmt == "parquet":
        frame.to_parquet(folder / "m.parquet")
    elif fmt == "csv":
        frame.to_csv(folder / "m.csv", index=False)
    else:
        frame.to_json(folder / "m.json", orient="records", lines=True)
    url = f"file://{folder}"
    ours = ingest.read_metadata(spark, [url], fmt, reader="fsspec").orderBy("URL").toPandas()
    theirs = ingest.read_metadata(spark, [url], fmt, reader="spark").orderBy("URL").toPandas()
    pd.testing.assert_frame_equal(ours, theirs)
    assert ours["TEXT"].tolist() == ['a, quoted "one"', "line break", "c"]
    assert ours["WIDTH"].tolist()[:1] == [10] and pd.isna(ours["WIDTH"][1])


def test_fsspec_reader_names_what_is_missing(spark, tmp_path):
    pd.DataFrame({"URL": ["http://a/1"]}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(ingest.MetadataError, match="TEXT"):
        ingest.read_metadata(spark, [f"file://{tmp_path}"], "parquet", reader="fsspec")
    with pytest.raises(ingest.MetadataError, match="does not exist"):
        ingest.read_metadata(spark, [f"file://{tmp_path}/nope"], "parquet", reader="fsspec")


def test_language_rule_uses_the_column_then_detects(spark):
    rows = pd.DataFrame(
        {
            "URL": [f"http://a/{i}" for i in range(6)],
            "TEXT": [
                "a photo of a dog running on the beach",
                "une photo d'un chien qui court sur la plage",
                "ein Foto von einem Hund, der am Strand läuft",
                "une photo d'un chien qui court sur la plage",  # the column says en: trusted
                "a photo of a dog running on the beach",
                "a red vintage car parked in front of the house",
            ],
            "LANGUAGE": [None, None, None, "EN", "fr", None],
        }
    )
    df = ingest.normalise(spark.createDataFrame(rows))
    detected = filters.build_rules(FilterConfig(languages=["en"]))
    kept, drops = filters.apply_rules(df, detected)
    assert drops["language"] == 3 and drops["_kept"] == 3
    assert sorted(r["URL"] for r in kept.collect()) == ["http://a/0", "http://a/3", "http://a/5"]
    trusting = filters.build_rules(FilterConfig(languages=["en"], detect_language=False))
    _, drops = filters.apply_rules(df, trusting)
    assert drops["language"] == 1  # only the row tagged fr; untagged rows pass


def test_the_shard_set_report_stays_small_at_40000_shards():
    """A histogram of samples per shard, not a bar each: the page and its plots stay readable
    and small whatever the shard count (synthetic statistics of 40,000 shards)."""
    import collections

    import numpy as np

    from pipeline.report import render_html
    from pipeline.report_stats import ShardSetStats

    rng = np.random.default_rng(0)
    kept = rng.binomial(10_000, 0.9, size=40_000)
    stats = ShardSetStats(
        status=collections.Counter(success=int(kept.sum()), failed_to_download=40_000_000),
        errors=collections.Counter({f"http {code}": 1000 + code for code in range(400, 420)}),
        per_shard={f"{i:05d}": int(n) for i, n in enumerate(kept)},
    )
    page = render_html(stats, {"kept": int(kept.sum())})
    assert len(page) < 600_000, len(page)
    assert page.count('alt="plot"') == 5


def test_a_rerun_reuses_the_url_list_and_refuses_other_settings(spark, tmp_path):
    """The URL list with its marker is what a rerun cuts its shards from, without reading the
    metadata again; a rerun with other inputs or settings is a clear error, not other shards."""
    from pipeline.config import PipelineConfig
    from pipeline.stage import UrlListMismatchError, build_url_list, reusable_url_list
    from tests.test_fetch import _metadata

    meta = _metadata(tmp_path / "meta.parquet", [f"http://a{i % 3}.com/{i}.jpg" for i in range(25)])
    config = PipelineConfig(output_dir=str(tmp_path / "shards"))
    config.download.samples_per_shard = 10
    groups = [([meta], "parquet")]
    assert reusable_url_list(config, groups) is None
    built = build_url_list(spark, config, groups)
    assert (built.rows, built.shards, built.info["counts"]["rows_in"]) == (25, 3, 25)
    (tmp_path / "meta.parquet").unlink()  # not read again
    assert reusable_url_list(config, groups) == built
    config.download.samples_per_shard = 5
    with pytest.raises(UrlListMismatchError, match="other inputs or settings"):
        reusable_url_list(config, groups)
    config.download.samples_per_shard = 10
    # Shards committed without the list they were cut from: a new cut would give their ids
    # other rows, so the stage refuses rather than mixing two cuts.
    (tmp_path / "shards" / "00000_stats.json").write_text("{}")
    (tmp_path / "shards" / "_work" / "urls" / "_url_list.json").unlink()
    with pytest.raises(UrlListMismatchError, match="not the URL list they were cut from"):
        reusable_url_list(config, groups)
