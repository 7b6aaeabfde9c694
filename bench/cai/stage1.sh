#!/bin/bash
# CAI benchmark, stage 1 (run under the heavy lock as one job):
#   flock /tmp/preftune-heavy.lock timeout 900 bash bench/cai/stage1.sh
# SL-CAI critique -> revision on 64 red-team prompts with the default model as its own critic; AI labels of 64 HH
# harmless pairs (2 principles, both orders); a Bradley-Terry reward model on the soft AI labels, evaluated on 64
# held-out HH pairs with human labels. Inputs from bench/cai/prepare.py.
set -e
cd "$(dirname "$0")/../.."
W=${CAI_WORK:-bench/cai/work}
M=${CAI_MODEL:-smollm2-135m-instruct}
PY="/work/main/.venv/bin/python -m preftune.cli"
export PYTHONPATH=$PWD PREFTUNE_NO_PROGRESS=1
T="/usr/bin/time -f %e_s"
$T $PY cai revise --model $M --prompts $W/sl_prompts.jsonl --output $W/sl.jsonl --rounds 1 --few-shot 1 --max-new-tokens 64 \
  --batch-size 32 --seed 0
$T $PY cai label --model $M --pairs $W/label_pairs.jsonl --output $W/ai_labels.jsonl --num-principles 2 --batch-size 16 \
  --report $W/label_report.json
$T $PY reward --model $M --data $W/ai_labels.jsonl --output-dir $W/rm --eval-data $W/heldout_pairs.jsonl --num-epochs 2 --batch-size 8
