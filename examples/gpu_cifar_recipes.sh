#!/usr/bin/env bash
# The CIFAR-10 recipes on one CUDA GPU, as one prepared script (not run on a GPU yet: no GPU
# was available to the session that wrote it; see issue 14's closing note).
#   1. time one epoch of each recipe first (a few hundred batches; quiet machine),
#   2. Wong et al.'s FGSM-RS (15 epochs) and FGSM-SDI's 30-epoch cyclic variant, AutoAttack
#      standard on 1,000 test images, verdict against RobustBench / Jia et al.
# bf16 autocast of the training step and channels-last: --amp bf16 --channels-last.
# --no-verify-checksums only for a re-packed CIFAR-10 copy (../shared/data's).
set -euo pipefail
OUT=${OUT:-runs/gpu-recipes}
python benchmarks/bench_recipes.py wong2020-cifar10-fgsm-rs jia2022-cifar10-fgsm-sdi-short \
    --subset 10000 --repeats 1 --device cuda --amp bf16 --channels-last --no-verify-checksums \
    --out "$OUT/bench.json"
advplug reproduce wong2020-cifar10-fgsm-rs jia2022-cifar10-fgsm-sdi-short --seeds 0 --n-eval 1000 \
    --amp bf16 --channels-last --device cuda --no-verify-checksums --no-progress --out "$OUT"
