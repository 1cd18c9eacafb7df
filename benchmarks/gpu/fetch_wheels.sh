#!/usr/bin/env bash
# Run HERE (where pip reaches PyPI) before a device call: the packages the GPU benchmark needs
# that the device machine's image lacks (it has torch, timm, huggingface_hub, safetensors,
# regex, tqdm; nothing can be fetched there). Pure-Python wheels, pinned as in requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl \
    open_clip_torch==2.32.0 ftfy==6.3.1 wcwidth==0.9.4
ls -l .whl
