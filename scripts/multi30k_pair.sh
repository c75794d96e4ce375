#!/usr/bin/env bash
# Multi30k on 2 CPU cores: two models of the recipe (configs/multi30k.json, here in bf16 with
# 31,000 steps) trained at the same time, one core (one thread) each, differing only in their
# seed, then decoded as an ensemble chosen on val. The tiny model's matmuls are too small to keep
# two threads busy, so two one-thread runs train more tokens in all than one two-thread run
# (README: Two models at once).
#
#   bash scripts/multi30k_pair.sh [extra train.py arguments, given to both; --resume continues]
#   (bash 5.1 or newer)
#
# Writes runs/multi30k_pair_a and runs/multi30k_pair_b (each selected on its own, as
# scripts/multi30k_select.py does for one run) and runs/multi30k_pair (the ensemble's choice and
# test scores); OUT=DIR writes DIR_a, DIR_b and DIR instead, DATA=DIR reads the corpus from DIR
# (train, val, test_2016_flickr as in ../shared/data/multi30k). Relative paths are taken from
# the repository root. The members train in bf16, which pays only on CPUs with bf16
# instructions (AVX512-BF16, AMX; elsewhere it is emulated and slow): there, use the one-model
# recipe, configs/multi30k.json.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
out=${OUT:-runs/multi30k_pair}
choose=("$py" scripts/multi30k_select.py)
# 31,000 steps: about 63 minutes per member at the pace of an 800-step probe, with a margin
# below max_minutes (86); the cooldown is the recipe's last fifth; 20 checkpoints for avg20.
# Not fitted to max_minutes by each member alone: a resume of the pair takes one max_steps.
train=(--config configs/multi30k.json --max_steps 31000 --cooldown_steps 6200
    --mixed_precision bf16 --keep_last 20 --fit_steps_to_time false)
if [[ -n ${DATA:-} ]]; then
    choose+=(--data "$DATA")
    train+=(--train_data "$DATA/train.{lang}.gz" --valid_data "$DATA/val.{lang}.gz"
        --test_data "$DATA/test_2016_flickr.{lang}.gz")
fi

fail() { echo "error: $*" >&2; exit 2; }
resume=false
prepare=()
for arg in "$@"; do
    case $arg in
        --resume) resume=true; continue ;;
        -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        --seed* | --output_dir* | --output-dir*)
            fail "$arg: this script sets each member's seed (1234, 2) and output_dir (OUT=DIR)" ;;
    esac
    prepare+=("$arg")
done
# the ensemble's results go to OUT: found now, not after both members trained
[[ ! -e $out/checkpoints ]] || fail "$out holds a training run: OUT=DIR must name a folder of its own"
if ! $resume; then
    for run in "$out"_a "$out"_b; do
        [[ ! -e $run ]] || fail "$run exists: pass --resume to continue it, or OUT=DIR for a new pair"
    done
fi

# The tokenizer and token ids first, into the caches both members read (and a bad argument
# fails here, before anything trains).
"$py" data.py prepare "${train[@]}" ${prepare[@]+"${prepare[@]}"}

# Waits for both jobs (runs: pid -> the file with its errors); the first to fail is named, with
# the end of that file, and the EXIT trap stops the other. With "members" (the training runs): a
# member stopped by a signal saves and exits 0 (train.py: a preempted job), its last log line
# saying so; then the other is stopped too (it saves) and nothing is chosen. That happens when
# only one member got the signal, and when this script ignores SIGINT (started with `&` by a
# script or a non-interactive shell; bash cannot trap a signal ignored on entry) but its
# members still stop on it.
wait_both() {
    local pid status log what=${1:-}
    for _ in 1 2; do
        status=0
        wait -n -p pid "${!runs[@]}" || status=$?
        if ((status != 0)); then
            echo "error: exit $status, see ${runs[$pid]}:" >&2
            tail -n 3 "${runs[$pid]}" >&2
            exit "$status"
        fi
        log=${runs[$pid]%.err}.log
        unset "runs[$pid]"
        if [[ $what == members && $(tail -n 1 "$log") == "stopped by signal"* ]]; then
            # TERM, not INT: a member that had the signal too goes on saving (a second SIGINT
            # would abort it)
            ((${#runs[@]} == 0)) || kill -TERM "${!runs[@]}" 2>/dev/null || true
            wait
            echo "stopped: ${log%.log} was stopped by a signal; to continue, run again with" \
                "--resume" >&2
            exit 130
        fi
    done
}
trap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT
# Ctrl-C reaches the members too: each finishes its step, saves and exits; wait for that.
trap 'wait; exit 130' INT

mkdir -p "$(dirname "$out")"
omp=${OMP_NUM_THREADS-}
declare -A runs
for m in a:1234 b:2; do
    run=${out}_${m%%:*}
    OMP_NUM_THREADS=1 "$py" train.py "${train[@]}" "$@" --seed "${m##*:}" --output_dir "$run" \
        >> "$run.log" 2>> "$run.err" &
    runs[$!]=$run.err
done
echo "training ${out}_a and ${out}_b, one thread each (tail -f ${out}_a.log)"
wait_both members
trap - INT

# Each member chooses its checkpoint on val (best epoch, or the average of its last 5/10/20).
for m in a b; do
    run=${out}_$m
    OMP_NUM_THREADS=1 "${choose[@]}" --run "$run" --average 5 10 20 > "$run.select.log" 2>&1 &
    runs[$!]=$run.select.log
done
wait_both
chosen() {
    "$py" -c "import json, sys; print(json.load(open(sys.argv[1]))['chosen_on_val']['checkpoint'])" \
        "$1/results.json"
}
ca=$(chosen "$out"_a)
cb=$(chosen "$out"_b)
[[ -n $omp ]] && export OMP_NUM_THREADS=$omp || unset OMP_NUM_THREADS  # the caller's, for both cores
"${choose[@]}" --run "$out" --ensemble "$out"_a/"$ca" "$out"_b/"$cb"
