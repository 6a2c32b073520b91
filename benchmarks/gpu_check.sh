#!/usr/bin/env bash
# The gpu preset's measurements on a machine with a CUDA GPU, in one command (what the README's
# "The gpu preset on a T4 (estimated)" section lacks): the CUDA tests, `python -m helpers run
# --preset gpu` on the full-size demo (stage times, checkpoint bytes: the run summary; images/s, peak
# GPU memory, checkpoint MB per training: `python -m helpers compare`), then the cached engine against
# a DataLoader pipeline (benchmarks/bench_training.py).
#
#     bash benchmarks/gpu_check.sh [REPORT_DIR] [RUN_DIR]
#
# REPORT_DIR (default gpu_check) receives the small text reports; RUN_DIR (default /tmp/gpu_run)
# holds the run itself (caches, checkpoints: several GB), so that a second call resumes the run
# where a time limit stopped the first. RUN_SECONDS (default 1800) bounds the run; the benchmark
# and the reports follow either way. PRESET=smoke IMSUB_DEMO_FULL=0 BENCH_IMAGES=64 tries the script
# itself in a minute on a CPU. Where Jupyter is not installed (nbclient, ipykernel), wheels in
# .whl/ are installed to /tmp/site first (see `pip download` in the developers' device notes).
set -uo pipefail
REPORT=${1:-gpu_check}
RUN=${2:-/tmp/gpu_run}
mkdir -p "$REPORT" "$RUN"
PY=${PYTHON:-python3}
PRESET=${PRESET:-gpu}
if ! "$PY" -c "import nbclient, ipykernel" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$REPORT/gpu.txt" 2>&1
nproc >>"$REPORT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" >>"$REPORT/gpu.txt" 2>&1

echo "== tests/test_cuda.py"
"$PY" -m pytest -q tests/test_cuda.py 2>&1 | tail -n 30 | tee "$REPORT/test_cuda.txt"

echo "== python -m helpers run --preset $PRESET (IMSUB_DEMO_FULL=${IMSUB_DEMO_FULL:-1}: the full-size demo)"
start=$(date +%s)
IMSUB_DEMO_FULL=${IMSUB_DEMO_FULL:-1} timeout "${RUN_SECONDS:-1800}" "$PY" -m helpers run --preset "$PRESET" --out "$RUN" >"$REPORT/run.log" 2>&1
echo "exit $? after $(($(date +%s) - start)) s" | tee -a "$REPORT/run.log"
tail -n 40 "$REPORT/run.log"
folder=$(dirname "$(find "$RUN/runs" -name summary.json -path "*$PRESET*" | head -n 1)")
"$PY" -m helpers compare "$folder" 2>&1 | tee "$REPORT/compare.txt"
du -sh "$folder" "$RUN"/cache 2>/dev/null | tee -a "$REPORT/compare.txt"

echo "== benchmarks/bench_training.py (cached engine vs DataLoader)"
"$PY" benchmarks/bench_training.py --preset "$PRESET" --epochs 3 --images "${BENCH_IMAGES:-2048}" --classes 50 \
    --workers "$(nproc)" 2>&1 | tail -n 25 | tee "$REPORT/bench_training.txt"
