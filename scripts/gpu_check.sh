#!/usr/bin/env bash
# Everything that needs a CUDA device, in one run (a few minutes on one GPU; none of it runs in
# CI, which has no GPU). Every section runs even when one before it fails (a lent GPU may not
# come again); a summary at the end, exit 1 if any failed. Logs go to $OUT, else runs/gpu_check:
#   1. tests/test_gpu.py: no attention call falls back to SDPA's math kernel, a batch without
#      padding decodes on flash alone, cached decoding holds under FSDP in bf16, a training step
#      makes no host sync;
#   2. bench/benchmark.py on the GPU (bf16 autocast; with its Multi30k epoch when
#      ../shared/data/multi30k is there);
#   3. the quick start's training in bf16, plain (one process) and through accelerate's FSDP launch
#      (accelerate_config.yaml), checked to have logged "bf16 on cuda, 1 process" and "bf16 on
#      cuda, FSDP over ...", and to agree on greedy val BLEU, then translate.py (bf16 decoding),
#      evaluate.py on its output, and evaluate.py decoding the plain run itself (fp32, default);
#   4. when ../shared/data/multi30k is there: the first 4 epochs of the bf16 Multi30k recipe
#      (configs/multi30k_bf16.json) on the GPU, to set its pace and per-epoch val loss and
#      greedy val BLEU beside a CPU run's (the learning rate is the same until the cooldown).
# SECTIONS="1 3" runs only those (default: all four).
# Needs requirements.txt's packages. Wheels in .whl/ are installed first (to /tmp/site), for a
# machine without `datasets`; fetch them where pip works, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
out="${OUT:-runs/gpu_check}"
mkdir -p "$out"
failed=()
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

"$PY" - <<'EOF' || exit 1
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch; nothing to check")
import accelerate, datasets, fsspec, pyarrow, sacrebleu, transformers  # noqa: E401,F401
import data  # noqa: F401  (the repository's own imports, before any section runs)
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, cuDNN "
      f"{torch.backends.cudnn.version()}, bf16: {torch.cuda.is_bf16_supported()}; "
      f"transformers {transformers.__version__}, accelerate {accelerate.__version__}, "
      f"datasets {datasets.__version__}, pyarrow {pyarrow.__version__}, fsspec {fsspec.__version__}")
EOF

sections="${SECTIONS:-1 2 3 4}"
for s in $sections; do
    [[ "$s" =~ ^[1-4]$ ]] || { echo "gpu_check: SECTIONS: '$s' is not one of 1 2 3 4" >&2; exit 2; }
done
want() { [[ " $sections " == *" $1 "* ]]; }
m30k=../shared/data/multi30k
have_m30k() {
    for f in {train,val,test_2016_flickr}.{en,de}.gz; do [ -f "$m30k/$f" ] || return 1; done
}

if want 1; then
    echo "== 1. tests/test_gpu.py"
    "$PY" -m pytest -q -rs tests/test_gpu.py 2>&1 | tee "$out/test_gpu.log"
    [ "${PIPESTATUS[0]}" = 0 ] && grep -qw "6 passed" "$out/test_gpu.log" || failed+=(test_gpu)
fi

if want 2; then
    echo "== 2. bench/benchmark.py on cuda"
    pairs=0
    have_m30k && pairs=4000
    "$PY" bench/benchmark.py --device cuda --pairs "$pairs" --json "$out/benchmark.json" 2>&1 \
        | tee "$out/benchmark.log" || failed+=(benchmark)
fi

if want 3; then
    echo "== 3. quick start training in bf16: one process, then FSDP through accelerate"
    "$PY" quickstart_data.py --out data/quickstart > /dev/null || failed+=(quickstart_data)
    rm -rf runs/gpu_check_plain runs/gpu_check_fsdp  # fresh runs (train.py refuses old ones)
    "$PY" train.py --config configs/quickstart.json --mixed_precision bf16 \
        --output_dir runs/gpu_check_plain 2>&1 | tee "$out/train_plain.log" || failed+=(train_plain)
    "$PY" -m accelerate.commands.launch --config_file accelerate_config.yaml train.py \
        --config configs/quickstart.json --output_dir runs/gpu_check_fsdp 2>&1 \
        | tee "$out/train_fsdp.log" || failed+=(train_fsdp)
    # the log line names precision, device and what really ran (accelerate can fall back silently)
    grep -q "bf16 on cuda, 1 process" "$out/train_plain.log" || failed+=(bf16_on_cuda_plain)
    grep -q "bf16 on cuda, FSDP over" "$out/train_fsdp.log" || failed+=(bf16_fsdp_on_cuda)
    # FSDP and one process train the same model: their last greedy val BLEU must agree (a decoding
    # cache lost under FSDP once gave 1.5 against 98.7), and the quick start must be learnt
    bleu() { grep -a -o "valid_bleu [0-9.]*" "$1" | tail -n 1 | cut -d" " -f2; }
    plain=$(bleu "$out/train_plain.log") fsdp=$(bleu "$out/train_fsdp.log")
    echo "valid_bleu: one process ${plain:-none}, FSDP ${fsdp:-none}"
    awk -v a="$plain" -v b="$fsdp" 'BEGIN { exit !(a > 50 && b > 50 && a-b < 2 && b-a < 2) }' \
        || failed+=(fsdp_valid_bleu)
    "$PY" translate.py --checkpoint runs/gpu_check_plain --input data/quickstart/test.en \
        --output "$out/test.hyp.de" --mixed_precision bf16 2>&1 | tail -n 3 || failed+=(translate)
    "$PY" evaluate.py --hypotheses "$out/test.hyp.de" --reference data/quickstart/test.de 2>&1 \
        | tee "$out/evaluate.log" || failed+=(evaluate)
    "$PY" evaluate.py --checkpoint runs/gpu_check_plain --source data/quickstart/test.en \
        --reference data/quickstart/test.de 2>&1 | tee "$out/evaluate_fp32.log" \
        || failed+=(evaluate_fp32)
fi

if want 4 && have_m30k; then
    echo "== 4. the bf16 Multi30k recipe's first 4 epochs on cuda"
    rm -rf runs/gpu_m30k
    "$PY" train.py --config configs/multi30k_bf16.json --epochs 4 --output_dir runs/gpu_m30k \
        --log_with null --fit_steps_to_time false 2>&1 | tee "$out/train_multi30k.log" \
        || failed+=(train_multi30k)  # the config's schedule, comparable with the CPU's epochs
    grep -q "bf16 on cuda, 1 process" "$out/train_multi30k.log" || failed+=(multi30k_on_cuda)
elif want 4; then
    echo "== 4. skipped: no $m30k"
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu_check: FAILED: ${failed[*]}; logs in $out"
    exit 1
fi
echo "gpu_check: all passed; logs in $out"
