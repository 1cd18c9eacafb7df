"""Caption language detection for the language rule, where the metadata has no LANGUAGE.

langid.py's model ships inside its package (nothing is downloaded). Measured ~1,000 captions/s
per core: fine for a corpus of millions, hours of cluster time for LAION-scale metadata, so it
runs only when the language rule is on, and only a LANGUAGE column given by the metadata is free.
"""

from __future__ import annotations

import functools

import pandas as pd
from pyspark.sql import Column
from pyspark.sql import functions as F


@functools.lru_cache(maxsize=1)
def _identifier():
    from langid.langid import LanguageIdentifier, model

    return LanguageIdentifier.from_modelstring(model, norm_probs=False)


def detect(text: str | None) -> str | None:
    """ISO 639-1 code of the caption's language, or None for an empty caption."""
    if not text or not text.strip():
        return None
    return _identifier().classify(text)[0]


def detect_series(texts: pd.Series) -> pd.Series:
    return texts.map(detect)


def language_column(detect_missing: bool) -> Column:
    """The metadata's LANGUAGE where given; else, if asked, the detected language."""
    given = F.col("LANGUAGE")
    if not detect_missing:
        return given
    # Made here, not at import: executors import this module without a SparkContext.
    detected = F.pandas_udf(detect_series, "string")(F.col("TEXT"))
    return F.coalesce(given, detected)
