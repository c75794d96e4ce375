#!/usr/bin/env bash
# Offline quick start: make a corpus, train, translate the test split, score it with sacreBLEU.
# About 2 minutes on 2 CPU cores. Extra arguments go to train.py (e.g. --epochs 1).
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

case " $* " in *" --output_dir"*|*" --output-dir"*|*" --config"*)  # translate, evaluate read runs/quickstart
    echo "error: quickstart.sh trains configs/quickstart.json into runs/quickstart;" \
        "run train.py yourself for another config or output_dir" >&2
    exit 2 ;;
esac
case " $* " in *" --help "*|*" -h "*) exec python train.py --help ;; esac
# the arguments are checked before the last run is deleted below: a typo must not cost it
python -c 'import sys; from config import cli, config_from_argv
cli(lambda: config_from_argv(["--config", "configs/quickstart.json", *sys.argv[1:]], ""))' "$@"
python quickstart_data.py --out data/quickstart
# train.py will not start a fresh run over a run's checkpoints: the demo starts over each time
case " $* " in *" --resume "*) ;; *) rm -rf runs/quickstart ;; esac
python train.py --config configs/quickstart.json "$@"
python translate.py --checkpoint runs/quickstart --input data/quickstart/test.en \
    --output runs/quickstart/test.hyp.de
python evaluate.py --hypotheses runs/quickstart/test.hyp.de --reference data/quickstart/test.de \
    --json runs/quickstart/test_scores.json
