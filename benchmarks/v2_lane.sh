#!/bin/bash
# Issue 18's protocol-v2 method table: train runs one after another (one "lane" per core).
#   benchmarks/v2_lane.sh SEED CSV METHOD[:DENSITY] ...
# METHOD is a configs/cpu/METHOD_v2_resnet20_cifar10.yaml recipe (dense, gmp, granet, granet_st,
# rigl, set, static_erk); DENSITY overrides the recipe's 0.1 (e.g. gmp:0.02 for 98%). Each run
# is one benchmarks/sweep.py call with train.threads=1, named cpu2_METHOD_resnet20_cifar10
# [_dDENSITY][_sSEED], under runs/cpu-v2; a finished run is reused and a stopped one resumed,
# so a lane can be killed and started again with the same arguments. Two lanes, one per core:
#   benchmarks/v2_lane.sh 0 results/v2_table_s0.csv gmp granet ... &
#   benchmarks/v2_lane.sh 1 results/v2_table_s1.csv gmp granet ... &
# Tabulate: python benchmarks/seed_table.py benchmarks/results/v2_table_s{0,1}.csv --no-append
# Run it in the project's environment (`. .venv/bin/activate`); the first failing run stops
# the lane.
set -u
cd "$(dirname "$0")"
seed=$1; csv=$2; shift 2
for spec in "$@"; do
  m=${spec%%:*}; d=${spec#*:}; [ "$d" = "$spec" ] && d=""
  name=cpu2_${m}_resnet20_cifar10; sets=(train.threads=1 seed="$seed")
  [ -n "$d" ] && { name=${name}_d$d; sets+=(sparsity.density="$d"); }
  [ "$seed" != 0 ] && name=${name}_s$seed
  sets+=(name="$name")
  echo "=== $(date -u +%T) $name"
  python sweep.py "../configs/cpu/${m}_v2_resnet20_cifar10.yaml" --csv "$csv" \
    --out-dir ../runs/cpu-v2 --set "${sets[@]}" --no-append \
    || { echo "FAILED $name: lane stopped (later runs not started)"; exit 1; }
done
echo "=== lane done $(date -u +%T)"
