"""Section `memory`: main-process RSS, each worker's RSS next to a bare env process."""

from __future__ import annotations

import multiprocessing as mp

from pi0.ript.bench.common import _measure_runner, _policy, _spec
from pi0.ript.env.worker import rss_bytes


# ------------------------------------------------------------------------------------------------------- memory
def _bare_env(spec, task: int, queue) -> None:
    """A process that only builds the env (and takes it to the same state as a worker: reset, a rendered step)."""
    from pi0.ript.env.sim import NOOP_ACTION

    env = spec.make()
    env.reset(task_id=task, init_state=0)
    env.step(NOOP_ACTION, True)
    queue.put(rss_bytes())
    env.close()

def _record_worker_memory(results, runner) -> None:
    stats = [w.call("stats", timeout=120) for w in runner.start_workers()]
    results.setdefault("memory", {})["worker_rss_bytes"] = [s["rss_bytes"] for s in stats]

def bench_memory(args, results, pool) -> None:
    mem = results.setdefault("memory", {})
    if "worker_rss_bytes" not in mem:
        runner = pool.get(min(2, args.max_workers))
        _measure_runner(args, runner, _policy(), 5, warm=True)
        _record_worker_memory(results, runner)
    pool.close()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_bare_env, args=(_spec(args), args.task, queue))
    process.start()
    mem["bare_env_rss_bytes"] = queue.get(timeout=600)
    process.join(60)
    mem["main_rss_bytes"] = rss_bytes()
    mem["worker_over_bare"] = [r / mem["bare_env_rss_bytes"] for r in mem["worker_rss_bytes"]]
    print(f"memory: main {mem['main_rss_bytes'] / 2**20:.0f} MiB; workers "
          + ", ".join(f"{r / 2**20:.0f} MiB" for r in mem["worker_rss_bytes"])
          + f"; bare env {mem['bare_env_rss_bytes'] / 2**20:.0f} MiB; worker/bare "
          + ", ".join(f"{x:.3f}" for x in mem["worker_over_bare"]))
