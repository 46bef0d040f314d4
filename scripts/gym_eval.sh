#!/bin/bash
# The world model on a gymnasium MuJoCo task: collect 100 episodes, train (7 min wall limit, 1 thread), evaluate the
# normalised MSE at k = 1, 5, 10, 25, 50 env steps against the baselines. Usage (from the repository root):
#   scripts/gym_eval.sh halfcheetah|hopper|walker2d|ant [OUT_ROOT]     -> OUT_ROOT/TASK/eval.json (default runs/gym)
set -u
task=$1
out=${2:-runs/gym}/$task
mkdir -p $out
python3 - "$task" "$out" <<'PY'
import sys, yaml
task, out = sys.argv[1], sys.argv[2]
p = yaml.safe_load(open(f"configs/{task}.yaml"))
p["train"] = {"time_limit_s": 420, "steps": 2500, "threads": 1, "checkpoint_every": 500}
open(f"{out}/preset.yaml", "w").write(yaml.safe_dump(p))
PY
.venv/bin/oniwm collect --config $out/preset.yaml --episodes 100 --workers 1 --out $out/logs > $out/collect.log 2>&1
.venv/bin/oniwm train --config $out/preset.yaml --data $out/logs --out $out/run --no-progress > $out/train.log 2>&1
.venv/bin/oniwm eval --checkpoint $out/run --data $out/logs --json $out/eval.json --plots $out/plots --config $out/preset.yaml --epochs 15 --no-dropout --threads 1 > $out/eval.log 2>&1
echo "rc=$?" >> $out/eval.log
