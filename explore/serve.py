"""Serve the index with clip-retrieval's back end, which also serves its bundled front end."""

from __future__ import annotations

import json
from pathlib import Path

# what the back end returns per result: the image file (inlined by the back end), the caption,
# the sample's key; no "url" column, so the front end shows the inlined image, not the source
COLUMNS = ["image_path", "caption", "key"]
INDEX_NAME = "shards"


def write_indices_paths(out_dir: Path, index: Path) -> Path:
    path = out_dir / "indices_paths.json"
    path.write_text(json.dumps({INDEX_NAME: str(index)}))
    return path


def serve(indices_paths: Path, clip_model: str, port: int) -> None:
    """Blocks until interrupted. Options that would fetch models from the internet (multilingual
    text encoder, aesthetic and safety models) are off."""
    from clip_retrieval.clip_back import clip_back

    clip_back(
        indices_paths=str(indices_paths),
        port=port,
        clip_model=clip_model,
        columns_to_return=COLUMNS,
        enable_mclip_option=False,
        use_jit=False,
        provide_safety_model=False,
        provide_violence_detector=False,
        provide_aesthetic_embeddings=False,
    )
