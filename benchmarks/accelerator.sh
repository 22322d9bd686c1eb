#!/usr/bin/env bash
# An accelerator session's one prepared command (issue 13), in order of priority: the 10k-test-set margins and the
# precision check, the paper-scale exact MNIST runs (C = 1, then C = 0.25), then the benchmarks. Each stage has its
# own time limit inside a total BUDGET (seconds), so a stage cut short leaves the others' results, and later stages
# get what the earlier ones left; everything lands flat in OUT (log.txt and at most 5 JSON/JSONL files).
#
# Usage, from the repository root on a machine where JAX, Flax, Optax, Orbax and matplotlib are installed
# (nothing is downloaded):
#   bash benchmarks/accelerator.sh MNIST_DIR OUT [BUDGET_S]
# On the device tool (15 minutes of device time in all, starts included): the data travels as an ignored folder
# named in carry (.gitignore lists /.device_data/):
#   here:  mkdir -p .device_data && cp -r ../shared/data/mnist .device_data/ && chmod -R u+w .device_data
#   run:   command "bash benchmarks/accelerator.sh .device_data/mnist $OUT 420", carry [".device_data"], timeout_s 480
# which leaves time for a second call. ACC_EXTRA and MNIST_EXTRA add flags to benchmarks.accelerator and to both
# MNIST runs (a CPU smoke run: ACC_EXTRA="--test-size 64 --repeats 1" MNIST_EXTRA="--train-size 256 --epochs 1 --test-size 128").
set -uo pipefail
DATA=${1:?give the folder with the four MNIST IDX files}
OUT=${2:?give an output folder}
BUDGET=${3:-420}
PY=${PYTHON:-python3}
START=$SECONDS
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

left() { echo $((BUDGET - (SECONDS - START))); }

stage() { # stage NAME MAX_S CMD...: CMD for at most min(MAX_S, the time left) seconds, logged
    local name=$1 max=$2 t rc
    shift 2
    t=$(left)
    ((t > max)) && t=$max
    if ((t < 20)); then
        echo "== $name: skipped, $(left) s of the budget left" | tee -a "$OUT/log.txt"
        return
    fi
    echo "== $name (at most $t s): $*" | tee -a "$OUT/log.txt"
    timeout -k 10 "$t" "$@" 2>&1 | tee -a "$OUT/log.txt"
    rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc$( ((rc == 124)) && echo ', cut at its time limit') at $((SECONDS - START)) s" | tee -a "$OUT/log.txt"
}

# python -m from the repository root imports lld_jax, experiments and benchmarks as they are: no install needed.
"$PY" -c "import jax; print('devices:', jax.devices())" 2>&1 | tee -a "$OUT/log.txt"
# shellcheck disable=SC2086  # the *_EXTRA variables are lists of flags
stage precision_and_margins 90 "$PY" -m benchmarks.accelerator --data-dir "$DATA" --out "$OUT/accelerator.json" ${ACC_EXTRA:-}
for c in 1 0.25; do
    run="runs/accelerator/roll_exact_c$c"
    rm -rf "$run" # a fresh run each call: a resumed one would time only its last part
    # shellcheck disable=SC2086
    stage "mnist_exact_c$c" 200 "$PY" -m experiments.mnist --data-dir "$DATA" --out "$run" --lam 2 --C "$c" --no-progress ${MNIST_EXTRA:-}
    if [[ -f "$run/report.json" ]]; then
        cp "$run/report.json" "$OUT/mnist_roll_exact_c$c.json"
    elif [[ -f "$run/metrics.jsonl" ]]; then # cut short: how far it got
        cp "$run/metrics.jsonl" "$OUT/mnist_roll_exact_c$c.metrics.jsonl"
    fi
done
stage benchmarks 200 "$PY" -m benchmarks.run --quick --torch --out "$OUT/benchmarks.json"
echo "== done at $((SECONDS - START)) s" | tee -a "$OUT/log.txt"
