#!/usr/bin/env bash
# Issue 13 on a lent GPU: the app's two-lane runner at the real models' scale (random bf16 weights, no download).
# Run from the repository root; one H100/H200 (80 GB class) holds each model in turn. Prints one table row per model.
set -eu
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -m layercache gpu-app --models qwen-image,flux-dev,sd35-medium --steps 50 --budget 0.5 --groups 4 2>&1 | tee "${OUT:-.}/gpu_app.txt"
