"""Ctrl-C / SIGTERM during `pi0-ript eval`: workers stop, no process is left, finished episodes stay on disk, and
re-running the same command resumes instead of starting over."""

from __future__ import annotations

import json
from pathlib import Path
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import REPO_ROOT


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_eval_keeps_results_and_resume_finishes(sig, tmp_path):
    out = tmp_path / "eval"
    command = [
        sys.executable, "-m", "pi0.ript.cli", "eval", "--config", "pi0/ript/config/ript_vla_test.yaml",
        "task.benchmark_name=reach", "task.task_ids=[0,1,2]", "task.max_episode_length=40",
        "eval.episodes_per_task=40", f"eval.output_dir={out}", "task.num_parallel_envs=2",
    ]
    # A job started in the background by a non-interactive shell (as CI may run the suite) inherits SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler: give the eval the default disposition a terminal gives.
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    episodes = out / "episodes.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and (not episodes.exists() or len(episodes.read_text().splitlines()) < 5):
        time.sleep(0.2)
    workers = [p.pid for p in psutil.Process(process.pid).children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]
    assert workers, "the eval should have worker processes running"
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    for pid in workers:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, f"worker {pid} survived"
    kept = [json.loads(line) for line in episodes.read_text().splitlines()]
    assert 5 <= len(kept) < 120

    resumed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming: {len(kept)} episodes already" in resumed.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["episodes"] == 120
    lines = [json.loads(line) for line in episodes.read_text().splitlines()]
    assert len(lines) == 120 and len({(r["task_id"], r["init_state_index"]) for r in lines}) == 120


PARENT_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from conftest import reach_config
from pi0.ript.env.episode import EpisodeRequest
from pi0.ript.env.parallel_runner import PI0LiberoRunner
from pi0.ript.policy.small_policy import SmallPolicy

if __name__ == "__main__":
    runner = PI0LiberoRunner(SmallPolicy(chunk_size=8), config=reach_config("task.num_parallel_envs=2", "task.max_episode_length=200"))
    for episode in runner.run_episodes([EpisodeRequest(0, i % 50) for i in range(1000)]):
        print("episode", flush=True)
"""


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    """SIGKILL gives the parent no chance to clean up: the workers must notice on their own and exit."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT.format(tests=str(Path(__file__).parent)))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    assert parent.stdout.readline().startswith("episode")
    children = psutil.Process(parent.pid).children(recursive=True)
    assert len(children) >= 2
    parent.kill()
    parent.wait(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"left behind after the parent died: {[p.pid for p in alive]}"
