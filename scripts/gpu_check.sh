#!/usr/bin/env bash
# The GPU check: what pi0-ript does on one GPU machine, each section under its own time limit (at most 570 s in
# all; a cold torch.compile of the full model is most of bench_model's), every result written as it comes (a killed run still leaves the sections before it).
#
#   source .gpu/setup.sh && scripts/gpu_check.sh OUT_DIR          # on an offline GPU box (shared/gpu copied to .gpu/)
#   scripts/gpu_check.sh --dry-run OUT_DIR                         # the same sections on a CPU, tiny sizes (CI runs it)
#
# Sections (OUT_DIR/<section>.log each, OUT_DIR/gpu_check.json the summary: exit code and seconds per section):
#   machine       GPU, driver, torch, transformers, MuJoCo
#   bench_model   full-size pi0 inference by batch size, bf16, eager and CUDA-graphed (ms per call, preprocessing
#                 share, compile time, peak memory)
#   bench_train   one RIPT iteration per variant (ppo/cfg x expert-only/full), bf16 + activation checkpointing:
#                 time per phase, peak memory, analytic memory
#   eval          `pi0-ript eval` on libero_spatial with a full-size random-weight pi0 in bf16, 14 workers
#   train_fp32    the full fine-tuning peak without the memory features (fp32, no checkpointing), for comparison
set -uo pipefail
cd "$(dirname "$0")/.."

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
out=${1:-gpu_check_out}
mkdir -p "$out"
python=${PYTHON:-python3}
summary="$out/gpu_check.json"
echo '{}' > "$summary"

if (( dry_run )); then
  size=tiny device=cpu dtype=float32 precision=fp32 envs=1 batches="1 2" compile="none"
  eval_extra="task.max_episode_length=6 task.image_size=64 eval.episodes_per_task=1 task.task_ids=[0]"
  train_extra="--workers 2 --contexts 2 --rollouts 2 --episode-length 10 --minibatches 2"
else
  size=full device=cuda dtype=bfloat16 precision=bf16 envs=14 batches="1 16" compile="none reduce-overhead"
  eval_extra="task.task_ids=[0,1] eval.episodes_per_task=14"
  train_extra=""
fi

section() {  # section NAME SECONDS COMMAND...: run it under a time limit, log it, record exit code and seconds
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  local took=$((SECONDS - started))
  tail -n 25 "$out/$name.log"
  echo "== $name: exit $rc after ${took}s"
  "$python" - "$summary" "$name" "$rc" "$took" <<'PY'
import json, sys
path, name, rc, took = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
summary = json.load(open(path))
summary[name] = {"exit_code": rc, "seconds": took, "timed_out": rc in (124, 137)}
json.dump(summary, open(path, "w"), indent=2)
PY
}

section machine 20 "$python" -c "
import platform, torch, transformers
print('python', platform.python_version(), '| torch', torch.__version__, '| transformers', transformers.__version__)
print('cuda', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')
try:
    import mujoco; print('mujoco', mujoco.__version__)
except ImportError as exc:
    print('mujoco missing:', exc)
"

# shellcheck disable=SC2086
section bench_model 180 "$python" -m pi0.ript.cli bench model --size "$size" --device "$device" --dtype "$dtype" \
  --batch-sizes $batches --compile $compile --out "$out/bench_model.json"

# shellcheck disable=SC2086
section bench_train 150 "$python" -m pi0.ript.cli bench train --size "$size" --device "$device" --precision "$precision" \
  --activation-checkpointing all --variants ppo-full,cfg-full,ppo-expert --timeout 48 $train_extra --out "$out/bench_train.json"

section random_checkpoint 50 "$python" scripts/make_random_pi0.py --size "$size" --dtype "$dtype" --device "$device" \
  --out "$out/pi0_random"

# shellcheck disable=SC2086
section eval 110 "$python" -m pi0.ript.cli eval --config pi0/ript/config/ript_vla_test.yaml \
  policy.kind=pi0 policy.checkpoint_path="$out/pi0_random" policy.device="$device" policy.dtype="$dtype" \
  task.num_parallel_envs="$envs" eval.output_dir="$out/eval" $eval_extra
rm -rf "$out/pi0_random"  # gigabytes of random weights: nothing to keep

# shellcheck disable=SC2086
section train_fp32 60 "$python" -m pi0.ript.cli bench train --size "$size" --device "$device" --precision fp32 \
  --activation-checkpointing none --variants ppo-full --timeout 55 $train_extra --out "$out/bench_train_fp32.json"

cat "$summary"
"$python" -c "import json,sys; s=json.load(open(sys.argv[1])); sys.exit(any(v['exit_code'] for v in s.values()))" "$summary"
