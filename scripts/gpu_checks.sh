#!/usr/bin/env bash
# One lent GPU session's checks, in the brief's order: the app's path at the real models' scale (gpu-app), then
# bench-gpu with the FLOP-weighted groups. Run from the repository root on the device machine; wheels for diffusers
# (and, if the image's transformers does not import diffusers' pipelines, transformers) in .whl/. Output to $OUT.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .whl/diffusers-*.whl .whl/importlib_metadata-*.whl || exit 1
probe='from diffusers import QwenImagePipeline, FluxPipeline, StableDiffusion3Pipeline'
python3 -c "$probe" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --target /tmp/site .whl/transformers-*.whl
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/gpu_env.txt"
timeout "${APP_S:-300}" python3 -m layercache gpu-app --models qwen-image,flux-dev,sd35-medium --steps 50 \
  --budget 0.5 --groups 4 2>&1 | tee "$OUT/gpu_app.txt"
timeout "${BENCH_S:-180}" python3 -m layercache bench-gpu 2>&1 | tee "$OUT/bench_gpu.txt"
