"""Reset time per LIBERO scene class, hard against fast: the mean `reset_s` LiberoSim reports for resets 2-3 of one
task. One task per class of the shipped suites. Last, what a task switch costs in a warm process (the env is rebuilt
for the new task): what runner.spread_tasks saves per switch, and what the constructor's snapshot saves in it (the
task's first reset the fast way, against the hard first reset LIBERO's own `env.reset()` runs). Then an env worker's
start in a fresh process, to its first reset's reply, with the scene compiled against loaded from the scene cache
(task.model_cache_gb), and the worker's memory after that reset. Last, one worker taking five libero_object tasks
in turn (five scenes), its memory after each and the time for the five, scenes loaded against compiled. The lines
before the last two compile every scene (model_cache_gb=0), as LIBERO does, so they measure the resets alone.

    MUJOCO_GL=egl python scripts/reset_times.py [--caches-only]
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pi0.ript.env.libero_sim import LiberoEnvSpec

CASES = [("libero_spatial", 4, "Tabletop"), ("libero_object", 0, "Floor"), ("libero_10", 3, "Kitchen"),
         ("libero_10", 0, "Living room"), ("libero_10", 5, "Study")]


def fresh_process_starts(rounds: int = 3) -> None:
    from pi0.ript.env.worker import RESET, STATS, EnvWorker

    with tempfile.TemporaryDirectory() as cache_dir:
        spec = {gb: LiberoEnvSpec("libero_spatial", image_size=64, model_cache_gb=gb, model_cache_dir=cache_dir) for gb in (0, 8.0)}
        seconds, rss, sources = {0: [], 8.0: []}, {0: [], 8.0: []}, []
        for i in range(rounds + 1):  # round 0 fills the cache and warms the machine's file cache; not counted
            for gb in (8.0, 0):
                start = time.perf_counter()
                worker = EnvWorker(i, spec[gb])
                try:
                    reset = worker.call(RESET, {"task_id": 0, "init_state": 0}, timeout=600)
                    elapsed = time.perf_counter() - start
                    memory = worker.call(STATS, timeout=60)["rss_bytes"]
                finally:
                    worker.close()
                if i:
                    seconds[gb].append(elapsed)
                    rss[gb].append(memory)
                    sources.append((gb, reset.info["scene_models"]))
        (scene_file,) = Path(cache_dir).glob("*.mjb")
        scene_gb = scene_file.stat().st_size / 1e9
    assert all(s == ({"loaded": 1, "compiled": 0, "written": 0} if gb else {"loaded": 0, "compiled": 1, "written": 0})
               for gb, s in sources), sources
    compiled, loaded = np.median(seconds[0]), np.median(seconds[8.0])
    print(f"env worker start in a fresh process, libero_spatial task 0, to the first reset's reply (median of {rounds}): "
          f"{loaded:.2f} s with the scene loaded from the cache, {compiled:.2f} s compiled ({compiled / loaded:.2f}x); "
          f"worker memory after it {np.median(rss[8.0]) / 2**30:.2f} GiB against {np.median(rss[0]) / 2**30:.2f} GiB; "
          f"the scene's file {scene_gb:.2f} GB",
          flush=True)


def task_switch_memory(tasks: int = 5) -> None:
    from pi0.ript.env.worker import RESET, STATS, EnvWorker

    with tempfile.TemporaryDirectory() as cache_dir:
        rows = {}
        for label, gb in (("filling the cache", 8.0), ("loaded", 8.0), ("compiled", 0)):
            worker = EnvWorker(0, LiberoEnvSpec("libero_object", image_size=64, model_cache_gb=gb, model_cache_dir=cache_dir))
            try:
                worker.wait_started(600)
                start, rss, loaded = time.perf_counter(), [], 0
                for task in range(tasks):
                    reset = worker.call(RESET, {"task_id": task, "init_state": 0}, timeout=600)
                    rss.append(worker.call(STATS, timeout=60)["rss_bytes"] / 2**30)
                    loaded += reset.info["scene_models"]["loaded"]
                rows[label] = (time.perf_counter() - start, rss, loaded)
            finally:
                worker.close()
        sizes = sorted(path.stat().st_size / 1e9 for path in Path(cache_dir).glob("*.mjb"))
    assert rows["loaded"][2] == tasks and rows["compiled"][2] == 0, rows
    (loaded_s, loaded_rss, _), (compiled_s, compiled_rss, _) = rows["loaded"], rows["compiled"]
    print(f"one worker through libero_object tasks 0-{tasks - 1} (a scene each): {loaded_s:.1f} s with the scenes loaded, "
          f"{compiled_s:.1f} s compiled ({compiled_s / loaded_s:.2f}x); memory after each task "
          f"{', '.join(f'{r:.2f}' for r in loaded_rss)} GiB loaded, {', '.join(f'{r:.2f}' for r in compiled_rss)} GiB compiled; "
          f"the scenes' files {sizes[0]:.2f}-{sizes[-1]:.2f} GB", flush=True)


if __name__ == "__main__":
    if "--caches-only" in sys.argv:
        fresh_process_starts()
        task_switch_memory()
        sys.exit()
    for suite, task, scene in CASES:
        row = []
        for fast in (False, True):
            sim = LiberoEnvSpec(suite, image_size=64, fast_reset=fast, model_cache_gb=0).make()
            try:
                resets = [sim.reset(task, i) for i in range(3)]
            finally:
                sim.close()
            assert [r.hard_reset for r in resets[1:]] == [not fast] * 2, "fast reset did not engage"
            row.append(float(np.mean([r.info["reset_s"] for r in resets[1:]])))
        print(f"{scene:12s} {suite} task {task}: hard {row[0]:.2f} s, fast {row[1]:.2f} s ({row[0] / row[1]:.1f}x)", flush=True)

    sim = LiberoEnvSpec("libero_spatial", image_size=64, model_cache_gb=0).make()
    try:
        sim.reset(0, 0)  # the first build also imports and JITs
        switches = {True: [], False: []}  # hard first reset -> reset_s of the switches
        for task, hard in ((1, True), (0, False), (1, False), (0, True), (1, True), (0, False)):
            switches[hard].append(sim.reset(task, 0, force_hard_reset=hard).info["reset_s"])
        fast = [sim.reset(0, i).info["reset_s"] for i in (1, 2)]
    finally:
        sim.close()
    hard_s, fast_s = np.mean(switches[True]), np.mean(switches[False])
    print(f"task switch (env rebuilt) in libero_spatial, tasks 0 <-> 1: {fast_s:.2f} s with the constructor's snapshot, "
          f"{hard_s:.2f} s with a hard first reset ({hard_s / fast_s:.2f}x); a fast reset of the same task: "
          f"{np.mean(fast):.2f} s", flush=True)
    fresh_process_starts()
    task_switch_memory()
