#!/usr/bin/env bash
# Issue 12 on a lent GPU: train the candidate bundled models to (near) the bundled model's length, in parallel,
# then measure each one's heterogeneity ratio and fidelity on the machine's CPUs. Run from the repository root
# on the device machine (wheels for diffusers and mlxtend in .whl/, see docs/candidates.md); $OUT gets one log
# and the chosen candidates' EMA weights as tar chunks (at most 16 MiB each).
set -u
MIN=${MIN:-4.5}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
R=/tmp/runs
train() {  # NAME ARCH...
  local name=$1; shift
  python3 -m layercache train "$@" --device cuda --steps 6000 --batch 256 --max-minutes "$MIN" --ckpt-every 1000 \
    --run-dir $R/$name --out $R/$name/final > $R/$name.train.log 2>&1
}
measure() {  # NAME
  local name=$1
  OMP_NUM_THREADS=4 python3 -m layercache explore --weights $R/$name/final --steps 30 --groups 4 > $R/$name.explore.log 2>&1
  OMP_NUM_THREADS=4 python3 -m layercache fidelity --weights $R/$name/final > $R/$name.fidelity.log 2>&1
}
mkdir -p $R
NAMES="flux4+8 flux4+8_seed1 flux8+16x64 sd3_12x128"
train flux4+8 --family flux --layers 4 --single-layers 8 &
train flux4+8_seed1 --family flux --layers 4 --single-layers 8 --seed 1 &
train flux8+16x64 --family flux --layers 8 --single-layers 16 --head-dim 16 &
train sd3_12x128 --family sd3 &
wait
for n in $NAMES; do measure $n & done
wait
for n in $NAMES; do
  for kind in train explore fidelity; do echo "===== $n $kind"; tail -n 40 $R/$n.$kind.log; done
done 2>&1 | tee $OUT/log.txt
cd $R && tar cf /tmp/weights.tar flux4+8/final flux8+16x64/final sd3_12x128/final && split -b 15M /tmp/weights.tar $OUT/weights.tar.part-
ls -la $OUT
