#!/usr/bin/env python
"""Record one real LIBERO observation (libero_spatial task 0, init state 0, after the settle steps, 256 px as in
openpi's setup) to tests/data/, for the test of pi0's whole input/output path on real data.

    python scripts/record_libero_observation.py
"""

from pathlib import Path

import numpy as np

from pi0.ript.env.libero_sim import LiberoEnvSpec

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "libero_spatial_task0_init0.npz"

if __name__ == "__main__":
    spec = LiberoEnvSpec(benchmark_name="libero_spatial", image_size=256)
    env = spec.make()
    try:
        reset = env.reset(task_id=0, init_state=0)
    finally:
        env.close()
    np.savez_compressed(OUT, instruction=np.array(reset.instruction), **reset.observation)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")
