#!/usr/bin/env bash
# The GPU check for the compiled steps, as one run that fits a 10-minute device lease:
#   1. the CUDA tests (compiled equals eager for the rollout segment and the grad step, fp32, bf16
#      and fp16, CartPole MLP and seedbed LSTM), plus the compile-path tests;
#   2. CartPole's default run on CUDA (4 envs x 128 steps, 500k steps): compile time, steady SPS and
#      whole-process wall time;
#   3. CartPole with 2048 envs x 128 steps (about 10M steps);
#   4. seedbed LSTM in bf16, briefly;
#   5. 256 CartPole runs vmapped into one program (benchmarks/many_runs.py --solve): aggregate env
#      steps/s and the time until every run has a mean return >= 475;
#   6. morpho's host training, 64 sub-environments on the shapes set at 32x32 (2048 train, 512
#      validation images): host-epochs/s vmapped vs a Python loop over hosts, and peak GPU memory;
#   7. the default CartPole run started by torchrun as a one-GPU job (world size 1, same code path).
# SUITE=fused runs instead the checks of the fused iteration (one CUDA graph per iteration):
#   1. the fused CUDA test (equals the unfused eager path; no host sync inside the call);
#   2. CartPole's default run (4 envs, 500k steps), forced compile, cold cache then warm: whole wall
#      time (target < 30 s warm), compile seconds, steady SPS, peak CUDA memory;
#   3. the cartpole-gpu preset (2048 envs x 16 steps), cold then warm: SPS (target >= 20M steady),
#      when the rolling mean return first reached 475 (target < 20 s from the command's start);
#   4. the default run unfused, warm, for the same-machine comparison.
# Each step is its own process with its own time limit, so a slow one loses that step, not the run.
# Writes the pytest log, each run's summary.json and one combined JSON under $OUT, and
# verify-log.json: the GPU's name, the commit and date, and each test suite's pass/fail counts
# (commit it: until it exists, the README marks the CUDA properties as not run on a GPU).
#   usage: OUT=benchmarks/results/cuda BUDGET_S=540 bash benchmarks/cuda_verify.sh
set -u
out=${OUT:-benchmarks/results/cuda}
budget=${BUDGET_S:-540}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$(pwd)
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-$(nproc)}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)}  # cold compiles, measured
start=$(date +%s)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "${FKERNEL_COMMIT:-unknown}")
python3 -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())" \
  | tee "$out/verify-device.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$out/verify-device.txt" || true

left() { echo $(( budget - ($(date +%s) - start) )); }

step() {  # name, share of the time left (percent), command...
  local name=$1 share=$2; shift 2
  local limit=$(( $(left) * share / 100 ))
  if (( limit < 20 )); then echo "skip $name: $(left)s left" | tee "$out/verify-$name.skipped"; return; fi
  echo "== $name: limit ${limit}s"
  local t0=$(date +%s.%N)
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$out/verify-$name.log" 2>&1
  local rc=$?
  local t1=$(date +%s.%N)
  python3 -c "import json,sys; json.dump({'rc': $rc, 'wall_s': $t1 - $t0, 'limit_s': $limit}, open(sys.argv[1], 'w'))" \
    "$out/verify-$name.wall.json"
  tail -5 "$out/verify-$name.log"
  echo "== $name exit $rc after $(( $(date +%s) - start ))s"
}

train() {  # name, share, flags...
  local name=$1 share=$2; shift 2
  rm -rf "$out/run-$name"
  step "$name" "$share" python3 -m cli.main train --device cuda --checkpoint-every 0 --out "$out/run-$name" "$@"
  cp "$out/run-$name/summary.json" "$out/verify-$name.summary.json" 2>/dev/null || true
  rm -rf "$out/run-$name"
}

if [[ ${SUITE:-all} == fused ]]; then
step tests-fused 25 python3 -m pytest -q -p no:cacheprovider tests/kernel/test_cuda.py -k fused
train default-cold 30 --compile
train default-warm 20 --compile
train preset-cold 35 --preset cartpole-gpu --compile
train preset-warm 30 --preset cartpole-gpu --compile
train default-unfused 60 --compile --no-fuse
else
step tests 35 python3 -m pytest -q -p no:cacheprovider tests/kernel/test_cuda.py tests/kernel/test_hot.py \
  tests/envs/test_morpho.py
train cartpole-4env 35
train cartpole-2048env 45 --num-envs 2048 --num-steps 128 --total-steps 10485760
train seedbed-bf16 50 --env seedbed --precision bf16 --total-steps 100000
step many-256 60 python3 -m benchmarks.many_runs --device cuda --runs 256 --iterations 10 --solve \
  --out "$out/many_runs.json"
step morpho-64 40 python3 -m benchmarks.morpho --device cuda --envs 64 --train-size 2048 --val-size 512 \
  --only throughput --out "$out/morpho.json"
rm -rf "$out/run-torchrun"
step torchrun-1gpu 100 python3 -m torch.distributed.run --nproc-per-node 1 --standalone -m cli.main train \
  --devices cuda:0 --checkpoint-every 0 --out "$out/run-torchrun"
cp "$out/run-torchrun/summary.json" "$out/verify-torchrun-1gpu.summary.json" 2>/dev/null || true
fi

python3 - "$out" "$commit" <<'PY'
import datetime, glob, json, os, re, sys
out, commit = sys.argv[1], sys.argv[2]
record = {"device": open(os.path.join(out, "verify-device.txt")).read().strip()}
for wall in sorted(glob.glob(os.path.join(out, "verify-*.wall.json"))):
    name = os.path.basename(wall)[len("verify-"):-len(".wall.json")]
    entry = json.load(open(wall))
    summary = os.path.join(out, f"verify-{name}.summary.json")
    if os.path.exists(summary):
        entry["summary"] = json.load(open(summary))
    record[name] = entry
with open(os.path.join(out, "verify-cuda.json"), "w") as f:
    json.dump(record, f, indent=2)
print(json.dumps(record, indent=2))

# The log a README may cite: which GPU, which commit, and what each test suite counted.
suites = {}
for log in sorted(glob.glob(os.path.join(out, "verify-tests*.log"))):
    text = open(log).read()
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", text.splitlines()[-1]
                                                     if text.strip() else "")}
    suites[os.path.basename(log)[len("verify-"):-len(".log")]] = counts
log = {"gpu": record["device"], "commit": commit,
       "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "suites": suites}
with open(os.path.join(out, "verify-log.json"), "w") as f:
    json.dump(log, f, indent=2)
print(json.dumps(log, indent=2))
PY
