#!/usr/bin/env bash
# Three seeds (1, 2, 3) of the MNIST vanilla and sampled-ROLL (D' = 3, lambda 2, C = 1 and 0.25) models at the
# paper's settings (PyTorch initialisation, full data, 20 epochs), one run at a time, niced and resumable:
# rerunning this script skips finished runs (report.json present) and resumes the unfinished one from its run
# directory. Seed 1 repeats the committed docs/results/mnist_torch runs (a reproduction check); every run keeps
# its per-example test results (eval.npz) for paired comparisons, and then its certified radii (--certify:
# certify.json / certify.npz, l2 and l-inf, trains nothing).
#
#   bash experiments/mnist_seeds.sh [OUT_DIR] [extra flags, e.g. --data-dir DIR]
set -euo pipefail
out=runs/mnist_seeds
if [[ $# -gt 0 && $1 != -* ]]; then out=$1; shift; fi  # OUT_DIR is optional: flags alone keep the default
py=${PYTHON:-python}
for seed in 1 2 3; do
  for model in vanilla sampled_c1 sampled_c0.25; do
    case $model in
      vanilla) flags=() ;;
      sampled_c1) flags=(--lam 2 --C 1 --regularizer sampled --num-samples 3) ;;
      sampled_c0.25) flags=(--lam 2 --C 0.25 --regularizer sampled --num-samples 3) ;;
    esac
    dir=$out/${model}_seed$seed
    if [[ -f $dir/report.json ]]; then
      echo "done: $dir"
    else
      echo "run: $dir ($(date -u +%FT%TZ))"
      nice -n 19 "$py" -m experiments.mnist --seed "$seed" --out "$dir" --no-progress "${flags[@]}" "$@"
    fi
    if [[ ! -f $dir/certify.json ]]; then
      echo "certify: $dir ($(date -u +%FT%TZ))"
      nice -n 19 "$py" -m experiments.mnist --seed "$seed" --out "$dir" --no-progress --certify "${flags[@]}" "$@" > /dev/null
    fi
  done
done
