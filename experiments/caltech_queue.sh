#!/usr/bin/env bash
# Caltech, the 'validated' preset's protocol (issue 25), one run at a time, niced and resumable: rerunning skips
# finished runs and resumes the unfinished one from its run directory. The rule, fixed before any run:
#   0. (added after a first start, before any ROLL result: its vanilla model underfit at the paper's fine-tuning
#      lr 0.005, train accuracy 59%, validation 45%, validation loss still falling at the last epoch) seed 0 first
#      chooses the learning rate: vanilla at 0.005, 0.02 and 0.05, the highest validation top-1 accuracy kept
#      (ties: the smaller); every later model of the protocol, both models and all seeds, is trained at it;
#   1. seed 0 (OUT/seed0): vanilla; the paper's lambda rule on the validation split (C 8, lambda raised through
#      1e-6 ... 1 until validation top-1 accuracy is significantly worse than vanilla's, one-sided exact McNemar,
#      alpha 0.05), then its C rule at the chosen lambda (C 80, 800, same test); both kept models evaluated on
#      every test image (selection.json, table3.md, figures);
#   2. seeds 1 and 2 (OUT/seed1, OUT/seed2) of vanilla and of the chosen (lambda, C), same classes and split
#      (--data-seed 0), only the model's seed changes;
#   3. the summary over the three seeds with paired bootstrap intervals: python -m experiments.caltech_summary OUT
# On a 2-core CPU a vanilla run takes ~10 min, a ROLL run ~35 min and an evaluation of 150 images ~20 min (~6-9 h in all); on an
# accelerator, minutes.
#
#   bash experiments/caltech_queue.sh [OUT_DIR] [extra flags, e.g. --data-dir DIR]
set -euo pipefail
echo 19 2> /dev/null > /proc/self/autogroup || true  # take only idle CPU, as experiments/vowels_queue.sh
out=runs/caltech_validated
if [[ $# -gt 0 && $1 != -* ]]; then out=$1; shift; fi  # OUT_DIR is optional: flags alone keep the default
py=${PYTHON:-python}
echo "seed 0: selection ($(date -u +%FT%TZ))"
nice -n 19 "$py" -m experiments.caltech --preset validated --data-seed 0 --seed 0 --out "$out/seed0" --no-progress \
  --select-lr 0.005 0.02 0.05 --select-lambdas 1e-6 1e-5 1e-4 1e-3 1e-2 1e-1 1 --select-C 80 800 "$@"
read -r lam C lr < <("$py" -c "import json, sys; c = json.load(open(sys.argv[1]))['chosen']; print(c['lam'], c['C'], c['lr'])" "$out/seed0/selection.json")
for seed in 1 2; do
  echo "seed $seed: lambda $lam, C $C, lr $lr ($(date -u +%FT%TZ))"
  nice -n 19 "$py" -m experiments.caltech --preset validated --data-seed 0 --seed "$seed" --lam "$lam" --C "$C" --lr "$lr" --out "$out/seed$seed" --no-progress "$@"
done
"$py" -m experiments.caltech_summary "$out"
