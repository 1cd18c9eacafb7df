#!/usr/bin/env bash
# Run where pip reaches PyPI, before the GPU machine's run. Writes .device_inputs/ (git-ignored):
# - wheels of the packages the GPU checks need that the GPU machine's image lacks (it has
#   torch, timm, huggingface_hub, safetensors, regex, tqdm, scikit-learn; nothing can be fetched
#   there), pinned as in requirements.lock, all pure Python;
# - probe_features.pt: Fashion-MNIST features of a checkpoint (default: the demo's newest), so
#   the linear probe comparison runs there without the dataset or the model;
# - caption_tokens.pt: the demo corpus's training captions, tokenized, so that the step
#   comparison there sees real caption lengths.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEMO=runs/demo/train/checkpoints
CHECKPOINT=${1:-}
if [ -z "$CHECKPOINT" ] && [ -f $DEMO/LATEST ]; then CHECKPOINT=$DEMO/$(cat $DEMO/LATEST); fi
rm -rf .device_inputs && mkdir -p .device_inputs/wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .device_inputs/wheels \
    open_clip_torch==2.32.0 ftfy==6.3.1 wcwidth==0.9.4 clip-benchmark==1.6.2
if [ -n "$CHECKPOINT" ]; then
    .venv/bin/python benchmarks/linear_probe_vs_clip_benchmark.py "$CHECKPOINT" \
        --save-features .device_inputs/probe_features.pt
else
    echo "no checkpoint (run make demo, or give one): the probe comparison will be skipped"
fi
.venv/bin/python -c "
import sys, open_clip, torch
sys.path.insert(0, 'benchmarks')
from bench_common import demo_caption_tokens
torch.save(demo_caption_tokens(open_clip.get_tokenizer('ViT-B-16')), '.device_inputs/caption_tokens.pt')
"
du -sh .device_inputs
