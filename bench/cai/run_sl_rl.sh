#!/bin/bash
# After `cai revise` (bench/cai/work/sl.jsonl) and the reward model (bench/cai/work/rm): SFT on the revisions
# (SL-CAI), online DPO from the SL-CAI model against the AI-label reward model (RL-CAI), then both evaluations.
set -e
cd "$(dirname "$0")/../.."
W=bench/cai/work
PY="/work/main/.venv/bin/python -m preftune.cli"
export PYTHONPATH=$PWD
L="flock /tmp/preftune-heavy.lock timeout 900 /usr/bin/time -f %e_s"
$L $PY sft --data $W/sl.jsonl --output-dir $W/sl_cai --num-epochs 2 --batch-size 8 --learning-rate 2e-5
while [ ! -f $W/rm/final/preftune_reward.json ]; do sleep 20; done
$L $PY dpo --online --model $W/sl_cai/final --data $W/dpo_prompts.jsonl --reward $W/rm/final --output-dir $W/rl_cai \
  --max-steps 16 --batch-size 4 --max-new-tokens 64 --beta 0.1 --learning-rate 1e-6
bash bench/cai/run_eval.sh sl $W/sl_cai/final $W/rm/final
bash bench/cai/run_eval.sh rl $W/rl_cai/final $W/rm/final
