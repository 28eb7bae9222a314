"""The targets a run is held to, and its tables as markdown (`pi0-ript bench runner --markdown RUN.json`)."""

from __future__ import annotations

from typing import Any

from pi0.ript.bench.common import ALL_SECTIONS, _machine_line


def targets(results) -> list[dict[str, Any]]:
    """The targets this project holds the runner to, each with the ratio this run measured (None when its section did
    not run)."""
    rows = []

    def add(name, value, goal, op=">="):
        met = None if value is None else (value >= goal if op == ">=" else value <= goal)
        rows.append({"target": name, "measured": value, "goal": f"{op} {goal}", "met": met})

    runners = results.get("runners", {})
    for n in (1, 2):
        point = runners.get(f"parallel_{n}", {})
        add(f"parallel runner / sim limit, N={n}, replan 5", point.get("ratio_to_sim_limit"), 0.9)
    lat = results.get("latency", {})
    for key, point in lat.items():
        if key.endswith("_replan_1") and key.startswith("latency_200ms"):
            add("L=200ms replan 1: overlapped / lock-step", point["overlapped_over_lockstep"], 1.3)
        add(f"{key}: overlapped / min(sim, inference limit)", point.get("overlapped_over_min_limit"), 0.9)
    feats = results.get("features", {})
    p = feats.get("workers_2_replan_5", {})
    add("N=2 replan 5: render on demand / render every step, env-steps/s", p.get("steps_ratio_on_over_off"), 3.0)
    add("N=2 replan 5: features on / sim limit rendering every 5th step", p.get("on_over_sim_limit_same_render"), 0.9)
    best = max((v.get("episodes_ratio_on_over_off", 0) for v in feats.values()), default=None)
    add("episodes/hour, features on / off, best point", best or None, 3.5)
    for key, v in feats.items():
        if key.endswith("_replan_1"):
            add(f"{key}: features on / off >= ~1 (within noise)", v.get("steps_ratio_on_over_off"), 0.95)
    for name, point in results.get("emulated", {}).items():
        goals = {"h200_a140_c8": (0.9, 1.15), "compiled_a20_c3": (0.9, 1.3)}.get(name)
        if goals:
            add(f"emulated {name}: defaults / best predicted schedule", point["defaults_over_best_predicted"], goals[0])
            add(f"emulated {name}: defaults / all-off", point["defaults_over_all_off"], goals[1])
        elif name == "reach_a140_c8":
            add(f"emulated {name}: defaults / lock-step", point["defaults_over_lockstep"], 0.95)
    mem = results.get("memory", {})
    if mem.get("worker_over_bare"):
        add("worker RSS / bare env RSS", max(mem["worker_over_bare"]), 1.05, "<=")
    if "pickle" in results:
        add("observation pipe cost / rendered step", results["pickle"].get("fraction_of_rendered_step"), 0.05, "<=")
    return rows

def _f(x, digits=3):
    return "n/a" if x is None else (f"{x:.{digits}g}" if isinstance(x, float) else str(x))

def _emulated_markdown(emulated: dict[str, Any]) -> str:
    lines = ["Emulated GPU box (reach workers sleeping a step-time model, a latency policy L(b) = a + c*b; replan 5; "
             "all-off = render every step + lock-step + a worker command per step, hard reset not emulated):\n",
             "| configuration | workers | physics + render ms | a + c ms | S per chunk: sim limit / runner | best k: predicted | defaults | lock-step | all-off | "
             "defaults / best predicted | same, with the runner's S | defaults / all-off | defaults / lock-step | defaults: k, mean batch | same episodes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, p in emulated.items():
        c, runs = p["config"], p["runs"]

        def cell(run):
            return f"{_f(run['env_steps_per_second'])} ({_f(run['episodes_per_hour'])} ep/h)"

        lines.append(
            f"| {name} | {c['workers']} | {c['physics_ms']:g} + {c['render_ms']:g} | {c['call_fixed_ms']:g} + {c['call_per_sample_ms']:g} | "
            f"{p['sim_seconds_per_chunk'] * 1000:.0f} / {_f(p['runner_sim_seconds_per_chunk'] * 1000) if p.get('runner_sim_seconds_per_chunk') else 'n/a'} ms | "
            f"k={p['best_k']}: {_f(p['best_predicted_steps_per_second'])} ({_f(p['best_predicted_episodes_per_hour'])} ep/h) | "
            f"{cell(runs['defaults'])} | {cell(runs['lockstep'])} | {cell(runs['all_off'])} | {_f(p['defaults_over_best_predicted'])} | "
            f"{_f(p.get('defaults_over_best_predicted_with_runner_s'))} | "
            f"{_f(p['defaults_over_all_off'])} | {_f(p['defaults_over_lockstep'])} | {runs['defaults']['schedule'].get('groups', 1)}, "
            f"{_f(runs['defaults']['mean_batch_size'])} | {p['same_episodes']} |")
    lines.append("\n(env-steps/s (episodes/hour). Predicted: N x replan / max(S + L(N/k), k L(N/k)), S from the simulation "
                 "limit, a and c fitted to this run's measured calls.)\n")
    for name, p in emulated.items():
        fit = p["call_fit"]
        lines.append(f"- {name}: fitted a = {fit['fixed_seconds'] * 1000:.1f} ms, c = {fit['per_sample_seconds'] * 1000:.2f} ms; predicted env-steps/s by k: "
                     + ", ".join(f"{k}: {_f(v)}" for k, v in list(p["predicted_steps_per_second"].items())[:8]))
    lines.append("\nWhere each run's env time went (env-seconds summed over envs, as a share of workers x wall):\n")
    lines.append("| configuration, run | in a call | held for batch-mates (model idle) | queued behind a call | simulating and the rest | model idle while envs waited (s of wall) |")
    lines.append("|---|---|---|---|---|---|")
    for name, p in emulated.items():
        for run_name, run in p["runs"].items():
            total = p["config"]["workers"] * run["wall_seconds"]
            env = run["env_seconds"]
            rest = total - sum(env.values())
            lines.append(f"| {name}, {run_name} | {env['in_call'] / total:.1%} | {env['held_for_batch_mates'] / total:.1%} | "
                         f"{env['queued_behind_a_call'] / total:.1%} | {rest / total:.1%} | {run['model_idle_with_waiters_seconds']:.1f} of {run['wall_seconds']:.1f} |")
    lines.append("")
    return "\n".join(lines)

def markdown(results) -> str:
    """The tables of docs/PERFORMANCE.md, from a saved run (so the doc shows exactly what the bench measured)."""
    lines = []
    add = lines.append
    st, m = results["settings"], results["machine"]
    add(_machine_line(m) + ".\n")
    partial = set(st["sections"]) != set(ALL_SECTIONS)
    if st["sections"] == ["emulated"]:  # its settings are in its own table; the LIBERO ones below do not apply
        add(f"Load average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}, at end "
            f"{', '.join(f'{x:.2f}' for x in m['load_average_at_end'])}; bench wall time {results['wall_seconds']:.0f} s.\n")
    else:
        add(f"Settings: {st['suite']} task {st['task']}, {st['image_size']}x{st['image_size']} px, two cameras, fast_render={st['fast_render']}, "
            f"episodes of {st['episode_length']} steps; load average at start {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}, "
            f"at end {', '.join(f'{x:.2f}' for x in m['load_average_at_end'])}; 1-min load after each section "
            f"{', '.join(f'{k} {v:.1f}' for k, v in m.get('load_after_section', {}).items())}; bench wall time {results['wall_seconds']:.0f} s"
            + (" (" + ", ".join(f"{k} {v:.0f} s" for k, v in results["section_seconds"].items()) + ")" if results.get("section_seconds") else "")
            + ".\n")
    if "sim" in results:
        add("| simulation limit (no policy) | " + " | ".join(results["sim"]["1"].keys()) + " |")
        add("|---" * (1 + len(results["sim"]["1"])) + "|")
        for n, point in results["sim"].items():
            add(f"| N={n} workers | " + " | ".join(_f(v["env_steps_per_second"]) + (f" ({_f(v['episodes_per_hour'])} ep/h)" if "episodes_per_hour" in v else "")
                                                  for v in point.values()) + " |")
        add("\n(env-steps/s (episodes/hour); `render_every_k`: observation rendered every k-th step; `episodes_...`: episodes of the bench's length with resets between them, the runner's exact env work)\n")
    if "pickle" in results:
        pk = results["pickle"]
        add(f"Observation transport: {pk['bytes'] / 1e3:.0f} kB pickled, {pk['pipe_seconds'] * 1e3:.2f} ms through a pipe "
            f"(pickle round trip alone {pk['pickle_roundtrip_seconds'] * 1e3:.2f} ms), a rendered step {_f((pk['rendered_step_seconds'] or 0) * 1e3)} ms: "
            f"**{_f((pk['fraction_of_rendered_step'] or 0) * 100)}%** of a step.\n")
    if "inference" in results:
        inf = results["inference"]
        batches = list(next(iter(inf.values())).keys())
        add("| inference limit (chunks/s) | " + " | ".join(f"B={b}" for b in batches) + " |")
        add("|---" * (1 + len(batches)) + "|")
        for name, point in inf.items():
            add(f"| {name} | " + " | ".join(_f(point[b]["chunks_per_second"]) for b in batches) + " |")
        add("")
    def row(name, p):
        ph = p["phase_seconds"]  # runs saved before the rename call stepping_envs waiting_on_workers
        return (f"| {name} | {_f(p['env_steps_per_second'])} | {_f(p['episodes_per_hour'])} | {_f(p.get('ratio_to_sim_limit'))} | "
                f"{_f(p.get('ratio_to_serial'))} | {_f(p['mean_batch_size'])} | {ph.get('stepping_envs', ph.get('waiting_on_workers', 0.0)):.1f} / {ph['inference']:.1f} / {ph['main_loop_other']:.1f} of {p['wall_seconds']:.1f} |")
    head = "| run | env-steps/s | episodes/h | / sim limit | / serial | mean batch | s waiting / inference / other of wall |\n|---|---|---|---|---|---|---|"
    if "runners" in results:
        add("Runners, small policy, replan 5:\n")
        add(head)
        for name, p in results["runners"].items():
            add(row(name, p))
        add("")
    if "latency" in results:
        add(f"Latency policy, {st['latency_workers']} workers:\n")
        add("| policy, replan | lock-step | overlapped | overlapped / lock-step | sim limit | inference limit | overlapped / min(limits) | batch (lock / over) | same episodes |")
        add("|---|---|---|---|---|---|---|---|---|")
        for name, p in results["latency"].items():
            add(f"| {name} | {_f(p['lockstep']['env_steps_per_second'])} | {_f(p['overlapped']['env_steps_per_second'])} | "
                f"{_f(p['overlapped_over_lockstep'])} | {_f(p['sim_limit'])} | {_f(p['inference_limit'])} | {_f(p.get('overlapped_over_min_limit'))} | "
                f"{_f(p['lockstep']['mean_batch_size'])} / {_f(p['overlapped']['mean_batch_size'])} | {p['same_episodes']} |")
        add("\nPhases (s waiting on workers / inference / other, of wall; with overlap, inference runs during the waiting):\n")
        add(head)
        for name, p in results["latency"].items():
            for mode in ("lockstep", "overlapped"):
                add(row(f"{name} {mode}", p[mode]))
        add("")
    if "features" in results:
        add("Render on demand + fast reset, on vs off, small policy:\n")
        add("| workers, replan | on: env-steps/s | off: env-steps/s | ratio | on: episodes/h | off: episodes/h | ratio | on / sim limit (same rendering) |")
        add("|---|---|---|---|---|---|---|---|")
        for name, p in results["features"].items():
            on, off = p.get("on", {}), p.get("off", {})
            add(f"| {name} | {_f(on.get('env_steps_per_second'))} | {_f(off.get('env_steps_per_second'))} | {_f(p.get('steps_ratio_on_over_off'))} | "
                f"{_f(on.get('episodes_per_hour'))} | {_f(off.get('episodes_per_hour'))} | {_f(p.get('episodes_ratio_on_over_off'))} | {_f(p.get('on_over_sim_limit_same_render'))} |")
        add("")
    if "emulated" in results:
        add(_emulated_markdown(results["emulated"]))
    if "main_rss_bytes" in results.get("memory", {}):  # the runners section records worker RSS alone
        mem = results["memory"]
        add(f"Memory: main process {mem['main_rss_bytes'] / 2**20:.0f} MiB; workers "
            + ", ".join(f"{r / 2**20:.0f} MiB" for r in mem["worker_rss_bytes"])
            + f"; bare env process {mem['bare_env_rss_bytes'] / 2**20:.0f} MiB; worker / bare " + ", ".join(f"{x:.3f}" for x in mem["worker_over_bare"]) + ".\n")
    add("| target | measured | goal | verdict |\n|---|---|---|---|")
    for t in results.get("targets", []):
        if partial and t["measured"] is None:
            continue  # a section this run left out
        verdict = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
        add(f"| {t['target']} | {_f(t['measured'])} | {t['goal']} | {verdict} |")
    return "\n".join(lines)
