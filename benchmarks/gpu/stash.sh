#!/usr/bin/env bash
# Device call 1 of 2 (see prepare.sh): keep the first half of faiss-cuda on the machine, and say what it is.
set -u
mkdir -p /tmp/stash && cp .gpu/a/faiss.xz.part00 /tmp/stash/ && echo "stashed"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
lscpu | grep -E "Model name|^CPU\(s\)"; free -g | head -2
python3 -c "import sys,torch,transformers,numpy;print(sys.version.split()[0],torch.__version__,torch.version.cuda,transformers.__version__,numpy.__version__)"
