"""`pi0-ript eval` over several processes (torchrun, gloo on CPUs here): the episodes shared, one episodes.jsonl that
every rank appends to, rank 0 alone writing results; the episodes equal to one process's, frame for frame; resume
across ranks; each rank's policy device and render GPU (the trainer's too)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT
from pi0.ript.config.errors import ConfigError
from pi0.ript.env.libero_sim import render_on_gpu
from pi0.ript.eval_ranks import CLAIMS_FILE, EpisodeClaims, EpisodeLog, EvalRanks, merged_runner_stats
from pi0.ript.evaluate import _load_finished
from test_ddp import free_port


def _append_many(path: str, writer: int, count: int) -> None:
    with EpisodeLog(Path(path)) as log:
        for i in range(count):
            # 20 kB lines: longer than a pipe's atomic write and than Python's file buffer
            log.append({"task_id": writer, "init_state_index": i, "padding": "x" * 20_000})


def test_episode_log_lines_never_interleave_across_processes(tmp_path):
    path = tmp_path / "episodes.jsonl"
    ctx = mp.get_context("fork")
    writers = [ctx.Process(target=_append_many, args=(str(path), w, 60)) for w in range(4)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 240
    assert {(r["task_id"], r["init_state_index"]) for r in map(json.loads, lines)} == {(w, i) for w in range(4) for i in range(60)}


def test_episode_log_closes_a_line_a_crash_cut_short(tmp_path):
    path = tmp_path / "episodes.jsonl"
    path.write_text(json.dumps({"task_id": 0, "init_state_index": 0}) + "\n" + '{"task_id": 0, "init_state_in')
    with EpisodeLog(path) as log:
        log.append({"task_id": 0, "init_state_index": 1})
    assert sorted(_load_finished(path)) == [(0, 0), (0, 1)]  # the cut line is skipped; its episode runs again
    assert path.read_text().endswith('"init_state_in\n{"task_id": 0, "init_state_index": 1}\n')


def _take_all(path: str, total: int, pause: float, out: str) -> None:
    """One rank: take blocks until none is left, `pause` seconds of 'playing' per episode; write the blocks taken."""
    import time

    claims, blocks = EpisodeClaims(Path(path), total, 2, block=4), []
    while taken := claims.take():
        blocks.append([taken.start, taken.stop])
        time.sleep(pause * len(taken))
    Path(out).write_text(json.dumps(blocks))


def test_claims_cover_every_episode_once_and_the_faster_rank_takes_more(tmp_path):
    """Two processes take episodes from one claims file at once: every episode goes to exactly one of them, in
    blocks of at most 4 consecutive episodes, and the rank that plays faster takes more (a fixed share: 20 each)."""
    path = tmp_path / CLAIMS_FILE
    EpisodeClaims(path, 40, 2, block=4).reset()
    ctx = mp.get_context("fork")
    ranks = [ctx.Process(target=_take_all, args=(str(path), 40, pause, str(tmp_path / f"rank{i}.json")))
             for i, pause in enumerate((0.002, 0.03))]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(60)
        assert p.exitcode == 0
    fast, slow = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    assert all(1 <= stop - start <= 4 for start, stop in fast + slow)
    assert sorted(i for start, stop in fast + slow for i in range(start, stop)) == list(range(40))
    episodes = lambda blocks: sum(stop - start for start, stop in blocks)  # noqa: E731
    assert episodes(fast) > episodes(slow) >= 1
    # what the runner reads: the items of each block taken, in order
    claims = EpisodeClaims(tmp_path / "again", 6, 1, block=4)
    claims.reset()
    assert list(claims.requests("abcdef")) == list("abcdef")


def test_claims_blocks_shrink_to_an_even_share_of_what_is_left(tmp_path):
    claims = EpisodeClaims(tmp_path / CLAIMS_FILE, 10, 4, block=3)
    claims.reset()
    sizes = []
    while taken := claims.take():
        sizes.append(len(taken))
    # 3 while a quarter of what is left is at least 3, then ceil(left / 4): the last ones go one per rank
    assert sizes == [3, 2, 2, 1, 1, 1] and sum(sizes) == 10 and not claims.take()


def test_policy_device_per_rank():
    assert EvalRanks(0, 1).policy_device("cpu") == "cpu"  # one process: as configured (the GPU cases: next test)
    two = EvalRanks(1, 2, local_rank=1)
    assert two.policy_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="policy.device='cuda:1' under torchrun with 2 processes"):
        two.policy_device("cuda:1")
    import torch

    if not torch.cuda.is_available():
        assert two.policy_device("auto") == "cpu"
        with pytest.raises(ConfigError, match="no CUDA device is visible"):
            two.policy_device("cuda")


@pytest.fixture
def render_env():
    """MUJOCO_GL, MUJOCO_EGL_DEVICE_ID and CUDA_VISIBLE_DEVICES unset but for MUJOCO_GL=egl, and put back afterwards
    (render_on_gpu writes os.environ itself, and monkeypatch's delenv records nothing for a variable that was unset,
    so it would not remove one set later: a leaked device id stops every later LIBERO worker)."""
    names = ("MUJOCO_GL", "MUJOCO_EGL_DEVICE_ID", "CUDA_VISIBLE_DEVICES")
    saved = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ.pop(name, None)
    os.environ["MUJOCO_GL"] = "egl"
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def test_render_gpu_follows_the_rank(render_env):
    eight = lambda: 8  # noqa: E731  (an 8-GPU box whose EGL lists every card)
    assert render_on_gpu(3, eight) == "3" and os.environ["MUJOCO_EGL_DEVICE_ID"] == "3"
    assert render_on_gpu(5, eight) is None and os.environ["MUJOCO_EGL_DEVICE_ID"] == "3"  # set once: kept (a user's too)
    del os.environ["MUJOCO_EGL_DEVICE_ID"]
    os.environ["CUDA_VISIBLE_DEVICES"] = "4,6"
    assert render_on_gpu(1, eight) == "6"  # the card's physical index, which EGL counts by
    del os.environ["MUJOCO_EGL_DEVICE_ID"]
    os.environ["CUDA_VISIBLE_DEVICES"] = "GPU-8a3c,GPU-11f0"
    assert render_on_gpu(1, eight) is None and "MUJOCO_EGL_DEVICE_ID" not in os.environ
    del os.environ["CUDA_VISIBLE_DEVICES"]
    os.environ["MUJOCO_GL"] = "osmesa"
    assert render_on_gpu(0, eight) is None and "MUJOCO_EGL_DEVICE_ID" not in os.environ


def test_policy_gpu_and_render_gpu_per_rank_on_a_gpu_box(render_env, monkeypatch):
    """The CUDA branches, on this CPU-only machine: torch is told it sees GPUs (nothing is put on them) and EGL that
    it lists eight devices; what is checked is the choice: the policy's card, and the same card for rendering."""
    import torch

    import pi0.ript.env.libero_sim as libero_sim

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(libero_sim, "egl_device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert EvalRanks(0, 1).policy_device("cuda:2") == "cuda:2" and os.environ.pop("MUJOCO_EGL_DEVICE_ID") == "2"
    assert EvalRanks(3, 4, local_rank=3).policy_device("auto") == "cuda:3" and chosen == [3]
    assert os.environ.pop("MUJOCO_EGL_DEVICE_ID") == "3"
    os.environ["CUDA_VISIBLE_DEVICES"] = "4,5,6,7"
    assert EvalRanks(1, 4, local_rank=1).policy_device("cuda") == "cuda:1" and os.environ.pop("MUJOCO_EGL_DEVICE_ID") == "5"
    with pytest.raises(ConfigError, match="LOCAL_RANK=5 but torch sees 4 GPUs"):
        EvalRanks(5, 8, local_rank=5).policy_device("cuda")
    # a launcher that shows each process its own card: one visible, cuda:0, rendering on that card's physical index
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    os.environ["CUDA_VISIBLE_DEVICES"] = "6"
    assert EvalRanks(6, 8, local_rank=6).policy_device("auto") == "cuda:0" and os.environ["MUJOCO_EGL_DEVICE_ID"] == "6"


class _StopAfterDeviceSetup(Exception):
    pass


def test_trainer_renders_on_its_rank_gpu(render_env, monkeypatch, tmp_path):
    """`pi0-ript train`'s CUDA branch on this CPU-only machine: the trainer is handed cuda:1 (as torchrun's second
    rank gets) with CUDA_VISIBLE_DEVICES=2,3, and stopped just after its device setup; its env workers are then set
    to render on physical card 3, the one its policy uses."""
    import torch

    import pi0.ript.algo.trainer as trainer
    import pi0.ript.env.libero_sim as libero_sim
    from pi0.ript.config.schema import load_config

    def stop(*args, **kwargs):
        raise _StopAfterDeviceSetup

    os.environ["CUDA_VISIBLE_DEVICES"] = "2,3"
    monkeypatch.setattr(libero_sim, "egl_device_count", lambda: 4)
    monkeypatch.setattr(trainer, "setup_distributed", lambda *args, **kwargs: (1, 2, torch.device("cuda", 1)))
    monkeypatch.setattr(trainer, "resolve_precision", stop)  # the trainer's next step after the render GPU
    cfg = load_config(str(Path(REPO_ROOT) / "pi0/ript/config/ript_vla_test.yaml"), [f"train.output_dir={tmp_path}"])
    with pytest.raises(_StopAfterDeviceSetup):
        trainer.train(cfg)
    assert os.environ["MUJOCO_EGL_DEVICE_ID"] == "3"


@pytest.mark.libero  # needs EGL, as the LIBERO tests do
def test_render_gpu_left_alone_where_egl_lacks_the_card(render_env):
    """This machine's EGL (Mesa) lists one software device: device 0 may be pinned, device 1 must not be (a worker
    told to open it stops with robosuite's RuntimeError)."""
    from pi0.ript.env.libero_sim import egl_device_count

    count = egl_device_count()
    assert count >= 1  # the LIBERO tests render through it
    assert render_on_gpu(count) is None and "MUJOCO_EGL_DEVICE_ID" not in os.environ
    assert render_on_gpu(count - 1) == str(count - 1)


def test_merged_runner_stats_sums_counters_and_keeps_each_rank():
    one = {"env_steps": 100, "episodes": 4, "inference_calls": 10, "mean_batch_size": 2.0, "worker_restarts": 0,
           "task_loads": 2, "scene_models": {"loaded": 2, "compiled": 0}, "wall_seconds": 10.0}
    two = {**one, "env_steps": 60, "inference_calls": 30, "mean_batch_size": 1.0, "wall_seconds": 12.0,
           "scene_models": {"loaded": 1, "compiled": 1}}
    assert merged_runner_stats([one]) is one
    merged = merged_runner_stats([one, two])
    assert merged["env_steps"] == 160 and merged["episodes"] == 8 and merged["inference_calls"] == 40
    assert merged["mean_batch_size"] == pytest.approx((20 + 30) / 40)
    assert merged["scene_models"] == {"loaded": 3, "compiled": 1}
    assert merged["env_steps_per_second"] == pytest.approx(160 / 12.0) and merged["per_rank"] == [one, two]


# --- whole runs --------------------------------------------------------------------------------------------------
def _eval(out: Path, overrides: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "pi0.ript.cli"]
    if nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
                  "127.0.0.1", "--master_port", str(free_port()), "-m", "pi0.ript.cli"]
    command = [*launch, "eval", "--config", "pi0/ript/config/ript_vla_test.yaml", f"eval.output_dir={out}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _episodes(out: Path) -> dict[tuple[int, int], dict]:
    lines = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines() if line.endswith("}")]
    found = {(r["task_id"], r["init_state_index"]): r for r in lines}
    assert len(found) == len(lines), "an episode was written twice"
    return found


def _frames(out: Path) -> dict[str, np.ndarray]:
    import imageio.v2 as imageio

    return {video.name: np.stack(imageio.mimread(video)) for video in sorted((out / "videos").glob("*.mp4"))}


def _assert_same_episodes(reference: Path, run: Path) -> None:
    ours, theirs = _episodes(run), _episodes(reference)
    assert ours.keys() == theirs.keys()
    for key, record in ours.items():
        assert {k: v for k, v in record.items()} == theirs[key], key
    frames, reference_frames = _frames(run), _frames(reference)
    assert frames.keys() == reference_frames.keys() and len(frames) == len(ours)
    for name, video in frames.items():
        np.testing.assert_array_equal(video, reference_frames[name], err_msg=name)
    # the frames tell episodes apart: a test in which every episode looked the same would prove nothing
    assert len({video.tobytes() for video in frames.values()}) == len(frames)


# The small built-in policy: deterministic for its seed and input (pi0 draws its sampling noise from a stream that
# depends on the order of its calls, so two runs of it never match frame for frame); the frames still tell the
# episodes apart, since its actions follow the observations.
REACH = ["policy.kind=small", "task.benchmark_name=reach", "task.task_ids=[0,1,2]", "task.image_size=28",
         "task.max_episode_length=15", "eval.episodes_per_task=3", "eval.save_videos=true", "task.num_parallel_envs=1"]


def test_two_ranks_play_the_episodes_one_process_plays(tmp_path):
    _eval(tmp_path / "one", REACH)
    result = _eval(tmp_path / "two", REACH, nproc=2)
    _assert_same_episodes(tmp_path / "one", tmp_path / "two")
    assert result.stdout.count("results: ") == 1  # rank 0 alone prints the table and writes the results
    speed = r"speed: 9 episodes, \d+ env steps in [\d.]+ s over 2 ranks: [\d.]+ env-steps/s, \d+ episodes/hour"
    assert len(re.findall(speed, result.stdout)) == 1, result.stdout[-1000:]
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["episodes"] == 9 and results["runner_stats"]["ranks"] == 2
    # taken as the ranks' workers freed up: every episode once, on one rank or the other
    assert sum(s["episodes"] for s in results["runner_stats"]["per_rank"]) == 9
    assert not (tmp_path / "two" / CLAIMS_FILE).exists()  # rank 0 removes the claims once every rank is done
    assert results["protocol"] == json.loads((tmp_path / "one" / "results.json").read_text())["protocol"]


def test_two_ranks_resume_what_one_process_began(tmp_path):
    overrides = REACH
    _eval(tmp_path / "reference", overrides)
    begun = tmp_path / "begun"
    shutil.copytree(tmp_path / "reference", begun)
    shutil.rmtree(begun / "videos")
    (begun / "results.json").unlink()
    lines = (begun / "episodes.jsonl").read_text().splitlines()
    (begun / "episodes.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:25])  # then a crash mid-line
    (begun / CLAIMS_FILE).write_text("7\n")  # the crashed run's claims: the resumed run starts its own from 0
    result = _eval(begun, overrides, nproc=2)
    assert "resuming: 4 episodes already" in result.stderr
    assert len(_episodes(begun)) == 9
    assert {k: r for k, r in _episodes(begun).items()} == _episodes(tmp_path / "reference")
    assert len(list((begun / "videos").glob("*.mp4"))) == 5  # the five episodes this run played


@pytest.mark.libero
def test_two_ranks_on_libero_play_one_process_episodes(tmp_path, no_orphans):
    """Real LIBERO workers under two ranks: the same frames as one process, each scene shared through the caches."""
    overrides = ["policy.kind=small", "task.task_ids=[0,1]", "task.image_size=64",
                 "task.fast_render=true", "task.max_episode_length=8", "eval.episodes_per_task=2",
                 "eval.save_videos=true", "task.num_parallel_envs=1"]
    _eval(tmp_path / "one", overrides)
    _eval(tmp_path / "two", overrides, nproc=2)
    _assert_same_episodes(tmp_path / "one", tmp_path / "two")


# --- pi0's sampling noise, seeded per episode (eval.policy_noise) --------------------------------------------------
@pytest.fixture(scope="module")
def reach_pi0(tmp_path_factory):
    """A tiny pi0 with random weights sized for the reach task: it samples, so its episodes depend on the noise."""
    from pi0.ript.algo.bc import collect_demonstrations, make_reach_policy
    from pi0.ript.env.reach_sim import ReachEnvSpec

    path = tmp_path_factory.mktemp("reach_pi0")
    demos = collect_demonstrations(ReachEnvSpec(image_size=28), range(3), range(1), 5, 10)
    make_reach_policy(demos, 28, 5, seed=0).save_pretrained(path)
    return path


def test_pi0_episodes_do_not_depend_on_the_ranks(tmp_path, reach_pi0):
    """Per-episode noise: one process and two ranks play pi0's episodes frame for frame (both call the model at
    batch size 1, so even float rounding is the same); with the run's noise stream a re-run differs."""
    pi0 = [arg for arg in REACH if arg != "policy.kind=small"] + [f"policy.checkpoint_path={reach_pi0}"]
    _eval(tmp_path / "one", pi0)
    _eval(tmp_path / "two", pi0, nproc=2)
    _assert_same_episodes(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "one" / "protocol.json").read_text())["policy_noise"] == "per_episode"
    _eval(tmp_path / "stream", [*pi0, "eval.policy_noise=stream"])
    stream, seeded = _frames(tmp_path / "stream"), _frames(tmp_path / "one")
    assert any(name not in seeded or not np.array_equal(video, seeded[name]) for name, video in stream.items())


def test_chunk_seeds_differ_by_every_part_and_repeat_exactly():
    from pi0.ript.env.episode import EpisodeRequest

    base = EpisodeRequest(task_id=1, init_state=2, rollout_index=0, noise_seed=0)
    assert base.chunk_seed(3) == EpisodeRequest(task_id=1, init_state=2, noise_seed=0).chunk_seed(3)
    variants = [base.chunk_seed(0), base.chunk_seed(1), EpisodeRequest(task_id=2, init_state=2, noise_seed=0).chunk_seed(0),
                EpisodeRequest(task_id=1, init_state=3, noise_seed=0).chunk_seed(0),
                EpisodeRequest(task_id=1, init_state=2, rollout_index=1, noise_seed=0).chunk_seed(0),
                EpisodeRequest(task_id=1, init_state=2, noise_seed=7).chunk_seed(0),
                EpisodeRequest(task_id=1, init_state=np.zeros(3), noise_seed=0).chunk_seed(0)]
    assert len(set(variants)) == len(variants) and all(0 <= v < 2**63 for v in variants)
    assert EpisodeRequest(task_id=1, init_state=2).chunk_seed(0) is None  # no noise_seed: the policy's stream


def test_pi0_draws_a_samples_noise_from_its_seed_alone():
    """The same seed gives the same noise at any batch position and beside any batch-mates."""
    from pi0.ript.policy.pi0_policy import make_tiny_policy
    from pi0.ript.policy.protocol import takes_sample_seeds
    from pi0.ript.policy.small_policy import SmallPolicy

    policy = make_tiny_policy(["reach"], image_size=28)
    policy.record_extras = True
    rng = np.random.default_rng(0)
    observations = [{"agentview_image": rng.integers(0, 255, (28, 28, 3), dtype=np.uint8),
                     "wrist_image": rng.integers(0, 255, (28, 28, 3), dtype=np.uint8), "eef_pos": rng.normal(size=3),
                     "eef_quat": rng.normal(size=4), "gripper_qpos": rng.normal(size=2)} for _ in range(3)]
    alone = policy.predict_chunks(observations[2:], ["reach"], sample_seeds=[11])
    batched = policy.predict_chunks(observations, ["reach"] * 3, sample_seeds=[5, 9, 11])
    np.testing.assert_array_equal(batched.extras[2]["noise"], alone.extras[0]["noise"])
    np.testing.assert_allclose(batched.actions[2], alone.actions[0], atol=1e-5)  # batch size 1 vs 3: float rounding
    assert not np.array_equal(batched.extras[0]["noise"], batched.extras[1]["noise"])
    assert takes_sample_seeds(policy) and not takes_sample_seeds(SmallPolicy())
