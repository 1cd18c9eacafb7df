"""A few retrieval queries with their top images, for the report: what a person looks at to see
what the model retrieves, beside the recall figures."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

QUERIES = 3
TOP = 5
THUMBNAIL_PX = 96


def thumbnail_uri(image: Image.Image) -> str:
    """A small JPEG of ``image`` as a data URI, to embed in an HTML page."""
    small = image.convert("RGB")
    small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def retrieval_examples(
    images: list,
    kept: np.ndarray,
    captions: list[str],
    caption_image: np.ndarray,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
) -> list[dict]:
    """The first ``QUERIES`` captions with their ``TOP`` images by similarity. ``kept``: the
    dataset indices of the images that have features (row i of ``image_features`` is image
    ``kept[i]``); ``caption_image``: each caption's image as a row of ``image_features``."""
    queries = min(QUERIES, len(captions))
    if queries == 0 or len(kept) == 0:
        return []
    scores = text_features[:queries].float() @ image_features.float().T
    top = scores.topk(min(TOP, len(kept)), dim=1).indices.tolist()
    return [
        {
            "caption": captions[q],
            "images": [thumbnail_uri(images[int(kept[row])]) for row in rows],
            "correct": [row == int(caption_image[q]) for row in rows],
        }
        for q, rows in enumerate(top)
    ]
