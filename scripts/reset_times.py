"""Reset time per LIBERO scene class, hard against fast: the mean `reset_s` LiberoSim reports for resets 2-3 of one
task (the first reset of an env is always a hard one). One task per class of the shipped suites. Last, what a task
switch costs in a warm process (the env is rebuilt for the new task): what runner.spread_tasks saves per switch.

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
        switches = [sim.reset(task, 0).info["reset_s"] for task in (0, 1, 0, 1)][1:]  # the first also imports, JITs
        fast = [sim.reset(1, i).info["reset_s"] for i in (1, 2)]
    finally:
        sim.close()
    print(f"task switch (env rebuilt) in libero_spatial, tasks 0 <-> 1: {np.mean(switches):.2f} s; "
          f"a fast reset of the same task: {np.mean(fast):.2f} s", flush=True)
