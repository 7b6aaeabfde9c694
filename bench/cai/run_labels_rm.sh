#!/bin/bash
# RL-CAI labels and the reward model on them (each step under the heavy lock, each under 10 minutes).
set -e
cd "$(dirname "$0")/../.."
W=bench/cai/work
PY="/work/main/.venv/bin/python -m preftune.cli"
export PYTHONPATH=$PWD
L="flock /tmp/preftune-heavy.lock timeout 900 /usr/bin/time -f %e_s"
$L $PY cai label --pairs $W/label_pairs.jsonl --output $W/ai_labels.jsonl --num-principles 2 --batch-size 16 --report $W/label_report.json
$L $PY reward --data $W/ai_labels.jsonl --output-dir $W/rm --eval-data $W/heldout_pairs.jsonl --num-epochs 2 --batch-size 8
