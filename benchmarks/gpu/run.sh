#!/usr/bin/env bash
# Device call 2 of 2 (see prepare.sh): install what the image lacks, then the GPU tests and benchmarks; logs and
# benchmark JSON under $OUT.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/b/*.whl || exit 3
if [ -f /tmp/stash/faiss.xz.part00 ]; then
  cat /tmp/stash/faiss.xz.part00 .gpu/b/faiss.xz.part01 | xz -dc -T0 | tar xf - -C /tmp/site && echo "faiss-cuda unpacked"
else
  echo "NO STASH: faiss missing (the machine was not the warm one)"
fi
export PYTHONPATH=$PWD/src:$PWD:/tmp/site
python3 -c "import faiss; print('faiss', faiss.__version__, 'gpus', faiss.get_num_gpus())" 2>&1 | tail -2
date -u
echo "=== gpu tests (strict warnings)"
T="tests/encode/test_encoders.py tests/index/test_chunk_index.py tests/segment/test_yolo.py tests/test_search.py"
set -o pipefail
timeout 150 python3 -m pytest $T -m gpu -q -rs --timeout 180 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
rc=$?
set +o pipefail
echo "strict rc=$rc"
if [ $rc -ne 0 ]; then
  echo "=== gpu tests again, third-party warnings tolerated"
  timeout 100 python3 -m pytest $T -m gpu -q -rs --timeout 90 -W "default::DeprecationWarning" -W "default::FutureWarning" -W "default::UserWarning" 2>&1 | tee "$OUT/gpu_tests_tolerant.log" | tail -40
fi
date -u
echo "=== gpu benchmarks: encoders, 1M search, facade"
timeout 180 python3 -m pytest benchmarks/test_bench_gpu.py -m "gpu and not slow" -q --benchmark-enable \
  --benchmark-json="$OUT/bench_gpu.json" --benchmark-columns=min,median,max,rounds --benchmark-sort=name \
  -W "default::DeprecationWarning" -W "default::FutureWarning" -W "default::UserWarning" 2>&1 | tee "$OUT/bench_gpu.log" | tail -70
date -u
echo "=== gpu benchmarks: 10M search"
timeout 120 python3 -m pytest benchmarks/test_bench_gpu.py -m "gpu and slow" -q --benchmark-enable \
  --benchmark-json="$OUT/bench_gpu_10m.json" --benchmark-columns=min,median,max,rounds --benchmark-sort=name \
  -W "default::DeprecationWarning" 2>&1 | tee "$OUT/bench_gpu_10m.log" | tail -25
date -u
