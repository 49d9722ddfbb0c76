#!/usr/bin/env bash
# One GPU session's benchmarks (one H100/H200, 16 cores, 128 GiB host), in order of importance, each
# under its own time limit, started detached so it outlives one device call:
#
#   setsid nohup bash scripts/gpu_session.sh /tmp/res > /tmp/res.log 2>&1 &
#
# It runs from a private copy of the checkout (/tmp/work): the device copies the working tree anew
# at every call, which would overwrite what a step writes into the checkout. Results: RES/session.log
# (one line per step: name, start, rc, end), RES/<step>.log, RES/<step>/ (each script's --out-dir or
# --json) and RES/tree/ (benchmarks/ and BENCHMARKS.md as the scripts left them).
# Needs .whl/: wheels for the packages the GPU image lacks (highspy, pydantic, deepspeed, ...), built
# for Python 3.12 manylinux x86_64 and installed with pip --target.
# DEADLINE_S (default 1380): no step starts after this many seconds from the session's start;
# HARD_S (default 1560): every step's time limit is cut so that it ends by then.
set -u
RES=${1:-/tmp/res}
DEADLINE_S=${DEADLINE_S:-1380}
HARD_S=${HARD_S:-1560}
mkdir -p "$RES"
T0=$(date +%s)
rm -rf /tmp/work && cp -r "$(dirname "$0")/.." /tmp/work && cd /tmp/work || exit 1
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_CUDA_ARCH_LIST=9.0 SATURN_SEED_PROFILES=none
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >> "$RES/session.log" 2>&1
fi
export PYTHONPATH=/tmp/site:$PWD

step() {  # step NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  local now; now=$(date +%s)
  if [ $((now - T0 + 30)) -gt "$DEADLINE_S" ]; then
    echo "== $name skipped: the session's deadline (${DEADLINE_S}s) has passed" >> "$RES/session.log"
    return
  fi
  [ $((T0 + HARD_S - now)) -lt "$limit" ] && limit=$((T0 + HARD_S - now))
  echo "== $name start $(date +%T) limit ${limit}s: $*" >> "$RES/session.log"
  timeout --kill-after=15 "$limit" "$@" > "$RES/$name.log" 2>&1
  echo "== $name rc=$? end $(date +%T)" >> "$RES/session.log"
  mkdir -p "$RES/tree" && cp -r benchmarks BENCHMARKS.md "$RES/tree/" 2>/dev/null
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g; \
  cat /sys/fs/cgroup/memory.max 2>/dev/null; df -h /tmp; \
  python3 -c 'import torch; print(torch.__version__, torch.cuda.is_available())'; } > "$RES/machine.txt" 2>&1

# STEPS picks and orders the steps (default: all, in this order).
for s in ${STEPS:-giant-a data fused giant-b}; do
  case $s in
    # Issue 33: gpt-6.7b from an empty store (default numerics) and DeepSpeed ZeRO-3 offload on it.
    giant-a) step giant-a 620 python3 scripts/bench_giant.py --only probes,saturn-6.7b,deepspeed-6.7b \
               --out-dir "$RES/giant" ;;
    giant-67) step giant-67 330 python3 scripts/bench_giant.py --only probes,saturn-6.7b --out-dir "$RES/giant" ;;
    # Issue 35: input pipelines vs DataLoader (defaults, hand-tuned grid, naive) for 1, 2, 4 jobs.
    data) step data 260 python3 scripts/bench_data.py --budget-s ${DATA_BUDGET_S:-230} --json "$RES/data.json" ;;
    # Issue 36: K fused GPT-2 small / ViT-base vs K jobs one after another.
    fused) step fused 240 python3 scripts/bench_fused.py --budget-s ${FUSED_BUDGET_S:-200} ;;
    # Issue 33: gpt-13b with numerics: low-memory; gpt-2.7b at a 7 GB cap vs DeepSpeed offload.
    giant-b) step giant-b 660 python3 scripts/bench_giant.py --only saturn-13b,cap7 --out-dir "$RES/giant" ;;
    giant-13) step giant-13 400 python3 scripts/bench_giant.py --only saturn-13b --out-dir "$RES/giant" ;;
    *) echo "== unknown step $s" >> "$RES/session.log" ;;
  esac
done
tar czf "$RES/bench.tgz" benchmarks BENCHMARKS.md 2>/dev/null
echo "== done $(date +%T)" >> "$RES/session.log"
