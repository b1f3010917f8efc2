#!/usr/bin/env bash
# Wall time of every stage of `dvc repro`, one at a time in dvc.yaml order (a topological order), including the
# interpreter start and imports each stage pays. Stages already up to date take ~1 s (DVC's check).
#   bash benchmarks/stage_times.sh [stage-name-prefix ...]     -> benchmarks/results/stage_times.tsv
set -euo pipefail
out=benchmarks/results/stage_times.tsv
mkdir -p benchmarks/results
printf "stage\tseconds\tstatus\n" > "$out"
for stage in $(dvc stage list --name-only); do
  if [ $# -gt 0 ]; then
    keep=0; for prefix in "$@"; do [[ "$stage" == "$prefix"* ]] && keep=1; done
    [ $keep = 1 ] || continue
  fi
  start=$(date +%s.%N)
  status=ok
  dvc repro --single-item "$stage" > "benchmarks/results/stage-$stage.log" 2>&1 || status=FAILED
  # A failed stage is recorded and the rest still run (those that need its outs fail in turn, visibly).
  printf "%s\t%.1f\t%s\n" "$stage" "$(echo "$(date +%s.%N) - $start" | bc)" "$status" | tee -a "$out"
done
