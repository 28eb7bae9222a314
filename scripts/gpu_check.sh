#!/usr/bin/env bash
# The GPU check: what pi0-ript does on one GPU machine, each section under its own time limit, every result written
# as it comes (a killed run still leaves the sections before it).
#
#   source .gpu/setup.sh && scripts/gpu_check.sh OUT_DIR          # on an offline GPU box (shared/gpu copied to .gpu/)
#   scripts/gpu_check.sh --dry-run OUT_DIR                         # the same sections on a CPU, tiny sizes (CI runs it)
#   scripts/gpu_check.sh --sections machine,bench_runner_quick OUT_DIR   # some sections, in this file's order
#   scripts/gpu_check.sh --deadline 580 ... OUT_DIR   # every section's limit cut to what is left of 580 s; a section
#                                                      # with under 20 s left is skipped (exit 125 in the summary)
#
# Sections (OUT_DIR/<section>.log each, OUT_DIR/gpu_check.json the summary: exit code and seconds per section);
# without --sections the first four run (limits 600 s in all); the last five only when named:
#   machine        GPU, driver, torch, transformers, MuJoCo
#   bench_model    full-size pi0 inference by batch size, bf16, eager and CUDA-graphed (ms per call, preprocessing
#                  share, capture time, peak memory)
#   bench_eval     `pi0-ript eval` on libero_spatial (2 tasks x 14 full-length episodes, 14 workers, 256 px cameras)
#                  with that model, CUDA-graphed: the all-off way, robosuite's physics calls, every scene
#                  compiled (no scene cache) and the defaults, env-steps/s
#                  (whole run and after the first step) and episodes/hour
#   bench_train    one RIPT iteration per variant (ppo/cfg, full fine-tuning), bf16 + activation checkpointing:
#                  time per phase, peak memory, analytic memory
#   bench_compile  torch.compile (reduce-overhead) of the full model at batch 1 against eager: a cold compilation
#                  takes over a minute (the dry run times eager only)
#   bench_eval_compiled  bench_eval's run with reduce-overhead sampling and a symbolic batch size, the defaults only
#                  (two compilations, for bucket 1 and for buckets 2-16, instead of five of ~70 s each on an H200)
#   bench_eval_long  bench_eval's defaults over three times the episodes (2 tasks x 42, six per worker): how the
#                  whole-run rate grows as the start is amortised (issue 17 measured 28 episodes)
#   bench_runner_quick   `pi0-ript bench runner --quick` on the box's cores (issue 17: minutes on 16 cores); the dry
#                  run does its smoke run of two sections
#   eval_ranks     `pi0-ript eval` under torchrun, two ranks (both on the one GPU), the small policy, libero_spatial
#                  tasks 0-1: the launch, the shared episodes.jsonl, rank 0's results with each rank's counts (protocol.json
#                  names the GL renderer the workers used)
set -uo pipefail
cd "$(dirname "$0")/.."

ALL_SECTIONS="machine bench_model bench_eval bench_train bench_compile bench_eval_compiled bench_eval_long bench_runner_quick eval_ranks"
dry_run=0 sections="machine bench_model bench_eval bench_train" deadline=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --sections)
      [[ $# -ge 2 ]] || { echo "gpu_check.sh: --sections needs a comma list of: $ALL_SECTIONS" >&2; exit 2; }
      sections=${2//,/ }; shift 2 ;;
    --deadline)
      [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: --deadline needs a whole number of seconds" >&2; exit 2; }
      deadline=$2; shift 2 ;;
    *) break ;;
  esac
done
for name in $sections; do
  [[ " $ALL_SECTIONS " == *" $name "* ]] || { echo "gpu_check.sh: unknown section '$name': use some of: $ALL_SECTIONS" >&2; exit 2; }
done
out=${1:-gpu_check_out}
mkdir -p "$out"
python=${PYTHON:-python3}
summary="$out/gpu_check.json"
echo '{}' > "$summary"

if (( dry_run )); then
  size=tiny device=cpu dtype=float32 precision=fp32 batches="1 2" graphs="none" compiled="none"
  eval_args="--workers 1 --task-ids 0 --episodes-per-task 1 --episode-length 6 --image-size 64" long_eval_args="$eval_args"
  runner_args="--smoke --sections sim,pickle" dynamic=""
  train_extra="--workers 2 --contexts 2 --rollouts 2 --episode-length 10 --minibatches 2"
else
  size=full device=cuda dtype=bfloat16 precision=bf16 batches="1 4 16 64" graphs="none cuda-graph" compiled="none reduce-overhead"
  eval_args="--workers 14 --task-ids 0 1 --episodes-per-task 14 --episode-length 220 --image-size 256"
  long_eval_args="--workers 14 --task-ids 0 1 --episodes-per-task 42 --episode-length 220 --image-size 256"
  runner_args="--quick" dynamic="--dynamic-batch"
  train_extra=""
fi

section() {  # section NAME SECONDS COMMAND...: run it under a time limit, log it, record exit code and seconds
  local name=$1 limit=$2; shift 2
  [[ " $sections " == *" $name "* ]] || return 0
  local started=$SECONDS rc
  if (( deadline )); then  # leave the kill grace (10 s) inside the deadline
    local left=$((deadline - SECONDS - 10))
    (( left < limit )) && limit=$left
  fi
  if (( deadline && limit < 20 )); then
    echo "== $name: skipped, ${limit}s left before the ${deadline}s deadline"
    rc=125
  else
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
  fi
  local took=$((SECONDS - started))
  tail -n 25 "$out/$name.log"
  echo "== $name: exit $rc after ${took}s"
  "$python" - "$summary" "$name" "$rc" "$took" <<'PY'
import json, sys
path, name, rc, took = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
summary = json.load(open(path))
summary[name] = {"exit_code": rc, "seconds": took, "timed_out": rc in (124, 137), "skipped": rc == 125}
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
section bench_model 110 "$python" -m pi0.ript.cli bench model --size "$size" --device "$device" --dtype "$dtype" \
  --batch-sizes $batches --compile $graphs --out "$out/bench_model.json"

# shellcheck disable=SC2086
section bench_eval 240 "$python" -m pi0.ript.cli bench eval --size "$size" --device "$device" --dtype "$dtype" \
  --compile "${graphs##* }" --settings all-off,robosuite-physics,compiled-scenes,defaults $eval_args --out "$out/bench_eval.json"

# shellcheck disable=SC2086
section bench_train 230 "$python" -m pi0.ript.cli bench train --size "$size" --device "$device" --precision "$precision" \
  --activation-checkpointing all --variants ppo-full,cfg-full --timeout 100 $train_extra --out "$out/bench_train.json"

# shellcheck disable=SC2086
section bench_compile 100 "$python" -m pi0.ript.cli bench model --size "$size" --device "$device" --dtype "$dtype" \
  --batch-sizes 1 --compile $compiled --out "$out/bench_compile.json"

# shellcheck disable=SC2086
section bench_eval_compiled 360 "$python" -m pi0.ript.cli bench eval --size "$size" --device "$device" --dtype "$dtype" \
  --compile "${compiled##* }" $dynamic --settings defaults $eval_args --out "$out/bench_eval_compiled.json"

# shellcheck disable=SC2086
section bench_eval_long 240 "$python" -m pi0.ript.cli bench eval --size "$size" --device "$device" --dtype "$dtype" \
  --compile "${graphs##* }" --settings defaults $long_eval_args --out "$out/bench_eval_long.json"

# shellcheck disable=SC2086
section bench_runner_quick 480 "$python" -m pi0.ript.cli bench runner $runner_args --out "$out/bench_runner_quick.json"

section eval_ranks 180 "$python" -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29517 \
  -m pi0.ript.cli eval --config pi0/ript/config/ript_vla_test.yaml policy.kind=small "policy.device=$device" \
  "task.task_ids=[0,1]" task.num_parallel_envs=2 eval.episodes_per_task=2 task.max_episode_length=20 \
  task.image_size=64 "eval.output_dir=$out/eval_ranks"

cat "$summary"
"$python" -c "import json,sys; s=json.load(open(sys.argv[1])); sys.exit(any(v['exit_code'] for v in s.values()))" "$summary"
