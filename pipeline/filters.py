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
    length = F.length(F.col("TEXT"))
    return [
        Rule("missing_url", F.col("URL").isNotNull() & F.col("URL").rlike(r"^https?://"), {}),
        Rule("missing_caption", F.col("TEXT").isNotNull(), {}),
        Rule(
            "caption_length",
            length.between(config.min_caption_chars, config.max_caption_chars),
            {"min_chars": config.min_caption_chars, "max_chars": config.max_caption_chars},
        ),
    ]


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
