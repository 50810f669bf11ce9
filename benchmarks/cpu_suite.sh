#!/usr/bin/env bash
# The CPU comparison with open_clip and transformers (issue 8's CPU targets), in one go.
# Run on a quiet machine (nothing else on the cores): each variant runs in a fresh process and the
# rounds alternate implementations, but other load still distorts absolute figures.
# Needs a venv where clipforge and open_clip import on the same torch (see benchmarks/README.md):
#   PY=/work/ocvenv/bin/python bash benchmarks/cpu_suite.sh        (about 50 minutes on 2 cores)
set -euo pipefail
PY=${PY:-python}
OUT=${OUT:-benchmarks/results}
cd "$(dirname "$0")/.."
run() { echo "+ $*" >&2; "$PY" "$@"; }

# Inference, fp32: 'ours:' is the default model (pieces on concurrent single-threaded streams, last
# block reads one token), 'serial' runs the pieces one after another on both threads, 'whole' in
# one piece, 'compile' is optimize_for_inference(compile=True).
run benchmarks/bench_inference.py --models demo-rn --batch 256 --towers image text \
    --variants ours: ours:serial ours:fold,cl,trim ours:fold,cl,trim,compile open_clip: \
    --rounds 4 --iters 5 --out "$OUT" --name cpu_inference_demo
run benchmarks/bench_inference.py --models ViT-B/32 --batch 64 --towers image \
    --variants ours: ours:serial ours:compile open_clip: --rounds 4 --iters 4 --out "$OUT" --name cpu_inference_vitb32_image
run benchmarks/bench_inference.py --models ViT-B/32 --batch 64 --towers text \
    --variants ours: ours:serial ours:trim open_clip: --rounds 3 --iters 4 --out "$OUT" --name cpu_inference_vitb32_text
run benchmarks/bench_inference.py --models RN50 --batch 32 --towers image \
    --variants ours: ours:serial ours:fold,cl open_clip: --rounds 2 --iters 3 --out "$OUT" --name cpu_inference_rn50
[ "${CPU_SUITE_TRAIN:-1}" = 1 ] || exit 0  # CPU_SUITE_TRAIN=0: inference only

# Training step, fp32 (forward, loss, backward, AdamW).
run benchmarks/bench_train.py --models demo-rn ViT-B/32 --batch 128 16 \
    --variants ours: ours:trim,cl,fused open_clip: --rounds 2 --warmup 1 --iters 3 --out "$OUT" --name cpu_train
