#!/usr/bin/env bash
# Everything that needs a CUDA device, in one run (a few minutes on one GPU; none of it runs in
# CI, which has no GPU). Writes its logs to $OUT, or runs/gpu_check when OUT is unset:
#   1. tests/test_gpu.py: no attention call falls back to SDPA's math kernel, a batch without
#      padding decodes on flash alone, a training step makes no host sync;
#   2. bench/benchmark.py on the GPU (bf16 autocast; no Multi30k epoch, as ../shared may be absent);
#   3. the quick start's training in bf16, plain (one process) and through accelerate's FSDP launch
#      (accelerate_config.yaml), each checked to have logged "bf16 on cuda".
# Needs the packages of requirements.txt. A machine without `datasets` can take its wheels, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
out="${OUT:-runs/gpu_check}"
mkdir -p "$out"

"$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch; nothing to check")
import datasets  # noqa: F401  (fails here, not mid-run, when the wheels above are missing)
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, bf16: {torch.cuda.is_bf16_supported()}")
EOF

echo "== 1. tests/test_gpu.py"
"$PY" -m pytest -q -rs tests/test_gpu.py 2>&1 | tee "$out/test_gpu.log"

echo "== 2. bench/benchmark.py on cuda"
"$PY" bench/benchmark.py --device cuda --pairs 0 --json "$out/benchmark.json" 2>&1 \
    | tee "$out/benchmark.log"

echo "== 3. quick start training in bf16: one process, then FSDP through accelerate"
"$PY" quickstart_data.py --out data/quickstart
"$PY" train.py --config configs/quickstart.json --mixed_precision bf16 \
    --output_dir runs/gpu_check_plain 2>&1 | tee "$out/train_plain.log"
"$PY" -m accelerate.commands.launch --config_file accelerate_config.yaml train.py \
    --config configs/quickstart.json --output_dir runs/gpu_check_fsdp 2>&1 \
    | tee "$out/train_fsdp.log"
for log in "$out/train_plain.log" "$out/train_fsdp.log"; do
    grep -q "bf16 on cuda" "$log" || { echo "gpu_check: $log does not say 'bf16 on cuda'"; exit 1; }
done
echo "gpu_check: all passed; logs in $out"
