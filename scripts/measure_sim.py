"""Time one LIBERO task: rendering, resets and physics substeps, each with its speed feature off and on.

    python scripts/measure_sim.py --suite libero_spatial --task 0 --image-size 128 --steps 60 --replan 5

Random actions; CPU time depends on what else runs on the machine, so compare ratios from one run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pi0.ript.env.libero_sim import LiberoEnvSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="libero_spatial")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--replan", type=int, default=5)
    p.add_argument("--resets", type=int, default=3)
    p.add_argument("--rounds", type=int, default=8, help="alternating rounds of --steps physics-only steps per env")
    a = p.parse_args()

    spec = LiberoEnvSpec(a.suite, image_size=a.image_size)
    sim = spec.make()
    try:
        sim.reset(a.task, 0)  # build + first reset, not timed
        rates = {}
        for label, every in (("render every step", True), ("render on demand", False)):
            sim.reset(a.task, 0)
            actions = np.random.default_rng(0).uniform(-1, 1, size=(a.steps, 7))
            t = time.perf_counter()
            for i, act in enumerate(actions):
                sim.step(act, want_observation=every or (i + 1) % a.replan == 0)
            rates[label] = a.steps / (time.perf_counter() - t)
            print(f"{label:>18}: {rates[label]:6.2f} steps/s  ({a.image_size} px, replan {a.replan})", flush=True)
        print(f"{'ratio':>18}: {rates['render on demand'] / rates['render every step']:6.2f}x")

        times = {}
        for label, force in (("hard reset", True), ("fast reset", False)):
            ts = []
            for k in range(a.resets):
                r = sim.reset(a.task, k % 2, force_hard_reset=force)
                assert r.hard_reset == force
                ts.append(r.info["reset_s"])
            times[label] = float(np.median(ts))
            print(f"{label:>18}: {times[label]:6.2f} s median of {a.resets} (incl. set_init_state + "
                  f"{spec.num_wait_steps} settle steps)", flush=True)
        print(f"{'ratio':>18}: {times['hard reset'] / times['fast reset']:6.2f}x")
    finally:
        sim.close()
    physics_only(a)


def physics_only(a) -> None:
    """Steps with no render, task.skip_repeated_forward (the default) against robosuite's three forward passes per
    substep: two envs of the same episode, stepped in alternating rounds so both see the same machine load; their
    states must stay equal."""
    sims = {skip: LiberoEnvSpec(a.suite, image_size=a.image_size, skip_repeated_forward=skip).make() for skip in (True, False)}
    try:
        for sim in sims.values():
            sim.reset(a.task, 0)
        actions = np.random.default_rng(1).uniform(-1, 1, size=(a.rounds * a.steps, 7))
        seconds = {True: [], False: []}
        for r in range(a.rounds):
            for skip, sim in sims.items():
                t = time.perf_counter()
                for act in actions[r * a.steps:(r + 1) * a.steps]:
                    sim.step(act, want_observation=False)
                seconds[skip].append(time.perf_counter() - t)
        rates = {skip: a.steps / float(np.median(s)) for skip, s in seconds.items()}
        state = {skip: sim._robosuite_env.sim.get_state().flatten() for skip, sim in sims.items()}
        same = np.array_equal(state[True], state[False])
        for skip, label in ((False, "robosuite's passes"), (True, "repeats skipped")):
            print(f"{label:>18}: {rates[skip]:6.2f} steps/s physics only (median of {a.rounds} rounds of {a.steps})", flush=True)
        print(f"{'ratio':>18}: {rates[True] / rates[False]:6.2f}x, same state after {a.rounds * a.steps} steps: {same}")
    finally:
        for sim in sims.values():
            sim.close()


if __name__ == "__main__":
    main()
