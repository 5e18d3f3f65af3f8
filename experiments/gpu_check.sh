#!/usr/bin/env bash
# The GPU checks in one run, for a machine with CUDA whose python3 already holds torch (CI has no GPU and never
# runs this). Installs the package (and, where a .whl/ folder of wheels travels with the tree, the dependencies
# that machine lacks) into a private folder, then:
#   1. the CUDA tests (tests/search/test_cuda.py, marker `gpu`),
#   2. a real search from the CLI on the GPU (digits-cnn, warm start auto, no MLflow),
#   3. experiments/bench_gpu.py with the script's arguments (GPU against CPU: teacher training, whole trials,
#      agreement; its results are written after each task),
#   4. the same for digits-cnn with every width 4x larger, plus real searches with 1 and 4 CUDA workers and 16
#      CPU workers, merged into the same gpu.json (about 7 min for all four steps on one H200).
# Everything it reports lands in $OUT (default out/gpu): env.txt, gpu_tests.log, gpu.json, gpu.md, bench.log,
# search.log, search_summary.json.
set -uo pipefail
OUT=${OUT:-out/gpu}
SITE=${SITE:-/tmp/metacompress-site}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 METACOMPRESS_CACHE=${METACOMPRESS_CACHE:-/tmp/metacompress-cache}
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0

wheels=()
[ -d .whl ] && wheels=(.whl/*.whl)
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${wheels[@]}" . || { echo "install failed"; exit 1; }
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}

{ nvidia-smi -L; python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, \
torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"; \
  nproc; } 2>&1 | tee "$OUT/env.txt"

status=0
python3 -m pytest -p no:cacheprovider -q -m gpu tests/search/test_cuda.py 2>&1 | tee "$OUT/gpu_tests.log" || status=1
rm -rf /tmp/metacompress-gpu-search && mkdir -p /tmp/metacompress-gpu-search
python3 -c "from metacompress.search.cli import main; main()" search experiments/configs/digits-cnn.yaml \
    --trials 8 --tracking-uri none --storage sqlite:////tmp/metacompress-gpu-search/study.db \
    --out /tmp/metacompress-gpu-search/out 2>&1 | tee "$OUT/search.log" || status=1
cp /tmp/metacompress-gpu-search/out/summary.json "$OUT/search_summary.json" 2>/dev/null || status=1
out=$(realpath "$OUT")
(cd experiments && python3 bench_gpu.py --out "$out" "$@") 2>&1 | tee "$OUT/bench.log" || status=1
(cd experiments && python3 bench_gpu.py --tasks --wide 4 --policies 3 --repeats 1 --latency-repeats 5 \
    --searches cuda:1 cuda:4 cpu:16 --merge "$out/gpu.json" --out "$out") 2>&1 | tee -a "$OUT/bench.log" || status=1
exit $status
