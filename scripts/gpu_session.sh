#!/usr/bin/env bash
# One H200 session's benchmarks, in order of importance, each under its own time limit, started
# detached so it outlives one device call (see BENCHMARKS.md, "How the GPU numbers were taken"):
#
#   setsid nohup bash scripts/gpu_session.sh /tmp/res > /tmp/res.log 2>&1 &
#
# Results: RES/session.log (one line per step: name, start, rc, end), RES/<step>.log, and the
# benchmarks/ JSON files and BENCHMARKS.md sections each script writes in the checkout.
# Needs .whl/: wheels for the packages the GPU image lacks (highspy, pydantic, pydantic-core,
# annotated-types, typing-inspection, deepspeed and fairscale built with DS_BUILD_OPS=0, hjson), made
# here with `pip download` / `pip wheel` for Python 3.12 manylinux x86_64; installed with pip --target.
set -u
RES=${1:-/tmp/res}
mkdir -p "$RES"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_CUDA_ARCH_LIST=9.0
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >> "$RES/session.log" 2>&1
fi
export PYTHONPATH=/tmp/site:$PWD

step() {  # step NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "== $name start $(date +%T) limit ${limit}s: $*" >> "$RES/session.log"
  timeout --kill-after=10 "$limit" "$@" > "$RES/$name.log" 2>&1
  echo "== $name rc=$? end $(date +%T)" >> "$RES/session.log"
  # the device copies the working tree anew at every call: keep what this step wrote outside it
  mkdir -p "$RES/tree" && cp -r benchmarks BENCHMARKS.md "$RES/tree/" 2>/dev/null
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g; \
  python3 -c 'import torch; print(torch.__version__, torch.cuda.is_available())'; } > "$RES/machine.txt" 2>&1

# Issues 24 + 25: Saturn from an empty store vs the plain-loop reference, one run.
step e2e 780 python3 scripts/bench_e2e.py --gpus 1 --workdir /tmp/e2e --copy-to "$RES/e2e"
# Issue 25: blocking time of a 10 GB checkpoint; data wait per zoo model.
step checkpoint 100 python3 scripts/bench_checkpoint.py
step data_wait 120 python3 scripts/bench_data_wait.py
# Issue 26: spilling vs its floor and vs DeepSpeed / FSDP2 offload; SHARP.
step spilling 480 python3 scripts/bench_spilling.py --budget-s 450 --out-dir "$RES/spilling"
# Issue 25: the staged data pipeline vs DataLoader defaults on 16 cores.
step data 200 python3 scripts/bench_data.py --tuners hill
# Issue 24: the prior against the rows this session measured.
step prior 90 python3 scripts/bench_prior.py --table /tmp/e2e/store/profiles.csv \
  --workload /tmp/e2e/workload.yaml --store /tmp/e2e/store
tar czf "$RES/bench.tgz" benchmarks BENCHMARKS.md 2>/dev/null
echo "== done $(date +%T)" >> "$RES/session.log"
