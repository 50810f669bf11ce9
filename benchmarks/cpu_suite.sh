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
SUFFIX=
if [ "${CPU_SUITE_NOFAULT:-0}" = 1 ]; then
    # Every variant without page faults: glibc serves all blocks from a heap it never trims, so large
    # activations are not mapped in afresh on each call. By default open_clip's eager towers fault
    # ~1.8 GB per ViT-B/32 batch of 64 while clipforge's pieces stay below the mmap threshold; this
    # mode compares the arithmetic alone. Results get the suffix _nofault.
    export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736
    SUFFIX=_nofault
fi

# Inference, fp32: 'ours:' is the default model (pieces on concurrent single-threaded streams, last
# block reads one token), 'serial' runs the pieces one after another on both threads, 'whole' in
# one piece, 'compile' is optimize_for_inference(compile=True).
run benchmarks/bench_inference.py --models demo-rn --batch 256 --towers image text \
    --variants ours: ours:serial ours:fold,cl,trim ours:fold,cl,trim,compile open_clip: \
    --rounds 4 --iters 5 --out "$OUT" --name cpu_inference_demo$SUFFIX
run benchmarks/bench_inference.py --models ViT-B/32 --batch 64 --towers image \
    --variants ours: ours:serial ours:compile open_clip: --rounds 4 --iters 4 --out "$OUT" --name cpu_inference_vitb32_image$SUFFIX
run benchmarks/bench_inference.py --models ViT-B/32 --batch 64 --towers text \
    --variants ours: ours:serial ours:trim open_clip: --rounds 3 --iters 4 --out "$OUT" --name cpu_inference_vitb32_text$SUFFIX
run benchmarks/bench_inference.py --models RN50 --batch 32 --towers image \
    --variants ours: ours:serial ours:fold,cl open_clip: --rounds 2 --iters 3 --out "$OUT" --name cpu_inference_rn50$SUFFIX
[ "${CPU_SUITE_TRAIN:-1}" = 1 ] || exit 0  # CPU_SUITE_TRAIN=0: inference only

# Training step, fp32 (forward, loss, backward, AdamW).
run benchmarks/bench_train.py --models demo-rn ViT-B/32 --batch 128 16 \
    --variants ours: ours:trim,cl,fused open_clip: --rounds 2 --warmup 1 --iters 3 --out "$OUT" --name cpu_train$SUFFIX
