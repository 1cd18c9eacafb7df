"""The metadata people bring, read end to end by the stage: each preset's published layout
(LAION parquet, DataComp/COYO parquet with lower-case columns, CC12M/CC3M tab-separated files
without a header), and csv / JSON lines with their columns named by input.url_col and
input.caption_col. Every row's URL and caption arrive in the shards as written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import InputConfig, PipelineConfig
from pipeline.ingest import MetadataError, layout_of, read_metadata
from pipeline.stage import build_shard_set
from tests.hostile_web import HostileWeb
from tests.test_fetch import quick_fetch

# a caption with a double quote, one of digits only (must stay text), one with a comma
CAPTIONS = ['a "quoted" red bicycle', "004217", "two dogs, one ball"]


def _write(path: Path, preset: str, urls: list[str]) -> str:
    """The rows as the dataset publishes them."""
    if preset in ("laion400m", "laion5b"):
        table = {"URL": urls, "TEXT": CAPTIONS, "SAMPLE_ID": pa.array([1, 2, 3], pa.int64())}
        if preset == "laion5b":
            table |= {"punsafe": [0.01, 0.2, 0.0], "pwatermark": [0.1, 0.0, 0.9]}
        pq.write_table(pa.table(table), path.with_suffix(".parquet"))
        return str(path.with_suffix(".parquet"))
    if preset == "datacomp":
        uids = [f"{i:032x}" for i in range(3)]
        table = {"uid": uids, "url": urls, "text": CAPTIONS, "face_bboxes": [[], [], []]}
        pq.write_table(pa.table(table), path.with_suffix(".parquet"))
        return str(path.with_suffix(".parquet"))
    if preset == "coyo700m":
        table = {"id": pa.array([7, 8, 9], pa.int64()), "url": urls, "text": CAPTIONS}
        pq.write_table(pa.table(table), path.with_suffix(".parquet"))
        return str(path.with_suffix(".parquet"))
    pairs = zip(urls, CAPTIONS, strict=True)
    if preset == "cc12m":  # url<TAB>caption, no header
        lines = [f"{u}\t{c}" for u, c in pairs]
    elif preset == "cc3m":  # caption<TAB>url, no header
        lines = [f"{c}\t{u}" for u, c in pairs]
    elif preset == "csv":
        pd.DataFrame({"image": urls, "alt": CAPTIONS}).to_csv(path.with_suffix(".csv"), index=False)
        return str(path.with_suffix(".csv"))
    elif preset == "jsonl":
        lines = [json.dumps({"link": u, "caption": c}) for u, c in pairs]
        path.with_suffix(".jsonl").write_text("\n".join(lines) + "\n")
        return str(path.with_suffix(".jsonl"))
    path.with_suffix(".tsv").write_text("\n".join(lines) + "\n")
    return str(path.with_suffix(".tsv"))


def _input(preset: str, files: list[str]) -> InputConfig:
    if preset == "csv":
        return InputConfig(urls=files, format="csv", url_col="image", caption_col="alt")
    if preset == "jsonl":
        return InputConfig(urls=files, format="jsonl", url_col="link", caption_col="caption")
    return InputConfig(urls=files, preset=preset)


LAYOUTS = ["laion400m", "laion5b", "datacomp", "coyo700m", "cc12m", "cc3m", "csv", "jsonl"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_is_read_end_to_end_by_the_stage(tmp_path, spark, layout):
    with HostileWeb() as web:
        urls = [f"{web.base_url}/ok/{i}.jpg" for i in range(3)]
        meta = _write(tmp_path / "meta", layout, urls)
        config = PipelineConfig(output_dir=str(tmp_path / "shards"), input=_input(layout, [meta]))
        config.download.image_size = 32
        config.download.threads = 2
        config.fetch = quick_fetch()
        config.spark.shuffle_partitions = 2
        manifest = build_shard_set(spark, config, [([meta], layout_of(config.input))])
    assert manifest["counts"]["kept"] == 3
    rows = pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "shards").glob("*.parquet")))
    assert sorted(zip(rows["url"], rows["caption"], strict=True)) == sorted(
        zip(urls, CAPTIONS, strict=True)
    )


@pytest.mark.parametrize("reader", ["spark", "fsspec"])
def test_both_readers_read_a_headerless_tsv_alike(tmp_path, spark, reader):
    urls = [f"http://example.com/{i}.jpg" for i in range(3)]
    meta = _write(tmp_path / "meta", "cc3m", urls)
    frame = read_metadata(spark, [meta], layout_of(InputConfig(preset="cc3m")), reader)
    rows = sorted((r["URL"], r["TEXT"]) for r in frame.collect())
    assert rows == sorted(zip(urls, CAPTIONS, strict=True))


def test_a_preset_with_its_own_columns_and_a_missing_column_are_clear_errors(tmp_path, spark):
    with pytest.raises(MetadataError, match="leave input.format"):
        layout_of(InputConfig(preset="cc12m", format="csv"))
    meta = _write(tmp_path / "meta", "datacomp", ["http://example.com/0.jpg"] * 3)
    layout = layout_of(InputConfig(format="parquet", url_col="link"))
    for reader in ("spark", "fsspec"):
        with pytest.raises(MetadataError, match=r"lacks column\(s\) \['link'\].*input.url_col"):
            read_metadata(spark, [meta], layout, reader)
    with pytest.raises(MetadataError, match="without a header"):
        read_metadata(spark, [meta], layout_of(InputConfig(columns=["url", "caption"])))


def test_datacomp_and_coyo_similarity_and_sizes_are_read_under_their_own_names(tmp_path, spark):
    path = tmp_path / "datacomp.parquet"
    table = {
        "uid": ["a" * 32],
        "url": ["http://example.com/0.jpg"],
        "text": ["a red bicycle"],
        "original_width": pa.array([640], pa.int64()),
        "original_height": pa.array([480], pa.int64()),
        "clip_l14_similarity_score": [0.31],
    }
    pq.write_table(pa.table(table), path)
    for reader in ("spark", "fsspec"):
        layout = layout_of(InputConfig(preset="datacomp"))
        (row,) = read_metadata(spark, [str(path)], layout, reader).collect()
        assert (row["WIDTH"], row["HEIGHT"], row["similarity"]) == (640, 480, 0.31), reader


def test_csv_columns_stay_text_and_a_malformed_row_does_not_fail_the_file(tmp_path, spark):
    """With a header, a caption column of digits is text (pyarrow would type it as numbers,
    "000001" becoming 1); a TSV row with a stray tab is dropped, the rest read."""
    rows = [(f"http://example.com/{i}.jpg", f"{i:06d}") for i in range(3)]
    csv = tmp_path / "digits.csv"
    pd.DataFrame(rows, columns=["url", "caption"]).to_csv(csv, index=False)
    layout = layout_of(InputConfig(format="csv", url_col="url", caption_col="caption"))
    for reader in ("spark", "fsspec"):
        frame = read_metadata(spark, [str(csv)], layout, reader)
        assert sorted(r["TEXT"] for r in frame.collect()) == ["000000", "000001", "000002"]
    tsv = tmp_path / "stray.tsv"
    tsv.write_text("http://e.com/0.jpg\tfine caption\nhttp://e.com/1.jpg\tbad\tcaption\n")
    layout = layout_of(InputConfig(preset="cc12m"))
    frame = read_metadata(spark, [str(tsv)], layout, "fsspec")
    assert [r["TEXT"] for r in frame.collect()] == ["fine caption"]


def test_column_names_that_clash_are_clear_errors_or_read_once(tmp_path, spark):
    with pytest.raises(MetadataError, match="name the same column"):
        read_metadata(spark, ["x"], layout_of(InputConfig(url_col="u", caption_col="U")))
    both = tmp_path / "both.parquet"
    pq.write_table(pa.table({"url": ["a"], "URL": ["b"], "TEXT": ["a caption"]}), both)
    for reader in ("spark", "fsspec"):
        with pytest.raises(MetadataError, match="differ only by case"):
            read_metadata(spark, [str(both)], "parquet", reader).collect()
    # a caption taken from a column named like another normalised one is not read twice
    licensed = tmp_path / "licensed.parquet"
    pq.write_table(pa.table({"URL": ["http://e.com/0.jpg"], "LICENSE": ["a caption"]}), licensed)
    layout = layout_of(InputConfig(caption_col="LICENSE"))
    (row,) = read_metadata(spark, [str(licensed)], layout).collect()
    assert (row["TEXT"], row["LICENSE"]) == ("a caption", None)


def _stage(tmp_path, spark, web, input_config: InputConfig, **filters) -> dict:
    config = PipelineConfig(output_dir=str(tmp_path / "shards"), input=input_config)
    config.download.image_size = 32
    config.download.threads = 2
    config.download.retry_in_task_after_s = None  # a retryable failure waits for the final pass
    config.fetch = quick_fetch()
    config.spark.shuffle_partitions = 2
    for name, value in filters.items():
        setattr(config.filters, name, value)
    return build_shard_set(spark, config, [(input_config.urls, layout_of(config.input))])


def _samples(tmp_path) -> pd.DataFrame:
    return pd.concat(pd.read_parquet(p) for p in sorted((tmp_path / "shards").glob("*.parquet")))


def _sample_json(tmp_path, url: str) -> dict:
    import tarfile

    for tar_path in sorted((tmp_path / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    record = json.loads(tar.extractfile(member).read())
                    if record["url"] == url:
                        return record
    raise AssertionError(f"no sample for {url}")


def test_laion5b_unsafe_and_watermark_filters_and_their_scores_in_each_sample(tmp_path, spark):
    """punsafe [0.01, 0.2, 0.0], pwatermark [0.1, 0.0, 0.9]: at 0.1 / 0.5 only the first row
    is kept, and its scores travel into its JSON and the shard's parquet."""
    with HostileWeb() as web:
        urls = [f"{web.base_url}/ok/{i}.jpg" for i in range(3)]
        meta = _write(tmp_path / "meta", "laion5b", urls)
        extras = ["punsafe", "pwatermark"]
        input_config = InputConfig(urls=[meta], preset="laion5b", save_additional_columns=extras)
        manifest = _stage(tmp_path, spark, web, input_config, max_punsafe=0.1, max_pwatermark=0.5)
    assert manifest["counts"]["kept"] == 1
    filtered = manifest["counts"]["filters"]
    assert filtered["punsafe"] == 1 and filtered["pwatermark"] == 1
    rows = _samples(tmp_path)
    assert list(rows["url"]) == [urls[0]]
    assert rows["punsafe"].tolist() == [0.01] and rows["pwatermark"].tolist() == [0.1]
    record = _sample_json(tmp_path, urls[0])
    assert record["punsafe"] == 0.01 and record["pwatermark"] == 0.1


@pytest.mark.parametrize("reader", ["spark", "fsspec"])
def test_datacomp_columns_are_carried_into_every_sample_the_final_pass_included(
    tmp_path, spark, reader
):
    """uid (text) and face_bboxes (a list of boxes: JSON text) in each sample's JSON and the
    parquet, for a sample the first pass got and for one only the final pass recovered, read
    by either reader."""
    with HostileWeb() as web:
        urls = [f"{web.base_url}/ok/0.jpg", f"{web.base_url}/flaky"]
        table = {
            "uid": ["a" * 32, "b" * 32],
            "url": urls,
            "text": ["a red bicycle", "two dogs"],
            "face_bboxes": [[[0.1, 0.2, 0.3, 0.4]], []],
        }
        meta = str(tmp_path / "meta.parquet")
        pq.write_table(pa.table(table), meta)
        extras = ["uid", "face_bboxes"]
        input_config = InputConfig(
            urls=[meta], preset="datacomp", save_additional_columns=extras, reader=reader
        )
        manifest = _stage(tmp_path, spark, web, input_config)
    assert manifest["counts"]["kept"] == 2
    assert manifest["counts"]["download"]["retry_pass"]["recovered"] == 1  # /flaky, final pass
    for url, uid, boxes in zip(urls, table["uid"], table["face_bboxes"], strict=True):
        record = _sample_json(tmp_path, url)
        assert record["uid"] == uid and json.loads(record["face_bboxes"]) == boxes, record
    rows = _samples(tmp_path)
    assert sorted(rows[rows["status"] == "success"]["uid"]) == table["uid"]


def test_extra_columns_that_are_not_plain_or_taken_or_missing_are_clear_errors(tmp_path, spark):
    from pipeline.ingest import carried_columns

    assert carried_columns(["uid", "punsafe", "LANGUAGE", "width"]) == (
        "uid",
        "punsafe",
        "LANGUAGE",
        "metadata_width",
    )
    bad_names = (["a-b"], ["url"], ["key"], ["status"], ["uid", "UID"], ["x" * 65], ["_lane"])
    for bad in (*bad_names, ["image_path"], ["metadata"], ["_drop_reason"]):
        with pytest.raises(MetadataError, match="save_additional_columns"):
            carried_columns(bad)
    meta = _write(tmp_path / "meta", "datacomp", ["http://example.com/0.jpg"] * 3)
    for reader in ("spark", "fsspec"):
        with pytest.raises(MetadataError, match="lacks \\['license_url'\\]"):
            read_metadata(
                spark, [meta], layout_of(InputConfig(preset="datacomp")), reader, ("license_url",)
            )


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_invalid_utf8_in_a_caption_is_replaced_alike_by_both_readers(tmp_path, spark, fmt):
    """A caption with a Latin-1 byte (a file that is not quite UTF-8): the row is read with
    U+FFFD in its place, by Spark's reader and by fsspec's alike, and the file's other rows
    with it. JSON lines: fsspec's reader keeps the row so; Spark's reads it as nulls (no URL:
    dropped later), the other rows as they are."""
    path = tmp_path / f"latin.{fmt}"
    if fmt == "jsonl":
        path.write_bytes(
            b'{"url": "http://e.com/0.jpg", "caption": "caf\xe9 au lait"}\n'
            b'{"url": "http://e.com/1.jpg", "caption": "plain caption"}\n'
        )
    else:
        sep = "," if fmt == "csv" else "\t"
        path.write_bytes(
            f"url{sep}caption\n".encode()
            + f"http://e.com/0.jpg{sep}caf".encode()
            + b"\xe9 au lait\n"
            + f"http://e.com/1.jpg{sep}plain caption\n".encode()
        )
    layout = layout_of(InputConfig(format=fmt, url_col="url", caption_col="caption"))
    read = {
        reader: sorted(
            (r["TEXT"] for r in read_metadata(spark, [str(path)], layout, reader).collect()),
            key=lambda text: (text is not None, text or ""),
        )
        for reader in ("spark", "fsspec")
    }
    if fmt == "jsonl":  # Spark's JSON reader makes the whole line a corrupt record (nulls)
        assert read["spark"] == [None, "plain caption"], read
        assert read["fsspec"] == ["caf\ufffd au lait", "plain caption"], read
        return
    assert read["fsspec"] == read["spark"] == ["caf\ufffd au lait", "plain caption"], read


def test_json_lines_that_are_not_objects_are_skipped_alike_by_both_readers(tmp_path, spark):
    """A truncated line, a blank one, a bare value, one nested too deep: the other rows are read,
    their numbers and nested values as text, by both readers."""
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"url": "http://e.com/0.jpg", "caption": "a cat", "width": 640}\n'
        '{"url": "http://e.com/1.jpg", "capt\n'
        "\n"
        "42\n" + "[" * 100_000 + "\n"  # nested past Python's recursion limit
        '{"url": "http://e.com/2.jpg", "caption": "a dog", "width": 320}\n'
    )
    layout = layout_of(InputConfig(format="jsonl", url_col="url", caption_col="caption"))
    read = {
        reader: sorted(
            (r["URL"], r["TEXT"], r["WIDTH"])
            for r in read_metadata(spark, [str(path)], layout, reader).collect()
            if r["URL"] is not None  # Spark's reader: a row of nulls for the truncated line
        )
        for reader in ("spark", "fsspec")
    }
    expected = [("http://e.com/0.jpg", "a cat", 640), ("http://e.com/2.jpg", "a dog", 320)]
    assert read["fsspec"] == read["spark"] == expected, read


def test_json_lines_keys_in_any_case_and_many_distinct_keys(tmp_path, spark):
    """fsspec's reader: ``URL`` in one line and ``url`` in the next are one column; lines that
    each add a key of their own cost nothing beyond the columns asked for."""
    path = tmp_path / "keys.jsonl"
    lines = [
        json.dumps({"URL": f"http://e.com/{i}.jpg", "Caption": f"caption {i}", f"k{i}": i})
        if i % 2
        else json.dumps({"url": f"http://e.com/{i}.jpg", "caption": f"caption {i}", f"k{i}": i})
        for i in range(20_000)
    ]
    path.write_text("\n".join(lines) + "\n")
    layout = layout_of(InputConfig(format="jsonl", url_col="url", caption_col="caption"))
    rows = read_metadata(spark, [str(path)], layout, "fsspec").collect()
    assert len(rows) == 20_000
    assert sorted(r["URL"] for r in rows) == sorted(f"http://e.com/{i}.jpg" for i in range(20_000))


def test_a_probability_that_is_not_a_number_is_null_not_a_failed_job(tmp_path, spark):
    path = tmp_path / "scores.csv"
    path.write_text(
        "url,caption,punsafe\nhttp://e.com/0.jpg,a cat,n/a\nhttp://e.com/1.jpg,a dog,0.2\n"
    )
    layout = layout_of(InputConfig(format="csv", url_col="url", caption_col="caption"))
    for reader in ("spark", "fsspec"):
        rows = read_metadata(spark, [str(path)], layout, reader).orderBy("URL").collect()
        assert [r["punsafe"] for r in rows] == [None, 0.2], reader


def test_a_header_row_that_is_not_utf8_is_a_clear_error(tmp_path, spark):
    path = tmp_path / "latin-header.csv"
    path.write_bytes(b"url,capti\xe9n\nhttp://e.com/0.jpg,a cat\n")
    layout = layout_of(InputConfig(format="csv", url_col="url", caption_col="caption"))
    with pytest.raises(MetadataError, match="column names are not UTF-8"):
        read_metadata(spark, [str(path)], layout, "fsspec")
