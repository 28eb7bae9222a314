"""`pi0-ript eval` starts its env workers before it loads the policy, so env builds and the checkpoint load overlap;
a checkpoint that fails to load still leaves no worker behind. Real worker processes on the reach task."""

from __future__ import annotations

import json

import pytest

import pi0.ript.evaluate as evaluate
from conftest import live_children, reach_config
from pi0.ript.config.errors import ConfigError


def test_workers_are_starting_while_the_policy_loads(tmp_path, monkeypatch, no_orphans):
    workers_at_load = []
    real_load = evaluate.load_policy

    def load_and_count(cfg):
        workers_at_load.append(len(live_children()))
        return real_load(cfg)

    monkeypatch.setattr(evaluate, "load_policy", load_and_count)
    cfg = reach_config("task.num_parallel_envs=2", "task.task_ids=[0]", "eval.episodes_per_task=3", f"eval.output_dir={tmp_path}")
    children_before = len(live_children())
    results = evaluate.run_eval(cfg)
    assert workers_at_load == [children_before + 2]
    assert results["runner_stats"]["episodes"] == 3
    assert json.loads((tmp_path / "results.json").read_text())["runner_stats"]["episodes"] == 3


def test_a_checkpoint_that_fails_to_load_stops_the_started_workers(tmp_path, no_orphans):
    broken = tmp_path / "ckpt"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # neither a pi0 nor a pi0.5 checkpoint
    cfg = reach_config("task.num_parallel_envs=2", "policy.kind=pi0", f"policy.checkpoint_path={broken}",
                       f"eval.output_dir={tmp_path / 'out'}")
    with pytest.raises(ConfigError, match="norm_stats.json"):
        evaluate.run_eval(cfg)


def test_the_checkpoint_is_hashed_while_its_weights_load(tmp_path, monkeypatch):
    """Each side waits to see the other running: one after the other (as before) would time out."""
    import threading

    from pi0.ript.policy import loading
    from pi0.ript.policy.pi0_policy import PI0Policy, make_tiny_policy

    checkpoint = tmp_path / "tiny"
    make_tiny_policy(["reach the red target"], image_size=28, chunk_size=5).save_pretrained(checkpoint)
    hash_running, load_running = threading.Event(), threading.Event()
    real_hash, real_load = loading.checkpoint_hash, PI0Policy.from_pretrained

    def hash_meeting_the_load(path):
        hash_running.set()
        assert load_running.wait(10), "the weights did not load while the checkpoint was hashed"
        return real_hash(path)

    def load_meeting_the_hash(*args, **kwargs):
        load_running.set()
        assert hash_running.wait(10), "the checkpoint was not hashed while the weights loaded"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(loading, "checkpoint_hash", hash_meeting_the_load)
    monkeypatch.setattr(PI0Policy, "from_pretrained", load_meeting_the_hash)
    cfg = reach_config("policy.kind=pi0", f"policy.checkpoint_path={checkpoint}", "policy.device=cpu")
    policy, description = loading.load_policy(cfg)
    assert description["checkpoint_sha256"] == real_hash(checkpoint) and isinstance(policy, PI0Policy)
