#!/bin/bash
# preftune eval of one model: HarmBench refusal, XSTest over-refusal, and (with a reward model) the win rate
# against the base model on held-out red-team prompts. Usage: run_eval.sh NAME MODEL [RM]
set -e
cd "$(dirname "$0")/../.."
W=bench/cai/work
D=../shared/data
export PYTHONPATH=$PWD
NAME=$1; MODEL=$2; RM=$3
EXTRA=()
if [ -n "$RM" ]; then EXTRA=(--baseline smollm2-135m-instruct --prompts $W/eval_prompts.jsonl --judges reward:$RM); fi
flock /tmp/preftune-heavy.lock timeout 900 /usr/bin/time -f %e_s /work/main/.venv/bin/python -m preftune.cli eval \
  --model "$MODEL" --output-dir $W/eval_$NAME --harmful $D/harmbench/harmbench_behaviors_text_test.csv --suite-limit 60 \
  --xstest $D/xstest/xstest_prompts.csv --xstest-per-type 6 --max-new-tokens 64 --batch-size 16 --no-bertscore "${EXTRA[@]}"
