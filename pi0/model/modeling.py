"""pi0: PaliGemma prefix (SigLIP + Gemma over image and prompt tokens) + a Gemma action expert, trained by flow matching.

Module names mirror LeRobot's `PI0Pytorch` / openpi's PyTorch port exactly (`paligemma_with_expert.paligemma.model.
vision_tower...`, `...language_model.layers.N...`, `...gemma_expert.model.layers.N...`, `action_in_proj`, ...), so a
converted checkpoint loads by name with no renaming table. Built from transformers pieces: `SiglipVisionModel`,
`GemmaDecoderLayer` (as a container of q/k/v/o, RMSNorm, MLP), `GemmaRMSNorm`, `GemmaRotaryEmbedding`. The joint
two-tower attention is ours (see attention.py). Neither tower's `lm_head` exists here: pi0 never produces logits.

Sequence layout and masks (openpi's):
  prefix = [image tokens of each present camera slot] + [prompt tokens]; one bidirectional block over real tokens.
  suffix = [state token] + [chunk_size action tokens]; the state token opens a block (sees prefix + itself), the
  first action token opens another (actions see everything, nothing earlier sees them).
  Positions (RoPE) count only real tokens: cumsum(pad_mask) - 1.

pi0.5 (`config.pi05`, openpi's / LeRobot 0.6.1's `PI05Pytorch`) is the same model with three changes, all in the
suffix: (1) the flow time becomes a condition vector (sinusoidal embedding -> `time_mlp_in` -> SiLU -> `time_mlp_out`
-> SiLU) that drives an adaptive RMSNorm (attention.AdaRMSNorm: scale, shift and a residual gate) in place of every
expert norm, the final one included; (2) the action tokens are `action_in_proj(x_t)` alone (no `action_time_mlp`);
(3) there is no state token and no `state_proj` (pi0.5 writes the state into its prompt), so the suffix is the
chunk_size action tokens, the first opening a block. The prefix, the cache, the joint attention and the sampler are
shared: a `state` argument is accepted and ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers import GemmaConfig, SiglipVisionConfig, SiglipVisionModel
from transformers.models.gemma.modeling_gemma import GemmaDecoderLayer, GemmaRMSNorm, GemmaRotaryEmbedding

from .attention import AdaRMSNorm, additive_mask, conditioned_norm, joint_layer, make_att_2d_masks
from .config import GemmaDims, PI0Config


def _gemma_config(d: GemmaDims, vocab_size: int) -> GemmaConfig:
    return GemmaConfig(
        vocab_size=vocab_size,
        hidden_size=d.width,
        intermediate_size=d.mlp_dim,
        num_hidden_layers=d.depth,
        num_attention_heads=d.num_heads,
        num_key_value_heads=d.num_kv_heads,
        head_dim=d.head_dim,
        hidden_act="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        attention_bias=False,
    )


class _GemmaStack(nn.Module):
    """`layers` + final `norm` (+ optional `embed_tokens`), named like transformers' GemmaModel.

    With `adarms_cond_dim` (pi0.5's expert) every norm, both per layer and the final one, is an AdaRMSNorm: checkpoint
    names `...input_layernorm.dense.weight/bias` instead of `...input_layernorm.weight`."""

    def __init__(self, cfg: GemmaConfig, with_embeddings: bool, adarms_cond_dim: int | None = None):
        super().__init__()
        # Plain nn.Embedding: pi0 scales prompt embeddings by sqrt(width) itself (embed_prefix), not inside the table.
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size) if with_embeddings else None
        self.layers = nn.ModuleList([GemmaDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.norm = GemmaRMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        if adarms_cond_dim is not None:
            ada = lambda: AdaRMSNorm(cfg.hidden_size, adarms_cond_dim, eps=cfg.rms_norm_eps)  # noqa: E731
            for layer in self.layers:
                layer.input_layernorm = ada()
                layer.post_attention_layernorm = ada()
            self.norm = ada()


class _Projector(nn.Module):
    def __init__(self, vision_width: int, text_width: int):
        super().__init__()
        self.linear = nn.Linear(vision_width, text_width, bias=True)


class _VisionTower(nn.Module):
    """Holds transformers' SiglipVisionModel as `vision_model`: checkpoints name it `vision_tower.vision_model.*`
    (transformers 5 flattened SiglipVisionModel itself, so the extra level is added here)."""

    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.vision_model = SiglipVisionModel(cfg)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=pixel_values).last_hidden_state


class _PaliGemmaInner(nn.Module):
    def __init__(self, cfg: PI0Config, text_cfg: GemmaConfig):
        super().__init__()
        v = cfg.vision
        vis_cfg = SiglipVisionConfig(
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_hidden_layers=v.num_hidden_layers,
            num_attention_heads=v.num_attention_heads,
            patch_size=v.patch_size,
            image_size=v.image_size,
            num_channels=3,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
            vision_use_head=False,  # PaliGemma uses the token sequence, no pooling head
        )
        vis_cfg._attn_implementation = "sdpa"
        self.vision_tower = _VisionTower(vis_cfg)
        self.multi_modal_projector = _Projector(v.hidden_size, cfg.vlm.width)
        self.language_model = _GemmaStack(text_cfg, with_embeddings=True)


class _PaliGemma(nn.Module):
    def __init__(self, cfg: PI0Config, text_cfg: GemmaConfig):
        super().__init__()
        self.model = _PaliGemmaInner(cfg, text_cfg)


class _Expert(nn.Module):
    def __init__(self, cfg: GemmaConfig, adarms_cond_dim: int | None):
        super().__init__()
        self.model = _GemmaStack(cfg, with_embeddings=False, adarms_cond_dim=adarms_cond_dim)


class PaliGemmaWithExpert(nn.Module):
    def __init__(self, cfg: PI0Config):
        super().__init__()
        vlm_cfg = _gemma_config(cfg.vlm, cfg.vocab_size)
        self.paligemma = _PaliGemma(cfg, vlm_cfg)
        # pi0.5: the expert's norms are conditioned on the time MLP's output, whose width is the expert's.
        self.gemma_expert = _Expert(_gemma_config(cfg.expert, cfg.vocab_size), cfg.expert.width if cfg.pi05 else None)
        # One rotary table for both towers (they share head_dim); a buffer, not a parameter.
        self.rotary_emb = GemmaRotaryEmbedding(vlm_cfg)

    @property
    def vlm_layers(self) -> nn.ModuleList:
        return self.paligemma.model.language_model.layers

    @property
    def expert_layers(self) -> nn.ModuleList:
        return self.gemma_expert.model.layers


@dataclass
class PrefixCache:
    """Keys/values (after RoPE) of every prefix token at every layer, plus which prefix tokens are real.

    keys[l], values[l]: [B, kv_heads, P, head_dim]; pad_mask: [B, P] bool. Computed once per observation batch and
    reused by every denoising step (and by the RL trainer for several noise draws of the same observation).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    pad_mask: torch.Tensor
    # Suffix attention mask and rotary tables depend only on the prefix padding: built on the first denoising step,
    # reused by the others (keyed by dtype).
    suffix_context: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return self.pad_mask.shape[0]

    def index_select(self, index: torch.Tensor) -> "PrefixCache":
        """Rows `index` of the batch (repeat an index to share one prefix between several samples)."""
        index = index.to(self.pad_mask.device)
        return PrefixCache(
            [k.index_select(0, index) for k in self.keys],
            [v.index_select(0, index) for v in self.values],
            self.pad_mask.index_select(0, index),
        )


def sinusoidal_time_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """openpi's sine-cosine embedding of flow time t [B] -> [B, dim], computed in float64 then cast back."""
    if dim % 2:
        raise ValueError(f"time embedding width {dim} must be even")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    x = (2 * math.pi / period)[None, :] * t.to(torch.float64)[:, None]
    return torch.cat([torch.sin(x), torch.cos(x)], dim=1).to(t.dtype)


CHECKPOINTABLE_PARTS = ("vision", "language", "expert")


class PI0Model(nn.Module):
    def __init__(self, config: PI0Config):
        super().__init__()
        self.config = config
        # Parts whose activations are recomputed in backward instead of kept (set_activation_checkpointing).
        self.checkpointed_parts: frozenset[str] = frozenset()
        self.paligemma_with_expert = PaliGemmaWithExpert(config)
        w = config.expert.width
        self.action_in_proj = nn.Linear(config.max_action_dim, w)
        self.action_out_proj = nn.Linear(w, config.max_action_dim)
        if config.pi05:
            self.time_mlp_in = nn.Linear(w, w)
            self.time_mlp_out = nn.Linear(w, w)
        else:
            self.state_proj = nn.Linear(config.max_state_dim, w)
            self.action_time_mlp_in = nn.Linear(2 * w, w)
            self.action_time_mlp_out = nn.Linear(w, w)

    # ------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.action_in_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.action_in_proj.weight.device

    def set_activation_checkpointing(self, parts: "set[str] | frozenset[str] | tuple[str, ...]") -> None:
        """Recompute the activations of these parts in the backward pass instead of storing them: `vision` (SigLIP,
        transformers' own gradient checkpointing, per encoder layer), `language` (each PaliGemma layer of the prefix
        pass), `expert` (each expert layer of every denoising-step pass). Costs one more forward of those parts per
        backward; only applies where gradients are recorded (training), so inference is unchanged."""
        unknown = set(parts) - set(CHECKPOINTABLE_PARTS)
        if unknown:
            raise ValueError(f"activation checkpointing: unknown parts {sorted(unknown)}; use {', '.join(CHECKPOINTABLE_PARTS)}")
        self.checkpointed_parts = frozenset(parts)
        vision = self.paligemma_with_expert.paligemma.model.vision_tower.vision_model
        # transformers >= 5.2x calls it activation checkpointing; earlier 5.x releases gradient checkpointing.
        renamed = hasattr(vision, "activation_checkpointing_enable")
        enabled = vision.is_activation_checkpointing if renamed else vision.is_gradient_checkpointing
        if "vision" in parts and not enabled:
            if renamed:
                vision.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                vision.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif "vision" not in parts and enabled:
            vision.activation_checkpointing_disable() if renamed else vision.gradient_checkpointing_disable()

    def _joint_layer(self, part: str, *args, **kwargs):
        """`joint_layer`, recomputed in backward when `part` is checkpointed and gradients are being recorded."""
        if part in self.checkpointed_parts and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(joint_layer, *args, use_reentrant=False, **kwargs)
        return joint_layer(*args, **kwargs)

    def _rope(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.paligemma_with_expert.rotary_emb(like, positions)

    # ------------------------------------------------------------------ prefix
    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [-1, 1] -> [B, tokens_per_image, vlm width]. No 1/sqrt(width) scaling (openpi has none)."""
        inner = self.paligemma_with_expert.paligemma.model
        feats = inner.vision_tower(image.to(self.dtype))
        return inner.multi_modal_projector.linear(feats)

    def embed_prefix(
        self,
        images: list[torch.Tensor],
        image_masks: list[torch.Tensor],
        tokens: torch.Tensor,
        token_masks: torch.Tensor,
        slots_present: Sequence[bool] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (embeddings [B, P, W], pad_mask [B, P]). The whole prefix is one bidirectional block.

        An image slot masked out for every sample of the batch (pi0_libero's right wrist) is left out entirely: its
        tokens would be excluded from every softmax (exp(-2.4e38) == 0) and do not shift positions (they count only
        real tokens), so dropping them changes no output bit and saves a third of the vision and prefix work.
        `slots_present` (one bool per slot, known on the host by whoever built the masks) says which slots to embed;
        without it each mask is asked, a host sync per slot on a GPU and a graph break under torch.compile.
        """
        if slots_present is None:
            slots_present = [bool(m.any()) for m in image_masks]
        embs, pads = [], []
        for img, m, present in zip(images, image_masks, slots_present):
            m = m.to(torch.bool)
            if not present:
                continue
            e = self.embed_image(img)
            embs.append(e)
            pads.append(m[:, None].expand(e.shape[0], e.shape[1]))
        table = self.paligemma_with_expert.paligemma.model.language_model.embed_tokens
        lang = table(tokens)
        # Gemma scales token embeddings by sqrt(width); image tokens are not scaled.
        embs.append(lang * math.sqrt(lang.shape[-1]))
        pads.append(token_masks.to(torch.bool))
        return torch.cat(embs, dim=1), torch.cat(pads, dim=1)

    def compute_prefix_cache(
        self,
        images: list[torch.Tensor],
        image_masks: list[torch.Tensor],
        tokens: torch.Tensor,
        token_masks: torch.Tensor,
        slots_present: Sequence[bool] | None = None,
    ) -> PrefixCache:
        emb, pad = self.embed_prefix(images, image_masks, tokens, token_masks, slots_present)
        allowed = make_att_2d_masks(pad, torch.zeros_like(pad))
        mask = additive_mask(allowed, emb.dtype)
        pos = torch.cumsum(pad.long(), dim=1) - 1
        cos, sin = self._rope(pos, emb)
        keys, values = [], []
        h = emb
        layers = self.paligemma_with_expert.vlm_layers
        for i, layer in enumerate(layers):
            # The last layer's MLP output feeds nothing the suffix reads (only keys/values are cached): skip it.
            (h,), (k, v) = self._joint_layer("language", [layer], [h], mask, cos, sin, run_mlp=i < len(layers) - 1)
            keys.append(k)
            values.append(v)
        return PrefixCache(keys, values, pad)

    # ------------------------------------------------------------------ suffix
    def time_condition(self, t: torch.Tensor) -> torch.Tensor:
        """pi0.5's adaRMS condition [B, expert width] for flow time t [B]: SiLU(time_mlp_out(SiLU(time_mlp_in(emb(t)))))."""
        if not self.config.pi05:
            raise RuntimeError("time_condition is pi0.5's (config.pi05); pi0 mixes the time into its action tokens")
        w = self.config.expert.width
        temb = sinusoidal_time_embedding(t.to(torch.float32), w, self.config.min_period, self.config.max_period)
        return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(temb.to(self.dtype)))))

    def embed_suffix(
        self,
        state: torch.Tensor | None,
        x_t: torch.Tensor,
        t: torch.Tensor,
        action_token_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (tokens, adaRMS condition). pi0: [B, 1 + H, expert width], the state token then one token per action
        mixing x_t with the flow time, and no condition. pi0.5: [B, H, expert width], action_in_proj(x_t) alone, and
        the time condition [B, expert width] (`state` is not read). `action_token_bias` [B, width] is added to every
        action token in both."""
        dt = self.dtype
        act = self.action_in_proj(x_t.to(dt))
        if self.config.pi05:
            h = act
        else:
            if state is None:
                raise ValueError("pi0 needs the normalised state [B, max_state_dim] for its state token; got None")
            temb = sinusoidal_time_embedding(t.to(torch.float32), act.shape[-1], self.config.min_period, self.config.max_period)
            temb = temb.to(dt)[:, None, :].expand_as(act)
            h = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([act, temb], dim=2))))
        if action_token_bias is not None:
            h = h + action_token_bias.to(dt)[:, None, :]
        if self.config.pi05:
            return h, self.time_condition(t)
        return torch.cat([self.state_proj(state.to(dt))[:, None, :], h], dim=1), None

    def _suffix_att(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        state_tokens = 0 if self.config.pi05 else 1
        n = state_tokens + self.config.chunk_size
        pad = torch.ones(batch, n, dtype=torch.bool, device=device)
        att = torch.zeros(batch, n, dtype=torch.long, device=device)
        # pi0: the state token opens a block, the first action token opens the next; pi0.5: the first action token.
        att[:, : state_tokens + 1] = 1
        return pad, att

    def _suffix_context(self, cache: PrefixCache, suffix: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx = cache.suffix_context.get(suffix.dtype)
        if ctx is None:
            b = suffix.shape[0]
            s_pad, s_att = self._suffix_att(b, suffix.device)
            ppad = cache.pad_mask
            allowed = torch.cat(
                [ppad[:, None, :].expand(b, s_pad.shape[1], ppad.shape[1]), make_att_2d_masks(s_pad, s_att)], dim=2
            )
            pos = ppad.long().sum(dim=1, keepdim=True) + torch.cumsum(s_pad.long(), dim=1) - 1
            ctx = (additive_mask(allowed, suffix.dtype), *self._rope(pos, suffix))
            cache.suffix_context[suffix.dtype] = ctx
        return ctx

    def velocity(
        self,
        prefix_cache: PrefixCache,
        state: torch.Tensor | None,
        x_t: torch.Tensor,
        t: torch.Tensor | float,
        action_token_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow velocity v(x_t, t) [B, H, max_action_dim] in float32, reading the prefix from its cache. `state` feeds
        pi0's state token; pi0.5 ignores it (None is fine there)."""
        b = x_t.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(b)
        suffix, cond = self.embed_suffix(state, x_t, t, action_token_bias)
        mask, cos, sin = self._suffix_context(prefix_cache, suffix)
        h = suffix
        for i, layer in enumerate(self.paligemma_with_expert.expert_layers):
            past = (prefix_cache.keys[i], prefix_cache.values[i])
            (h,), _ = self._joint_layer("expert", [layer], [h], mask, cos, sin, past_kv=past, conds=[cond])
        h, _ = conditioned_norm(self.paligemma_with_expert.gemma_expert.model.norm, h, cond)
        return self.action_out_proj(h[:, -self.config.chunk_size :]).to(torch.float32)

    def velocity_uncached(
        self,
        images: list[torch.Tensor],
        image_masks: list[torch.Tensor],
        tokens: torch.Tensor,
        token_masks: torch.Tensor,
        state: torch.Tensor | None,
        x_t: torch.Tensor,
        t: torch.Tensor,
        action_token_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Both towers in one pass over prefix + suffix (what training runs); same result as velocity()."""
        prefix, ppad = self.embed_prefix(images, image_masks, tokens, token_masks)
        b = prefix.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32, device=prefix.device)
        if t.ndim == 0:
            t = t.expand(b)
        suffix, cond = self.embed_suffix(state, x_t, t, action_token_bias)
        suffix = suffix.to(prefix.dtype)
        s_pad, s_att = self._suffix_att(b, prefix.device)
        pad = torch.cat([ppad, s_pad], dim=1)
        att = torch.cat([torch.zeros_like(ppad, dtype=torch.long), s_att], dim=1)
        mask = additive_mask(make_att_2d_masks(pad, att), prefix.dtype)
        pos = torch.cumsum(pad.long(), dim=1) - 1
        cos, sin = self._rope(pos, prefix)
        hs = [prefix, suffix]
        pwe = self.paligemma_with_expert
        for vlm_layer, exp_layer in zip(pwe.vlm_layers, pwe.expert_layers):
            hs, _ = self._joint_layer("language", [vlm_layer, exp_layer], hs, mask, cos, sin, conds=[None, cond])
        h, _ = conditioned_norm(pwe.gemma_expert.model.norm, hs[1], cond)
        return self.action_out_proj(h[:, -self.config.chunk_size :]).to(torch.float32)

    # ------------------------------------------------------------------ flow matching
    def sample_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (batch, self.config.chunk_size, self.config.max_action_dim)
        where = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=where, dtype=torch.float32).to(self.device)

    def sample_time(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Beta(1.5, 1) scaled into (0.001, 1); drawn on CPU (Beta has no generator argument: Gamma ratio by hand)."""
        c = self.config
        g = generator if (generator is not None and generator.device.type == "cpu") else None
        a = torch._standard_gamma(torch.full((batch,), c.time_beta_alpha, dtype=torch.float64), generator=g)
        b = torch._standard_gamma(torch.full((batch,), c.time_beta_beta, dtype=torch.float64), generator=g)
        beta = (a / (a + b)).to(torch.float32)
        return (beta * c.time_scale + c.time_offset).to(self.device)

    def sample_actions(
        self,
        images: list[torch.Tensor],
        image_masks: list[torch.Tensor],
        tokens: torch.Tensor,
        token_masks: torch.Tensor,
        state: torch.Tensor | None,
        noise: torch.Tensor | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        action_token_bias: torch.Tensor | None = None,
        slots_present: Sequence[bool] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Euler integration of the flow from t=1 (noise) to t=0 with dt = -1/num_steps; -> [B, H, 32] (normalised).

        With return_trajectory, also returns every intermediate x_t, [B, num_steps + 1, H, 32] (x_1 = noise first).
        """
        n = num_steps or self.config.num_inference_steps
        b = tokens.shape[0]
        if noise is None:
            noise = self.sample_noise(b, generator)
        cache = self.compute_prefix_cache(images, image_masks, tokens, token_masks, slots_present)
        return self.integrate(cache, state, noise.to(torch.float32), n, return_trajectory, action_token_bias)

    def integrate(
        self,
        cache: PrefixCache,
        state: torch.Tensor | None,
        noise: torch.Tensor,
        num_steps: int,
        return_trajectory: bool = False,
        action_token_bias: torch.Tensor | None = None,
        velocity: Callable[..., torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Euler steps from x_1 = noise. `velocity(cache, state, x, t, action_token_bias)` defaults to self.velocity
        (a compiled stand-in for it: fast_sampling)."""
        velocity = velocity or self.velocity
        dt = -1.0 / num_steps
        x = noise
        traj = [x]
        for step in range(num_steps):
            t = torch.full((x.shape[0],), 1.0 + step * dt, dtype=torch.float32, device=x.device)
            x = x + dt * velocity(cache, state, x, t, action_token_bias)
            if return_trajectory:
                traj.append(x)
        return (x, torch.stack(traj, dim=1)) if return_trajectory else x

    def flow_matching_loss(
        self,
        images: list[torch.Tensor],
        image_masks: list[torch.Tensor],
        tokens: torch.Tensor,
        token_masks: torch.Tensor,
        state: torch.Tensor | None,
        actions: torch.Tensor,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
        action_token_bias: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-element squared error [B, H, 32] between v(x_t, t) and the target noise - actions."""
        b = actions.shape[0]
        actions = actions.to(torch.float32)
        if noise is None:
            noise = self.sample_noise(b, generator)
        if time is None:
            time = self.sample_time(b, generator)
        tt = time.to(torch.float32)[:, None, None]
        x_t = tt * noise + (1 - tt) * actions
        v = self.velocity_uncached(images, image_masks, tokens, token_masks, state, x_t, time, action_token_bias)
        return (noise - actions - v) ** 2
