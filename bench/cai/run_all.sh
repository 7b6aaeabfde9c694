#!/bin/bash
# The whole CAI benchmark: prepare the data, then stage 1 and stage 2, each one job under the heavy lock.
set -e
cd "$(dirname "$0")/../.."
W=${CAI_WORK:-bench/cai/work}
mkdir -p $W
PYTHONPATH=$PWD /work/main/.venv/bin/python bench/cai/prepare.py $W
flock /tmp/preftune-heavy.lock timeout 900 bash bench/cai/stage1.sh > $W/stage1.log 2>&1
flock /tmp/preftune-heavy.lock timeout 900 bash bench/cai/stage2.sh > $W/stage2.log 2>&1
PYTHONPATH=$PWD /work/main/.venv/bin/python bench/cai/summarise.py
