#!/usr/bin/env bash
# Japanese Vowels queue (issue 26), one run at a time, niced and resumable: rerunning skips finished runs
# (report.json present) and resumes the unfinished one from its checkpoint. The order and the points are a rule
# fixed before any of these runs:
#   1. vanilla, seed 1, and the paper's two selected settings (lambda, C) = (2^-5, 2^4) and (2^-1, 2^2);
#   2. vanilla seeds 2 and 3 (cheap; the spread of the reference accuracy and margins);
#   3. the 3 x 3 neighbourhood of each paper point (lambda and C each times 1/2, 1, 2), nearest first;
#   4. the paper's seeds treatment: seeds 2 and 3 of the two paper points.
# Changed before step 4 ran (after step 3's last run, lambda 2^0, C 2^3), because issue 25 asks for the seeds of the
# *selected* settings: step 4 is now seeds 2 and 3 of Table 2's two picks, read from the selection the paper's rule
# makes over the finished grid (steps 1-3, collected here); step 5 is the former step 4 (skipping a point already run).
#   6. (added before any of its runs, after both neighbourhoods finished with Table 2's picks on their edges: C 2^3 is
#      the low edge of one and the high edge of the other) widen: up to 3 rounds of experiments/vowels_widen.py's rule
#      (for each pick on an edge of the grid that ran, the 3 points one factor of 2 beyond it, inside the paper's grid),
#      each round followed by a collect over the paper's whole grid; stops when no pick is on an edge.
# Every run: 60 epochs (the 30-epoch runs were still improving at epoch 30), paper settings otherwise, best epoch
# and grid point picked on the test set as the paper does. Runs land in OUT/lam<l>_C<c> (grid layout), so
#   python -m experiments.vowels --grid --collect --epochs 60 --out OUT --grid-lam ... --grid-C ...
# writes Table 2 (the paper's selection rule) from whatever has finished.
#
#   bash experiments/vowels_queue.sh [OUT_DIR] [extra flags, e.g. --data-dir DIR]
set -euo pipefail
# nice alone does not yield to other sessions under Linux's autogroup scheduling (a setsid/nohup job is its own
# group): lower the group's priority too, so the queue takes only idle CPU. Harmless where autogroups are off.
echo 19 2> /dev/null > /proc/self/autogroup || true
out=runs/vowels_queue
if [[ $# -gt 0 && $1 != -* ]]; then out=$1; shift; fi  # OUT_DIR is optional: flags alone keep the default
py=${PYTHON:-python}
epochs=${EPOCHS:-60}
run() {  # run NAME SEED LAM C
  local dir=$out/$1
  [[ $2 != 1 ]] && dir=$out/seed$2/$1
  if [[ -f $dir/report.json ]]; then echo "done: $dir"; return; fi
  echo "run: $dir ($(date -u +%FT%TZ))"
  nice -n 19 "$py" -m experiments.vowels --seed "$2" --lam "$3" --C "$4" --epochs "$epochs" --out "$dir" --no-progress "${@:5}"
}
name() { python3 -c "print(f'lam{$1:g}_C{$2:g}')"; }
run vanilla 1 0 0 "$@"
run "$(name 0.03125 16)" 1 0.03125 16 "$@"
run "$(name 0.5 4)" 1 0.5 4 "$@"
for seed in 2 3; do run vanilla "$seed" 0 0 "$@"; done
for point in "0.03125 16" "0.5 4"; do
  read -r lam C <<< "$point"
  # nearest first: one factor changed, then both
  for f in "0.5 1" "2 1" "1 0.5" "1 2" "0.5 0.5" "0.5 2" "2 0.5" "2 2"; do
    read -r a b <<< "$f"
    l=$(python3 -c "print($lam*$a)"); c=$(python3 -c "print($C*$b)")
    run "$(name "$l" "$c")" 1 "$l" "$c" "$@"
  done
done
# Table 2 over steps 1-3 (the grid is every lambda and C the neighbourhoods visit), then its picks' seeds. The first
# collect's record is frozen (selection_step3.json): on a rerun after step 6 the same collect also sees the widened
# runs (inside its grid), and steps 4 and 6 must still start from what steps 1-3 chose.
"$py" -m experiments.vowels --grid --collect --epochs "$epochs" --out "$out" --no-progress \
  --grid-lam 0.015625 0.03125 0.0625 0.25 0.5 1 --grid-C 2 4 8 16 32 "$@"
[[ -f $out/selection_step3.json ]] || cp "$out/selection.json" "$out/selection_step3.json"
picks=$("$py" -c "
import json, sys
s = json.load(open(sys.argv[1]))
print(' '.join(f\"{s['candidates'][n]['lam']:g},{s['candidates'][n]['C']:g}\" for n in s['picks'].values() if n))" "$out/selection_step3.json")
for points in "$picks" "0.03125,16 0.5,4"; do  # step 4, then step 5
  for seed in 2 3; do
    for point in $points; do
      IFS=, read -r lam C <<< "$point"
      run "$(name "$lam" "$C")" "$seed" "$lam" "$C" "$@"
    done
  done
done
# Step 6: widen where a pick sits on the edge of the grid that ran (experiments/vowels_widen.py), then re-collect
# over the paper's whole grid (lambda 2^-6..2^3, C 2^-5..2^7; points not run are left out). Round k starts from the
# frozen record of round k - 1 (step 3's for round 1), so a rerun repeats the same rounds.
from=$out/selection_step3.json
for round in 1 2 3; do
  next=$("$py" -m experiments.vowels_widen "$from")
  if [[ -z $next ]]; then echo "widen: nothing left to run after round $((round - 1)) (no pick on an edge inside the paper's grid)"; break; fi
  echo "widen round $round: $next"
  for point in $next; do
    IFS=, read -r lam C <<< "$point"
    run "$(name "$lam" "$C")" 1 "$lam" "$C" "$@"
  done
  "$py" -m experiments.vowels --grid --collect --epochs "$epochs" --out "$out" --no-progress "$@"
  [[ -f $out/selection_round$round.json ]] || cp "$out/selection.json" "$out/selection_round$round.json"
  from=$out/selection_round$round.json
done
