#!/usr/bin/env bash
# The GPU benchmark suite in one command (≤ 9 minutes on one H100/H200), from the repository root:
#
#   bash benchmarks/gpu_suite.sh            # on the GPU machine, with .whl/ carried along
#   BENCH_SMOKE=1 bash benchmarks/gpu_suite.sh   # here, on the CPU: tiny models, checks the logic
#
# Needs python3 with torch + CUDA (torchvision, timm, transformers, regex, numpy, safetensors there).
# open_clip and ftfy come as wheels from .whl/ (see benchmarks/README section in gpu_suite.py's
# report): installed with --no-deps into /tmp/site. Writes $OUT/gpu_results.json, gpu_results.md and
# gpu_suite.log (OUT defaults to benchmarks/results/gpu). BENCH_BUDGET_S (default 480) is the time
# guard for the workloads; the whole python run is also killed at BENCH_TIMEOUT_S (default 560).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
LOG="$OUT/gpu_suite.log"
PY="${PYTHON:-python3}"

{
  echo "== environment $(date -Is)"
  uname -a
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  nproc
  "$PY" --version
} 2>&1 | tee "$LOG"

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    2>&1 | tail -3 | tee -a "$LOG"
  export PYTHONPATH="/tmp/site:src${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no .whl/ wheels: open_clip comparisons run only if open_clip is already importable" | tee -a "$LOG"
  export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())
for m in ('open_clip', 'transformers', 'torchvision', 'timm', 'ftfy', 'clipforge'):
    try: print(m, __import__(m).__version__)
    except Exception as e: print(m, 'unavailable:', e)" 2>&1 | tee -a "$LOG"

timeout "${BENCH_TIMEOUT_S:-560}" "$PY" benchmarks/gpu_suite.py 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "== gpu_suite.py exit $rc ($(date -Is)); files in $OUT:" | tee -a "$LOG"
ls -la "$OUT" | tee -a "$LOG"
exit "$rc"
