"""PI0Policy: the runner's `RolloutPolicy` for pi0 and pi0.5 — the LIBERO adapter's input transforms -> model
sampling -> output transforms. It lives with the policies, not in the model package (`pi0.model` knows no env and
nothing of `pi0.ript`).

Batched over any batch size. What RL needs is exposed: `prepare_batch` (tensors), the sampling noise (passed in, or
drawn from the policy's seeded generator; returned in `extras` with `record_extras`), optionally every intermediate
x_t of the Euler integration (`record_trajectory`), `normalize_actions` (env chunk -> model space) and the model's
`flow_matching_loss`.

Speed (see docs/PERFORMANCE.md, "pi0 inference: compiled path and preprocessing"):
- `preprocess="batched"` (default): the images of a batch are stacked once as uint8, moved to the device once, and
  rotated/resized/scaled there as one batch (`batch_transforms.BatchImages`, the same pixels as the per-sample
  reference); prompts are tokenised once per distinct instruction. `"per_sample"` runs the reference chain
  (transforms.py) sample by sample, as before.
- `compile`: "none" (eager), "cuda-graph" (one CUDA graph per batch bucket), a `torch.compile` mode, or "auto"
  (cuda-graph on CUDA, none elsewhere) for `sample` (`fast_sampling.FastSampler`: batch padded to a bucket, at most
  one compilation or capture per bucket).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from pi0.model.batch_transforms import BatchImages
from pi0.model.checkpoint import CONFIG_NAME, load_model, save_weights
from pi0.model.config import PI0Config
from pi0.model.fast_sampling import FastSampler, check_compile_mode
from pi0.model.lerobot_layout import PROMPT_FORMAT_KEY, lerobot_type, read_lerobot_checkpoint
from pi0.model.modeling import PI0Model
from pi0.model.normalization import NormStats, identity_stats, load_norm_stats, save_norm_stats
from pi0.model.tokenizer import PromptTokenizer, build_word_tokenizer, check_prompt_format
from pi0.model.transforms import IMAGE_SLOTS, BuildPrompt, Normalize, PadState, compose
from pi0.ript.policy.devices import resolve_device
from pi0.ript.policy.libero_adapter import LiberoInputs, libero_action_targets, libero_input_transforms, libero_output_transforms
from pi0.ript.policy.protocol import PolicyOutput

log = logging.getLogger(__name__)

PREPROCESS_MODES = ("batched", "per_sample")
TOKEN_CACHE_SIZE = 4096  # distinct instructions remembered (a LIBERO suite has 10 to 90)


def auto_device() -> torch.device:
    return torch.device(resolve_device("auto"))


@dataclass
class ModelInputs:
    """One batch in model space. images/image_masks: one entry per slot (base, left wrist, right wrist)."""

    images: list[torch.Tensor]  # [B, 3, S, S] float in [-1, 1]
    image_masks: list[torch.Tensor]  # [B] bool
    tokens: torch.Tensor  # [B, L] int64
    token_masks: torch.Tensor  # [B, L] bool
    state: torch.Tensor  # [B, 32] normalised, padded
    raw_state: torch.Tensor  # [B, 8] float64, as the env reported it (for the delta-action add-back)
    # One bool per slot, True where any sample has that image: known on the host when the masks are built, so the
    # model needs no device->host sync to decide which slots to embed. None: the model asks the masks.
    slots_present: tuple[bool, ...] | None = None

    @property
    def batch_size(self) -> int:
        return self.state.shape[0]

    def to(self, device: torch.device | str) -> "ModelInputs":
        return ModelInputs(
            images=[i.to(device) for i in self.images],
            image_masks=[m.to(device) for m in self.image_masks],
            tokens=self.tokens.to(device),
            token_masks=self.token_masks.to(device),
            state=self.state.to(device),
            raw_state=self.raw_state.to(device),
            slots_present=self.slots_present,
        )

    def index_select(self, index: torch.Tensor) -> "ModelInputs":
        def sel(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, index.to(t.device))

        return ModelInputs(
            images=[sel(i) for i in self.images],
            image_masks=[sel(m) for m in self.image_masks],
            tokens=sel(self.tokens),
            token_masks=sel(self.token_masks),
            state=sel(self.state),
            raw_state=sel(self.raw_state),
        )  # slots_present left None: a subset may lack a slot the whole batch had

    def model_args(self) -> tuple:
        return self.images, self.image_masks, self.tokens, self.token_masks, self.state


class PI0Policy:
    def __init__(
        self,
        model: PI0Model,
        tokenizer: PromptTokenizer,
        norm_stats: Mapping[str, NormStats],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        num_steps: int | None = None,
        record_trajectory: bool = False,
        record_extras: bool = False,
        compile: str = "none",
        preprocess: str = "batched",
        prompt_format: str | None = None,
        dynamic_batch: bool = False,
    ):
        self.config: PI0Config = model.config
        # How the task becomes the prompt (tokenizer.PROMPT_FORMATS): given, else what the checkpoint's config says.
        self.prompt_format = check_prompt_format(prompt_format or default_prompt_format(self.config))
        self.device = torch.device(device) if device is not None else auto_device()
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.tokenizer = tokenizer
        self.norm_stats = dict(norm_stats)
        self.num_steps = num_steps or self.config.num_inference_steps
        self.record_trajectory = record_trajectory
        # Per-sample extras cost a device->host copy each and are stored in every InferenceRecord of an episode:
        # only on request (record_extras: noise, model-space chunk, raw state; record_trajectory adds every x_t).
        self.record_extras = record_extras
        # A CPU generator on every device: noise is drawn on the CPU and moved (model.sample_noise), so one seed gives
        # the same chunks on a CPU and on a GPU, up to floating point.
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        c = self.config
        if tokenizer.vocab_size > c.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model embeds {c.vocab_size}; use its own tokenizer")
        self._inputs = libero_input_transforms(
            tokenizer, self.norm_stats, c.image_size, c.max_state_dim, c.max_token_len, c.norm_mode, self.prompt_format
        )
        self._outputs = libero_output_transforms(self.norm_stats, c.delta_action_dims, c.env_action_dim, c.norm_mode)
        self._targets = libero_action_targets(self.norm_stats, c.delta_action_dims, c.max_action_dim, c.norm_mode)
        # The batched path: state and slots per sample (cheap), images as one batch, prompts from a cache.
        self._state_inputs = compose(
            [
                LiberoInputs(),
                Normalize("state", self.norm_stats, c.norm_mode),
                BuildPrompt(self.prompt_format),
                PadState(c.max_state_dim),
            ]
        )
        self._batch_images = BatchImages(c.image_size)
        self._token_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if preprocess not in PREPROCESS_MODES:
            raise ValueError(f"preprocess={preprocess!r}: use one of {', '.join(PREPROCESS_MODES)}")
        self.preprocess = preprocess
        self.compile = check_compile_mode(compile, self.device)
        # dynamic_batch (torch.compile modes only): one compilation for every bucket from 2 up (fast_sampling).
        self.fast_sampler = FastSampler(self.model, self.compile, dynamic_batch=dynamic_batch) if self.compile != "none" else None
        self.compile_label = self.compile + ("+dynamic" if dynamic_batch else "")

    # ---- protocol ----
    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @property
    def action_dim(self) -> int:
        return self.config.env_action_dim

    # ---- construction / IO ----
    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        tokenizer_path: str | Path | None = None,
        sizes: PI0Config | None = None,
        **kwargs,
    ) -> "PI0Policy":
        """A checkpoint directory in either layout:
        - this project's / openpi's: model.safetensors (or a sharded index), config.json, norm_stats.json, tokenizer;
        - LeRobot's (config.json `"type": "pi0" | "pi05"`): model.safetensors, policy_preprocessor.json and
          policy_postprocessor.json with their statistics files; no tokenizer (lerobot_layout.py).
        tokenizer_path: PaliGemma's tokenizer directory or file, instead of the checkpoint's own (policy.tokenizer_path).
        sizes: model sizes overriding the full-size variants a LeRobot config.json names (tiny test checkpoints)."""
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: checkpoint directory not found; convert a pi0 checkpoint to PyTorch first")
        dev = torch.device(device) if device is not None else auto_device()
        lerobot = lerobot_type(d) is not None
        if lerobot:
            ckpt = read_lerobot_checkpoint(d, sizes=sizes)
            config, norm_stats = ckpt.config, ckpt.norm_stats
        else:
            config = PI0Config.load(d / CONFIG_NAME)
            if sizes is not None:
                config = _with_sizes(config, sizes)
            norm_stats = load_norm_stats(d)
            kwargs.setdefault("prompt_format", openpi_prompt_format(d / CONFIG_NAME, config))
        tokenizer = load_tokenizer(d, tokenizer_path, lerobot)
        model = load_model(d, config=config, device=dev, dtype=dtype)
        return cls(model, tokenizer, norm_stats, device=dev, dtype=dtype, **kwargs)

    def save_pretrained(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_weights(self.model, d)
        # Saved in this project's layout (openpi names, norm_stats.json with the statistics' convention); the prompt
        # format travels in config.json so a reload prompts as the original checkpoint did.
        extra = {**self.config.extra, PROMPT_FORMAT_KEY: self.prompt_format}
        dataclasses.replace(self.config, extra=extra).save(d / CONFIG_NAME)
        save_norm_stats(self.norm_stats, d)
        self.tokenizer.save(d)
        return d

    # ---- data path ----
    def prepare_batch(
        self, observations: Sequence[Mapping[str, np.ndarray]], instructions: Sequence[str]
    ) -> ModelInputs:
        if len(observations) != len(instructions):
            raise ValueError(f"{len(observations)} observations but {len(instructions)} instructions")
        if not observations:
            raise ValueError("prepare_batch needs at least one observation")
        if self.preprocess == "batched":
            return self._prepare_batched(observations, instructions)
        samples = [self._inputs({"observation": o, "prompt": p}) for o, p in zip(observations, instructions)]
        dev, dt = self.device, self.dtype

        def stack(key: str, slot: str | None = None) -> np.ndarray:
            return np.stack([s[key][slot] if slot else s[key] for s in samples])

        masks = [stack("image_masks", k) for k in IMAGE_SLOTS]
        return ModelInputs(
            images=[torch.from_numpy(stack("images", k)).to(dev, dt) for k in IMAGE_SLOTS],
            image_masks=[torch.from_numpy(m).to(dev) for m in masks],
            slots_present=tuple(bool(m.any()) for m in masks),
            tokens=torch.from_numpy(stack("tokens")).to(dev),
            token_masks=torch.from_numpy(stack("token_mask")).to(dev),
            state=torch.from_numpy(stack("state")).to(dev, torch.float32),
            raw_state=torch.from_numpy(stack("raw_state")).to(dev),
        )

    def _prepare_batched(self, observations: Sequence[Mapping[str, np.ndarray]], instructions: Sequence[str]) -> ModelInputs:
        """The same tensors as the per-sample chain (tested bit for bit), with the image work done once per batch."""
        samples = [self._state_inputs({"observation": o, "prompt": p}) for o, p in zip(observations, instructions)]
        dev, dt, size = self.device, self.dtype, self.config.image_size
        images, masks, slots_present = [], [], []
        for slot in IMAGE_SLOTS:
            present = np.array([s["image_masks"][slot] for s in samples], dtype=bool)
            masks.append(torch.from_numpy(present).to(dev))
            slots_present.append(bool(present.any()))
            if present.any():
                images.append(self._batch_images([s["images"][slot] for s in samples], dev, dt))
            else:
                # Masked out in every sample: the model never reads it (embed_prefix drops the slot). LiberoInputs puts
                # a black image there, which the chain would turn into -1 everywhere.
                images.append(torch.full((len(samples), 3, size, size), -1.0, dtype=dt, device=dev))
        tokens, token_masks = zip(*(self._tokenize(s["prompt"]) for s in samples))
        return ModelInputs(
            images=images,
            image_masks=masks,
            tokens=torch.from_numpy(np.stack(tokens)).to(dev),
            token_masks=torch.from_numpy(np.stack(token_masks)).to(dev),
            state=torch.from_numpy(np.stack([s["state"] for s in samples])).to(dev, torch.float32),
            raw_state=torch.from_numpy(np.stack([s["raw_state"] for s in samples])).to(dev),
            slots_present=tuple(slots_present),
        )

    def _tokenize(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        hit = self._token_cache.get(prompt)
        if hit is None:
            if len(self._token_cache) >= TOKEN_CACHE_SIZE:
                self._token_cache.clear()
            ids, mask = self.tokenizer.tokenize([prompt], self.config.max_token_len, self.prompt_format)
            hit = self._token_cache[prompt] = (ids[0], mask[0])
        return hit

    def postprocess(self, normalised_chunk: torch.Tensor | np.ndarray, raw_states: torch.Tensor | np.ndarray) -> np.ndarray:
        """Model-space chunk [B, H, 32] -> env actions [B, H, 7] (unnormalise, add state to delta dims, keep 7)."""
        a = normalised_chunk.detach().float().cpu().numpy() if torch.is_tensor(normalised_chunk) else normalised_chunk
        s = raw_states.detach().cpu().numpy() if torch.is_tensor(raw_states) else raw_states
        return self._outputs({"actions": a, "state": s})["actions"]

    def normalize_actions(self, env_actions: torch.Tensor | np.ndarray, raw_states: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Env actions [B, H, 7] -> model-space training targets [B, H, 32] (float32, on the policy's device)."""
        a = env_actions.detach().cpu().numpy() if torch.is_tensor(env_actions) else env_actions
        s = raw_states.detach().cpu().numpy() if torch.is_tensor(raw_states) else raw_states
        out = self._targets({"actions": a, "state": s})["actions"]
        return torch.as_tensor(out, dtype=torch.float32, device=self.device)

    # ---- sampling ----
    def sample(
        self, inputs: ModelInputs, noise: torch.Tensor | None = None, return_trajectory: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> (normalised chunk [B, H, 32], the noise used, trajectory [B, N+1, H, 32] or None)."""
        if noise is None:
            noise = self.model.sample_noise(inputs.batch_size, self.generator)
        noise = noise.to(self.device, torch.float32)
        with torch.inference_mode():
            if self.fast_sampler is not None:
                out = self.fast_sampler.sample(
                    *inputs.model_args(), noise, self.num_steps, return_trajectory, slots_present=inputs.slots_present
                )
            else:
                out = self.model.sample_actions(
                    *inputs.model_args(), noise=noise, num_steps=self.num_steps, return_trajectory=return_trajectory,
                    slots_present=inputs.slots_present,
                )
        chunk, traj = out if return_trajectory else (out, None)
        return chunk, noise, traj

    def warmup(self, batch_sizes: Sequence[int]) -> dict[tuple[int, int, bool], float]:
        """Compile ahead of the rollouts for every bucket these batch sizes fall in (LIBERO's slot pattern: base and
        left wrist present, right wrist masked; a different pattern is another prefix length, compiled when met).
        -> the fast sampler's compile seconds per (bucket, steps, trajectory); empty when compile is "none"."""
        if self.fast_sampler is None:
            return {}
        s, c = self.config.image_size, self.config
        for b in sorted(set(batch_sizes)):
            image = torch.zeros(b, 3, s, s, device=self.device, dtype=self.dtype)
            present = [torch.full((b,), i < 2, dtype=torch.bool, device=self.device) for i in range(len(IMAGE_SLOTS))]
            token_masks = torch.zeros(b, c.max_token_len, dtype=torch.bool, device=self.device)
            token_masks[:, :8] = True
            inputs = ModelInputs(
                images=[image] * len(IMAGE_SLOTS),
                image_masks=present,
                tokens=torch.ones(b, c.max_token_len, dtype=torch.long, device=self.device),
                token_masks=token_masks,
                state=torch.zeros(b, c.max_state_dim, device=self.device),
                raw_state=torch.zeros(b, 8, dtype=torch.float64, device=self.device),
                slots_present=tuple(i < 2 for i in range(len(IMAGE_SLOTS))),
            )
            noise = torch.zeros(b, c.chunk_size, c.max_action_dim, device=self.device)  # leaves the generator alone
            self.sample(inputs, noise, return_trajectory=self.record_trajectory)
        return dict(self.fast_sampler.compile_seconds)

    def seeded_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """[B, H, max_action_dim] standard normal noise, row b from a CPU generator seeded with seeds[b] (as the
        policy's own generator, on the CPU whatever the device, so a seed gives the same noise on a CPU and a GPU)."""
        shape = (1, self.config.chunk_size, self.config.max_action_dim)
        rows = [torch.randn(shape, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
        return torch.cat(rows, dim=0).to(self.device)  # one host-to-device copy for the batch

    def predict_chunks(
        self,
        observations: Sequence[Mapping[str, np.ndarray]],
        instructions: Sequence[str],
        noise: torch.Tensor | None = None,
        sample_seeds: Sequence[int] | None = None,
    ) -> PolicyOutput:
        """`noise` given: used as it is. Else `sample_seeds` (one per observation): sample b's noise drawn from a
        generator seeded with seed b alone (the same draw at any batch position, beside any batch-mates). Else the
        policy's own generator."""
        inputs = self.prepare_batch(observations, instructions)
        if noise is None and sample_seeds is not None:
            noise = self.seeded_noise(sample_seeds)
        chunk, used_noise, traj = self.sample(inputs, noise, return_trajectory=self.record_trajectory)
        actions = self.postprocess(chunk, inputs.raw_state)
        extras: list[dict] = [{} for _ in range(len(actions))]
        if self.record_extras:
            noise_np, chunk_np, state_np = used_noise.cpu().numpy(), chunk.float().cpu().numpy(), inputs.raw_state.cpu().numpy()
            for b, e in enumerate(extras):
                e.update(noise=noise_np[b], model_actions=chunk_np[b], raw_state=state_np[b])
        if traj is not None:
            traj_np = traj.float().cpu().numpy()
            for b, e in enumerate(extras):
                e["trajectory"] = traj_np[b]
        return PolicyOutput(actions=actions, extras=extras)

    def flow_matching_loss(
        self, inputs: ModelInputs, normalised_actions: torch.Tensor, noise=None, time=None, action_token_bias=None
    ) -> torch.Tensor:
        return self.model.flow_matching_loss(
            *inputs.model_args(), normalised_actions, noise=noise, time=time, action_token_bias=action_token_bias
        )


def default_prompt_format(config: PI0Config) -> str:
    """The prompt format a config implies: what its loader recorded (extra["prompt_format"]), else pi0.5's state in
    the prompt for a pi0.5 config and openpi's pi0 prompt otherwise."""
    recorded = config.extra.get(PROMPT_FORMAT_KEY)
    if recorded:
        return recorded
    return "pi05_state" if config.pi05 else "openpi"


def openpi_prompt_format(config_path: Path, config: PI0Config) -> str:
    """openpi's pi0.5 puts the state in the prompt unless its config says `discrete_state_input: false` (pi05_libero);
    a config.json saved here records its format; pi0 has none of this."""
    raw = json.loads(config_path.read_text())
    if raw.get("format") != "pi0-ript" and config.pi05 and "discrete_state_input" in raw:
        return "pi05_state" if raw["discrete_state_input"] else "openpi"
    return default_prompt_format(config)


def _with_sizes(config: PI0Config, sizes: PI0Config) -> PI0Config:
    return dataclasses.replace(config, vlm=sizes.vlm, expert=sizes.expert, vision=sizes.vision, vocab_size=sizes.vocab_size)


TOKENIZER_HELP = (
    "set policy.tokenizer_path to a directory holding PaliGemma's tokenizer.model (from google/paligemma-3b-pt-224, "
    "or openpi's big_vision/paligemma_tokenizer.model renamed tokenizer.model)"
)


def load_tokenizer(directory: Path, tokenizer_path: str | Path | None, lerobot: bool) -> PromptTokenizer:
    """tokenizer_path when given, else the checkpoint directory's own; one line naming policy.tokenizer_path when
    neither has one (a LeRobot directory never does)."""
    if tokenizer_path:
        try:
            return PromptTokenizer.from_path(tokenizer_path)
        except FileNotFoundError:
            raise FileNotFoundError(f"policy.tokenizer_path={str(tokenizer_path)!r} holds no tokenizer.model or tokenizer.json; {TOKENIZER_HELP}") from None
    try:
        return PromptTokenizer.from_dir(directory)
    except FileNotFoundError:
        where = "LeRobot checkpoints do not store the tokenizer" if lerobot else "the checkpoint has no tokenizer.model or tokenizer.json"
        raise FileNotFoundError(f"{directory}: no PaliGemma tokenizer ({where}); {TOKENIZER_HELP}") from None


def make_tiny_policy(
    instructions: Sequence[str],
    norm_stats: Mapping[str, NormStats] | None = None,
    seed: int = 0,
    image_size: int = 112,
    device: torch.device | str | None = "cpu",
    dtype: torch.dtype = torch.float32,
    compile: str = "none",
    preprocess: str = "batched",
    record_extras: bool = False,
    **config_overrides,
) -> PI0Policy:
    """A random-weight tiny pi0 with a word-level tokenizer built from `instructions` (tests, CPU demos)."""
    tok = build_word_tokenizer(instructions)
    cfg = PI0Config.tiny(image_size=image_size, vocab_size=max(tok.vocab_size, 8), **config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PI0Model(cfg)
    return PI0Policy(
        model, tok, norm_stats or identity_stats(), device=device, dtype=dtype, seed=seed, compile=compile,
        preprocess=preprocess, record_extras=record_extras,
    )


__all__ = ["ModelInputs", "PI0Policy", "make_tiny_policy", "auto_device", "default_prompt_format", "load_tokenizer"]
