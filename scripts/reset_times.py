"""Reset time per LIBERO scene class, hard against fast: the mean `reset_s` LiberoSim reports for resets 2-3 of one
task. One task per class of the shipped suites. Last, what a task switch costs in a warm process (the env is rebuilt
for the new task): what runner.spread_tasks saves per switch, and what the constructor's snapshot saves in it (the
task's first reset the fast way, against the hard first reset LIBERO's own `env.reset()` runs).

    MUJOCO_GL=egl python scripts/reset_times.py
"""

import numpy as np

from pi0.ript.env.libero_sim import LiberoEnvSpec

CASES = [("libero_spatial", 4, "Tabletop"), ("libero_object", 0, "Floor"), ("libero_10", 3, "Kitchen"),
         ("libero_10", 0, "Living room"), ("libero_10", 5, "Study")]

if __name__ == "__main__":
    for suite, task, scene in CASES:
        row = []
        for fast in (False, True):
            sim = LiberoEnvSpec(suite, image_size=64, fast_reset=fast).make()
            try:
                resets = [sim.reset(task, i) for i in range(3)]
            finally:
                sim.close()
            assert [r.hard_reset for r in resets[1:]] == [not fast] * 2, "fast reset did not engage"
            row.append(float(np.mean([r.info["reset_s"] for r in resets[1:]])))
        print(f"{scene:12s} {suite} task {task}: hard {row[0]:.2f} s, fast {row[1]:.2f} s ({row[0] / row[1]:.1f}x)", flush=True)

    sim = LiberoEnvSpec("libero_spatial", image_size=64).make()
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
