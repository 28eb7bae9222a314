"""Fast pi0 inference: batched preprocessing gives the reference chain's exact tensors, padding to a batch bucket
changes no row, the compiled sampler gives the eager chunks, and `pi0-ript bench model` reports what it claims."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pi0.model.batch_transforms import BatchImages, bilinear_taps
from torch.utils._pytree import tree_flatten

from pi0.model.fast_sampling import FastSampler, bucket_size, pad_rows
from pi0.model.normalization import NormStats
from pi0.ript.policy.pi0_policy import make_tiny_policy
from pi0.model.transforms import ImagesToModel, ResizeWithPad, Rotate180, compose
from tests.pi0_fixtures import INSTRUCTIONS, make_obs, one_thread

pytestmark = pytest.mark.usefixtures("one_thread")
_ = one_thread

STATS = {
    "state": NormStats(np.linspace(-0.5, 0.5, 8), np.linspace(0.5, 2.0, 8)),
    "actions": NormStats(np.zeros(7), np.ones(7)),
}


@pytest.mark.parametrize("kernel", ["pil", "fixed_point"])
@pytest.mark.parametrize(
    "height, width, size",
    [(256, 256, 224), (128, 128, 112), (100, 60, 56), (60, 100, 56), (30, 50, 56), (64, 64, 64)],
    ids=["256to224", "128to112", "tall-pad", "wide-pad", "upscale-pad", "same-size"],
)
def test_batch_images_equal_the_per_sample_chain(kernel, height, width, size):
    rng = np.random.default_rng(height * 1000 + width)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(3)]
    images[1][::2] = 255  # sharp edges: where rounding differences would show
    images[1][1::2] = 0
    chain = compose([Rotate180(), ResizeWithPad(size), ImagesToModel()])
    expected = np.stack([chain({"images": {"x": i}})["images"]["x"] for i in images])
    got = BatchImages(size, kernel)(images, "cpu", torch.float32)
    assert got.shape == (3, 3, size, size) and got.is_contiguous()
    np.testing.assert_array_equal(got.numpy(), expected)  # bit for bit: not even one grey level apart


def test_bilinear_taps_are_pil_fixed_point_weights():
    index, weight = bilinear_taps(256, 224)
    assert index.shape[0] == 224 and weight.dtype == np.int64
    # Each output pixel's weights sum to 1.0 in 22-bit fixed point (up to the rounding of each tap).
    assert np.abs(weight.sum(axis=1) - (1 << 22)).max() <= weight.shape[1]
    flipped, _ = bilinear_taps(256, 224, flip=True)
    np.testing.assert_array_equal(flipped, 255 - index)
    with pytest.raises(ValueError, match="kernel='cuda'"):
        BatchImages(224, "cuda")


def _policies(**kwargs):
    return [make_tiny_policy(INSTRUCTIONS, norm_stats=STATS, seed=0, image_size=56, preprocess=p, **kwargs) for p in ("per_sample", "batched")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_batched_prepare_batch_equals_per_sample(dtype):
    reference, batched = _policies(dtype=dtype)
    rng = np.random.default_rng(1)
    observations = [make_obs(rng, 64) for _ in range(5)]
    instructions = [INSTRUCTIONS[i % 2] for i in range(5)]  # repeated prompts: the token cache is hit
    want = reference.prepare_batch(observations, instructions)
    for kernel in ("pil", "fixed_point"):
        batched._batch_images = BatchImages(56, kernel)
        got = batched.prepare_batch(observations, instructions)
        for a, b in zip(got.images, want.images):
            assert a.dtype == b.dtype == dtype and torch.equal(a, b)
        for name in ("tokens", "token_masks", "state", "raw_state"):
            a, b = getattr(got, name), getattr(want, name)
            assert a.dtype == b.dtype and torch.equal(a, b), name
        assert all(torch.equal(a, b) for a, b in zip(got.image_masks, want.image_masks))
    assert len(batched._token_cache) == 2


def test_mixed_image_sizes_in_one_batch_are_refused():
    _, batched = _policies()
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="different shapes in one batch"):
        batched.prepare_batch([make_obs(rng, 64), make_obs(rng, 32)], INSTRUCTIONS[:2])


def test_buckets_and_padding():
    assert [bucket_size(b) for b in (1, 2, 3, 5, 8, 9, 33, 64, 65, 130)] == [1, 2, 4, 8, 8, 16, 64, 64, 128, 192]
    t = torch.arange(6.0).reshape(3, 2)
    padded = pad_rows(t, 4)
    assert padded.shape == (4, 2) and torch.equal(padded[:3], t) and torch.equal(padded[3], t[2])
    same = pad_rows(t, 3)
    assert same is not t and torch.equal(same, t)
    with pytest.raises(ValueError, match="batch size 0"):
        bucket_size(0)


def _inputs(policy, batch: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    inputs = policy.prepare_batch([make_obs(rng, 64) for _ in range(batch)], [INSTRUCTIONS[i % 5] for i in range(batch)])
    noise = policy.model.sample_noise(batch, torch.Generator().manual_seed(seed))
    return inputs, noise


def test_padding_to_a_bucket_changes_no_row():
    policy = make_tiny_policy(INSTRUCTIONS, seed=0, image_size=56)
    sampler = FastSampler(policy.model, "none")  # eager: only the padding differs from sample_actions
    inputs, noise = _inputs(policy, 5)
    with torch.inference_mode():
        want, want_traj = policy.model.sample_actions(*inputs.model_args(), noise=noise, num_steps=4, return_trajectory=True)
        got, traj = sampler.sample(*inputs.model_args(), noise, 4, return_trajectory=True)
        # Rows do not depend on their batch mates, padded or not: row 4 alone gives the same chunk.
        alone = sampler.sample(*inputs.index_select(torch.tensor([4])).model_args(), noise[4:], 4)
    assert list(sampler.compile_seconds) == [(8, 4, True), (1, 4, False)]
    assert got.shape == want.shape == (5, 50, 32) and traj.shape == (5, 5, 50, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(traj, want_traj, rtol=0, atol=1e-5)
    torch.testing.assert_close(alone, want[4:], rtol=0, atol=1e-5)


def test_compiled_sampling_matches_eager_and_reuses_its_bucket():
    """torch.compile (inductor's CPU backend) on the tiny model: about a minute of compilation on 2 cores."""
    from torch._dynamo.utils import counters

    eager = make_tiny_policy(INSTRUCTIONS, seed=0, image_size=56, num_inference_steps=3)
    compiled = make_tiny_policy(INSTRUCTIONS, seed=0, image_size=56, num_inference_steps=3, compile="default")
    inputs, noise = _inputs(eager, 4)
    three = inputs.index_select(torch.arange(3))
    want, _, _ = eager.sample(three, noise[:3])
    got, _, _ = compiled.sample(three, noise[:3])  # batch 3: padded to bucket 4, compiled once
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    assert list(compiled.fast_sampler.compile_seconds) == [(4, 3, False)]
    graphs = counters["stats"]["unique_graphs"]
    got4, _, _ = compiled.sample(inputs, noise)  # batch 4: same bucket, no new graph
    assert counters["stats"]["unique_graphs"] == graphs
    torch.testing.assert_close(got4, eager.sample(inputs, noise)[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(got4[:3], got, rtol=0, atol=1e-5)


def test_a_symbolic_batch_compiles_once_for_every_bucket_from_two_up():
    """`dynamic_batch`: buckets 2, 4 and 8 share one compilation (batch dimension marked dynamic) and give the eager
    chunks; without it each bucket is a compilation of its own (the test above). About a minute on 2 cores."""
    from torch._dynamo.utils import counters

    eager = make_tiny_policy(INSTRUCTIONS, seed=0, image_size=56, num_inference_steps=3)
    sampler = FastSampler(eager.model, "default", dynamic_batch=True)
    inputs, noise = _inputs(eager, 5)
    graphs = None
    for batch in (2, 3, 5):  # buckets 2, 4, 8
        rows = torch.arange(batch)
        part = inputs.index_select(rows)
        with torch.inference_mode():
            want = eager.model.sample_actions(*part.model_args(), noise=noise[:batch], num_steps=3)
            got = sampler.sample(*part.model_args(), noise[:batch], 3)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
        if graphs is None:
            graphs = counters["stats"]["unique_graphs"]  # after the one compilation
        assert counters["stats"]["unique_graphs"] == graphs, f"batch {batch} compiled again"
    assert sorted(key[0] for key in sampler.compile_seconds) == [2, 4, 8]
    with pytest.raises(ValueError, match="dynamic_batch applies to the torch.compile modes"):
        FastSampler(eager.model, "none", dynamic_batch=True)


class RerunRecorder:
    """A CPU stand-in for CudaGraphRecorder with a CUDA graph's memory semantics: the capture's outputs are fixed
    buffers, and a replay recomputes from the static inputs and overwrites those buffers in place."""

    captures = 0

    def capture(self, fn):
        RerunRecorder.captures += 1
        self.fn = fn
        self.output = fn()
        return self.output

    def replay(self):
        fresh = self.fn()
        for dst, src in zip(tree_flatten(self.output)[0], tree_flatten(fresh)[0]):
            dst.copy_(src)


class RefusingRecorder:
    def capture(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")


def test_cuda_graph_mode_replays_one_capture_per_bucket_and_keeps_each_result():
    """The `cuda-graph` bookkeeping on a CPU: new inputs are copied into the captured buffers (a stale buffer would
    repeat the first chunk), a batch in the same bucket replays without a new capture, and a returned chunk survives
    the next replay (the output buffer is reused)."""
    eager = make_tiny_policy(INSTRUCTIONS, seed=0, image_size=56, num_inference_steps=3)
    RerunRecorder.captures = 0
    sampler = FastSampler(eager.model, "cuda-graph", graph_recorder=RerunRecorder)
    a, noise_a = _inputs(eager, 3, seed=1)
    b, noise_b = _inputs(eager, 4, seed=2)
    with torch.inference_mode():
        want_a = eager.model.sample_actions(*a.model_args(), noise=noise_a, num_steps=3)
        want_b = eager.model.sample_actions(*b.model_args(), noise=noise_b, num_steps=3)
        got_a = sampler.sample(*a.model_args(), noise_a, 3, slots_present=a.slots_present)
        got_b = sampler.sample(*b.model_args(), noise_b, 3, slots_present=b.slots_present)  # bucket 4 again: replay
    assert RerunRecorder.captures == 1 and list(sampler.compile_seconds) == [(4, 3, False)]
    torch.testing.assert_close(got_a, want_a, rtol=0, atol=1e-5)  # not overwritten by the second replay
    torch.testing.assert_close(got_b, want_b, rtol=0, atol=1e-5)  # not the first call's inputs again


def test_the_parallel_runner_captures_every_bucket_in_its_policy_thread_before_the_first_call(no_orphans):
    """The runner's warm-up on pi0's capture path (the CPU recorder above standing in for CUDA graphs): buckets 1 and
    2 are captured in the policy thread before any call, and calls then only replay. (Chunks are not compared with an
    eager run: pi0's noise comes from one generator in call order, which the runner's batching does not fix.)"""
    import threading

    from conftest import reach_config
    from pi0.ript.env.episode import EpisodeRequest
    from pi0.ript.env.parallel_runner import PI0LiberoRunner
    from pi0.ript.env.reach_sim import ReachEnvSpec

    spec = ReachEnvSpec()
    instructions = [spec.instruction(t) for t in range(spec.num_tasks())]
    captured = make_tiny_policy(instructions, image_size=56, seed=0, num_inference_steps=3)
    threads = []

    class ThreadRecorder(RerunRecorder):
        def capture(self, fn):
            threads.append(threading.current_thread().name)
            return super().capture(fn)

    captured.fast_sampler = FastSampler(captured.model, "cuda-graph", graph_recorder=ThreadRecorder)
    cfg = reach_config("task.num_parallel_envs=2", "task.max_episode_length=10", "task.replan_steps=5")
    requests = [EpisodeRequest(t, i) for t in range(2) for i in range(2)]
    with PI0LiberoRunner(captured, config=cfg) as runner:
        episodes = list(runner.run_episodes(requests))
        assert runner.stats.seconds["policy_warmup"] > 0 and runner.stats.inference_calls >= 4
    assert sorted(key[0] for key in captured.fast_sampler.compile_seconds) == [1, 2]
    assert threads == ["policy_0", "policy_0"]  # one capture per bucket, both in the warm-up, none in a later call
    assert sorted(e.request_id for e in episodes) == [0, 1, 2, 3]
    for episode in episodes:
        assert episode.steps == 10 and np.isfinite(episode.actions).all() and np.abs(episode.actions).max() > 0


def test_a_refused_capture_samples_eagerly_and_says_why(caplog):
    policy = make_tiny_policy(INSTRUCTIONS, seed=0, image_size=56, num_inference_steps=2)
    sampler = FastSampler(policy.model, "cuda-graph", graph_recorder=RefusingRecorder)
    inputs, noise = _inputs(policy, 2)
    with torch.inference_mode():
        want = policy.model.sample_actions(*inputs.model_args(), noise=noise, num_steps=2)
        got = sampler.sample(*inputs.model_args(), noise, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert sampler.capture_errors == {(2, 2, False): "RuntimeError: operation not permitted when stream is capturing"}
    assert "CUDA-graph capture failed for batch bucket 2" in caplog.text


def test_cuda_graph_mode_off_cuda_is_refused_in_one_line():
    with pytest.raises(ValueError, match="policy.compile=cuda-graph needs a CUDA device"):
        make_tiny_policy(INSTRUCTIONS, compile="cuda-graph")


def test_the_prefix_traces_as_one_graph_when_the_slots_are_known_on_the_host():
    """The slots present come from the host (prepare_batch), so dynamo traces the prefix with no graph break (asking
    the device masks breaks it, and costs a host sync per slot on a GPU); one Euler step traces whole too."""
    policy = make_tiny_policy(INSTRUCTIONS, seed=0, image_size=56, num_inference_steps=2)
    inputs, noise = _inputs(policy, 2)
    assert inputs.slots_present == (True, True, False)
    sampler = FastSampler(policy.model, "none")
    prefix_args = (*inputs.model_args()[:4], inputs.slots_present)
    assert torch._dynamo.explain(sampler._prefix_eager)(*prefix_args).graph_break_count == 0
    asking = torch._dynamo.explain(lambda *a: policy.model.compute_prefix_cache(*a).keys)(*inputs.model_args()[:4])
    assert asking.graph_break_count >= 1
    keys, values, pad = sampler._prefix_eager(*prefix_args)
    t = torch.full((2,), 0.5)
    assert torch._dynamo.explain(sampler._velocity_eager)(keys, values, pad, inputs.state, noise, t).graph_break_count == 0


def test_bad_compile_and_preprocess_values_name_the_key():
    with pytest.raises(ValueError, match="policy.compile='fast'"):
        make_tiny_policy(INSTRUCTIONS, compile="fast")
    with pytest.raises(ValueError, match="preprocess='gpu'"):
        make_tiny_policy(INSTRUCTIONS, preprocess="gpu")
    from pi0.ript.config.schema import ConfigError, load_config

    assert load_config(None, []).policy.compile == "auto"
    with pytest.raises(ConfigError, match="policy.compile='max'"):
        load_config(None, ["policy.compile=max"])


def test_auto_compile_is_cuda_graphs_on_cuda_and_eager_elsewhere():
    from pi0.model.fast_sampling import check_compile_mode

    assert check_compile_mode("auto", "cuda:1") == "cuda-graph"
    assert check_compile_mode("auto", torch.device("cpu")) == check_compile_mode("auto", None) == "none"
    policy = make_tiny_policy(INSTRUCTIONS, compile="auto")  # on the CPU
    assert policy.compile == "none" and policy.fast_sampler is None


def test_eval_loads_a_checkpoint_with_the_configured_compile_mode(tmp_path):
    """`pi0-ript eval` builds its policy through load_policy: `auto` on this CPU is eager; an explicit mode reaches
    the sampler; cuda-graph on a CPU is one line naming the key."""
    from pi0.ript.config.schema import ConfigError, load_config
    from pi0.ript.policy.loading import load_policy

    make_tiny_policy(INSTRUCTIONS, image_size=56).save_pretrained(tmp_path / "ckpt")
    base = [f"policy.checkpoint_path={tmp_path / 'ckpt'}", "policy.kind=pi0", "policy.device=cpu"]
    policy, _ = load_policy(load_config(None, base))
    assert policy.compile == "none" and policy.fast_sampler is None
    policy, _ = load_policy(load_config(None, [*base, "policy.compile=default"]))
    assert policy.fast_sampler.mode == "default" and not policy.fast_sampler.dynamic_batch
    policy, _ = load_policy(load_config(None, [*base, "policy.compile=reduce-overhead", "policy.compile_dynamic_batch=true"]))
    assert policy.fast_sampler.dynamic_batch and policy.compile_label == "reduce-overhead+dynamic"
    with pytest.raises(ConfigError, match="policy.compile=cuda-graph needs a CUDA device"):
        load_policy(load_config(None, [*base, "policy.compile=cuda-graph"]))


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_bench_model_reports_per_batch_timings_preprocessing_and_memory(variant, tmp_path, capsys):
    from pi0.ript.bench.model import main

    out = tmp_path / "bench.json"
    argv = ["--size", "tiny", "--device", "cpu", "--batch-sizes", "1", "3", "--repeats", "1", "--num-steps", "2", "--variant", variant]
    assert main(argv + ["--preprocess", "batched", "per_sample", "--image-size", "56", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "peak" in printed and "preprocess" in printed
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_cores"] >= 1 and report["machine"]["torch"] == torch.__version__
    assert report["machine"]["gpu"] is None
    assert report["settings"]["variant"] == variant and printed.startswith(f"{variant} tiny")
    rows = report["results"]
    assert {(r["compile"], r["preprocess"], r["batch"]) for r in rows} == {
        ("none", p, b) for p in ("batched", "per_sample") for b in (1, 3)
    }
    for r in rows:
        assert r["preprocess_ms"] > 0 and r["ms_per_sample"] == pytest.approx(r["ms_per_call"] / r["batch"])
        assert r["preprocess_share"] == pytest.approx(r["preprocess_ms"] / r["ms_per_call"]) and r["peak_memory_mib"] > 0


def test_bench_builds_the_full_model_in_place_on_the_target_device_and_dtype():
    """`--size full` creates every weight on the target device in the target dtype (here the meta device: no memory),
    so a 3.3 B-parameter model never exists in fp32 on the CPU first."""
    from pi0.ript.bench.model import build_model

    model = build_model("full", torch.device("meta"), torch.bfloat16, image_size=224, num_steps=10, vocab=16)
    params = list(model.parameters())
    assert {p.device.type for p in params} == {"meta"} and {p.dtype for p in params} == {torch.bfloat16}
    assert 3.2e9 < sum(p.numel() for p in params) < 3.3e9 and model.config.vocab_size == 257_152
    assert torch.get_default_dtype() == torch.float32  # restored


def test_warmup_fills_every_bucket_without_touching_the_noise_generator():
    policy = make_tiny_policy(INSTRUCTIONS, seed=0, image_size=56, num_inference_steps=2)
    assert policy.warmup([1, 3]) == {}  # eager: nothing to compile
    policy.fast_sampler = FastSampler(policy.model, "none")  # the compiled path's logic, without the compile time
    state = policy.generator.get_state()
    seconds = policy.warmup([1, 3, 5, 3])
    assert sorted(seconds) == [(1, 2, False), (4, 2, False), (8, 2, False)]
    assert torch.equal(policy.generator.get_state(), state)


def test_the_accelerator_image_path_stays_on_the_target_device():
    """Off the CPU, `auto` picks the fixed-point kernel and every tensor it makes lives on the target device. The meta
    device stands in for CUDA on this CPU-only machine: a CPU tensor mixed into its arithmetic would raise."""
    images = [np.zeros((100, 60, 3), dtype=np.uint8)] * 2
    out = BatchImages(56)(images, "meta", torch.bfloat16)
    assert out.device.type == "meta" and out.dtype == torch.bfloat16 and out.shape == (2, 3, 56, 56)
    with pytest.raises(RuntimeError, match="device"):
        torch.zeros(2, device="meta", dtype=torch.int32) * torch.zeros(2, dtype=torch.int32)


def test_batched_preprocessing_and_padded_sampling_on_an_emulated_accelerator_match_the_cpu():
    """On an accelerator the images take the fixed-point kernel and the batch is padded on the device: with the
    emulated device of tests/emulated_device.py (CUDA's device checks, the CPU's numbers) both give the CPU's exact
    tensors, and nothing is left on the host."""
    from tests.emulated_device import emulated_device, is_emulated

    rng = np.random.default_rng(4)
    observations = [make_obs(rng, 64) for _ in range(3)]
    instructions = INSTRUCTIONS[:3]
    cpu = make_tiny_policy(INSTRUCTIONS, norm_stats=STATS, seed=0, image_size=56, num_inference_steps=2, preprocess="per_sample")
    want = cpu.prepare_batch(observations, instructions)
    noise = cpu.model.sample_noise(3, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want_chunk = cpu.model.sample_actions(*want.model_args(), noise=noise, num_steps=2)
    with emulated_device() as device:
        policy = make_tiny_policy(INSTRUCTIONS, norm_stats=STATS, seed=0, image_size=56, num_inference_steps=2, device=device)
        got = policy.prepare_batch(observations, instructions)
        tensors = [*got.images, *got.image_masks, got.tokens, got.token_masks, got.state, got.raw_state]
        assert all(is_emulated(t) for t in tensors)
        with torch.no_grad():  # (the emulation's tensor subclass does not support inference mode)
            chunk = FastSampler(policy.model, "none").sample(*got.model_args(), noise.to(device), 2)  # padded to 4
        assert is_emulated(chunk)
        got_cpu = [t.cpu() for t in tensors]
        chunk = chunk.cpu()
    for a, b in zip(got_cpu, [*want.images, *want.image_masks, want.tokens, want.token_masks, want.state, want.raw_state]):
        assert torch.equal(a, b)
    torch.testing.assert_close(chunk, want_chunk, rtol=0, atol=1e-5)


def test_pil_kernel_spreads_over_torch_threads_with_the_same_pixels():
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (64, 48, 3), dtype=np.uint8) for _ in range(5)]
    one = BatchImages(56, "pil")(images, "cpu", torch.float32)
    torch.set_num_threads(3)  # the one_thread fixture restores it
    from pi0.model import batch_transforms

    three = BatchImages(56, "pil")(images, "cpu", torch.float32)
    assert batch_transforms._pool is not None and batch_transforms._pool_size >= 3
    assert torch.equal(one, three)


def test_bench_model_preprocess_only_on_the_meta_device(tmp_path, capsys):
    from pi0.ript.bench.model import main

    out = tmp_path / "prep.json"
    argv = ["--preprocess-only", "--device", "meta", "--batch-sizes", "2", "--repeats", "1", "--image-size", "56"]
    assert main(argv + ["--preprocess", "per_sample", "batched", "--out", str(out)]) == 0
    assert "meta device (no arithmetic)" in capsys.readouterr().out
    rows = json.loads(out.read_text())["results"]
    assert [(r["preprocess"], r["batch"]) for r in rows] == [("per_sample", 2), ("batched", 2)]
    assert all(r["preprocess_ms"] > 0 for r in rows)
    for bad in (["--device", "meta"], ["--preprocess-only", "--compile", "default"]):
        with pytest.raises(SystemExit) as exc:
            main(bad)
        assert exc.value.code == 2
