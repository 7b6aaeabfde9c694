#!/bin/bash
# CAI benchmark, stage 2 (after stage 1; under the heavy lock as one job):
#   flock /tmp/preftune-heavy.lock timeout 900 bash bench/cai/stage2.sh
# SFT on the revisions (SL-CAI); online DPO from the SL-CAI model against the AI-label reward model (RL-CAI);
# preftune eval of base, SL-CAI and RL-CAI: HarmBench refusal, XSTest over-refusal, and the reward model's win
# rate against the base model's responses on 24 held-out red-team prompts.
set -e
cd "$(dirname "$0")/../.."
W=${CAI_WORK:-bench/cai/work}
M=${CAI_MODEL:-smollm2-135m-instruct}
D=../shared/data
PY="/work/main/.venv/bin/python -m preftune.cli"
export PYTHONPATH=$PWD PREFTUNE_NO_PROGRESS=1
T="/usr/bin/time -f %e_s"
$T $PY sft --model $M --data $W/sl.jsonl --output-dir $W/sl_cai --max-steps 8 --batch-size 8 --learning-rate 2e-5
$T $PY dpo --online --model $W/sl_cai/final --data $W/dpo_prompts.jsonl --reward $W/rm/final --output-dir $W/rl_cai \
  --max-steps 8 --batch-size 4 --max-new-tokens 48 --beta 0.1 --learning-rate 1e-6
SUITES=(--harmful $D/harmbench/harmbench_behaviors_text_test.csv --suite-limit 32 --xstest $D/xstest/xstest_prompts.csv
        --xstest-per-type 3 --max-new-tokens 48 --batch-size 16 --no-bertscore --limit 24)
$T $PY eval --model $M --prompts $W/eval_prompts.jsonl --output-dir $W/eval_base "${SUITES[@]}"
for NAME in sl rl; do
  MODEL=$W/sl_cai/final; [ $NAME = rl ] && MODEL=$W/rl_cai/final
  $T $PY eval --model $MODEL --prompts $W/eval_prompts.jsonl --baseline-generations $W/eval_base/generations.jsonl \
    --judges "[reward:$W/rm/final]" --output-dir $W/eval_$NAME "${SUITES[@]}"
done
