"""Rule filters as Spark column expressions; each rule's drop count is recorded.

A row is attributed to the first rule it fails, so the counts add up to the rows dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipeline.config import FilterConfig


@dataclass(frozen=True)
class Rule:
    name: str
    keep: Column  # true where the row passes
    params: dict


def build_rules(config: FilterConfig) -> list[Rule]:
    """The enabled rules, in the order a row is checked against them."""
    return [*_caption_rules(config), *_image_rules(config), *_tag_rules(config)]


def _caption_rules(config: FilterConfig) -> list[Rule]:
    text = F.col("TEXT")
    rules = [
        Rule("missing_url", F.col("URL").isNotNull() & F.col("URL").rlike(r"^https?://"), {}),
        Rule("missing_caption", text.isNotNull(), {}),
        Rule(
            "caption_length",
            F.length(text).between(config.min_caption_chars, config.max_caption_chars),
            {"min_chars": config.min_caption_chars, "max_chars": config.max_caption_chars},
        ),
    ]
    words = F.size(F.split(text, r"\s+"))
    if config.min_caption_words or config.max_caption_words:
        upper = config.max_caption_words or 1_000_000
        rules.append(
            Rule(
                "caption_words",
                words.between(config.min_caption_words, upper),
                {"min_words": config.min_caption_words, "max_words": config.max_caption_words},
            )
        )
    return rules


def _image_rules(config: FilterConfig) -> list[Rule]:
    """Rules on the metadata's image size; a row without a size passes (checked on fetch)."""
    width, height = F.col("WIDTH"), F.col("HEIGHT")
    unknown_size = width.isNull() | height.isNull()
    rules = []
    if config.min_image_side:
        rules.append(
            Rule(
                "image_side",
                unknown_size | (F.least(width, height) >= config.min_image_side),
                {"min_side": config.min_image_side},
            )
        )
    if config.max_aspect_ratio:
        ratio = F.greatest(width, height) / F.least(width, height)
        rules.append(
            Rule(
                "aspect_ratio",
                unknown_size | (ratio <= config.max_aspect_ratio),
                {"max_ratio": config.max_aspect_ratio},
            )
        )
    return rules


def _tag_rules(config: FilterConfig) -> list[Rule]:
    """Rules on the metadata's tags and scores: NSFW, language, LAION-5B's unsafe and
    watermark probabilities, CLIP similarity."""
    rules = []
    if config.nsfw_allowed:
        allowed = [tag.upper() for tag in config.nsfw_allowed]
        rules.append(
            Rule("nsfw", F.col("NSFW").isNull() | F.col("NSFW").isin(allowed), {"allowed": allowed})
        )
    if config.languages:
        from pipeline.language import language_column

        wanted = [code.strip().lower() for code in config.languages]
        language = language_column(config.detect_language)
        keep = (
            language.isin(wanted)
            if config.detect_language
            else (language.isNull() | language.isin(wanted))
        )
        rules.append(
            Rule(
                "language",
                keep,
                {"languages": wanted, "detected_when_missing": config.detect_language},
            )
        )
    for name in ("punsafe", "pwatermark"):
        limit = getattr(config, f"max_{name}")
        if limit:
            keep = F.col(name).isNull() | (F.col(name) <= limit)
            rules.append(Rule(name, keep, {f"max_{name}": limit}))
    if config.min_similarity:
        rules.append(
            Rule(
                "similarity",
                F.col("similarity") >= config.min_similarity,
                {"min_similarity": config.min_similarity},
            )
        )
    return rules


def apply_rules(df: DataFrame, rules: list[Rule]) -> tuple[DataFrame, dict[str, int]]:
    """Tag each row with the first rule it fails; return the kept rows and drops per rule.

    The tagged frame is cached so counting and writing read the input once.
    """
    reason = F.lit(None).cast("string")
    for rule in reversed(rules):
        reason = F.when(~F.coalesce(rule.keep, F.lit(False)), F.lit(rule.name)).otherwise(reason)
    tagged = df.withColumn("_drop_reason", reason).cache()
    counts = {
        row["_drop_reason"]: row["count"]
        for row in tagged.groupBy("_drop_reason").count().collect()
    }
    drops = {rule.name: int(counts.get(rule.name, 0)) for rule in rules}
    drops["_kept"] = int(counts.get(None, 0))
    kept = tagged.filter(F.col("_drop_reason").isNull()).drop("_drop_reason")
    return kept, drops
