#!/usr/bin/env bash
# Multi30k on 2 CPU cores: two models of configs/multi30k.json trained at the same time, one
# core (one thread) each, differing only in their seed, then decoded as an ensemble chosen on
# val. The tiny model's matmuls are too small to keep two threads busy: two one-thread runs
# train about 1.6x the tokens of one two-thread run in the same time (README: Results).
#
#   bash scripts/multi30k_pair.sh [extra train.py arguments, given to both]
#
# Writes runs/multi30k_pair_a, runs/multi30k_pair_b (each selected on its own, as
# scripts/multi30k_select.py does for one run) and runs/multi30k_pair (the ensemble's choice and
# test scores). bf16 autocast pays only on CPUs with bf16 instructions (AVX512-BF16, AMX); on
# others the 31,000 steps do not fit in 90 minutes: use the one-model recipe there.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
out=${OUT:-runs/multi30k_pair}  # the members go to ${out}_a and ${out}_b
select=("$py" scripts/multi30k_select.py ${DATA:+--data "$DATA"})
train=(--config configs/multi30k.json --max_steps 31000 --cooldown_steps 6200
    --mixed_precision bf16 --keep_last 20)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT  # one member failed: stop the other too

# The tokenizer and token ids first, into the caches both members read (and a bad argument
# fails here, before anything trains).
prepare=()
for arg in "$@"; do [[ $arg == --resume ]] || prepare+=("$arg"); done
"$py" data.py prepare "${train[@]}" "${prepare[@]}"

mkdir -p "$(dirname "$out")"
export OMP_NUM_THREADS=1
"$py" train.py "${train[@]}" "$@" --seed 1234 --output_dir "$out"_a > "$out"_a.log 2> "$out"_a.err &
a=$!
"$py" train.py "${train[@]}" "$@" --seed 2 --output_dir "$out"_b > "$out"_b.log 2> "$out"_b.err &
b=$!
echo "training ${out}_a and ${out}_b, one thread each (tail -f ${out}_a.log)"
wait $a
wait $b

# Each member chooses its checkpoint on val (best epoch, or the average of its last 5/10/20).
"${select[@]}" --run "$out"_a --average 5 10 20 > "$out"_a.select.log &
a=$!
"${select[@]}" --run "$out"_b --average 5 10 20 > "$out"_b.select.log &
b=$!
wait $a
wait $b
chosen() { "$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['chosen_on_val']['checkpoint'])" "$1/results.json"; }
unset OMP_NUM_THREADS  # both cores for the ensemble
"${select[@]}" --run "$out" \
    --ensemble "$out"_a/"$(chosen "$out"_a)" "$out"_b/"$(chosen "$out"_b)"
