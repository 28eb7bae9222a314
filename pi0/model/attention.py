"""The two-tower joint attention of pi0, written by hand.

Why by hand: transformers' `GemmaDecoderLayer.forward` runs one stack over one sequence. pi0 runs two Gemma stacks
(PaliGemma's language model over the prefix, the action expert over the suffix) *side by side*: per layer, each
tower projects its own tokens with its own weights, the queries/keys/values of both are concatenated into one
sequence, one attention runs over it under pi0's block mask, and each tower takes back its own slice for its own
output projection, residuals and MLP. We reuse the layer's submodules (q/k/v/o projections, GemmaRMSNorm, GemmaMLP)
and transformers' rotary helpers; only this wiring is ours.

pi0.5 differs only in the action expert's norms: each is an adaptive RMSNorm (`AdaRMSNorm`) conditioned on the flow
time, which also returns a gate for its residual branch (`x + gate * branch`). A tower given a condition in `conds`
takes that path; a tower without one (PaliGemma always, pi0's expert) runs exactly the plain-norm code.

The same function serves three cases:
  * prefix only (computing the key/value cache): towers = [vlm], no past;
  * suffix with a cached prefix (each denoising step): towers = [expert], past = the cached prefix keys/values;
  * both towers at once (training loss, and the uncached reference path).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.gemma.modeling_gemma import apply_rotary_pos_emb

# openpi/LeRobot's additive mask value. Finite (not -inf) so a fully masked row (a padded query) yields a uniform
# softmax instead of NaN; its output is never read.
MASK_VALUE = -2.3819763e38


def make_att_2d_masks(pad_masks: torch.Tensor, att_masks: torch.Tensor) -> torch.Tensor:
    """big_vision's block mask: token i sees token j iff cumsum(att)[j] <= cumsum(att)[i] and both are real.

    `att_masks` is 1 where a new block starts (later blocks see earlier ones, not the reverse).
    """
    cumsum = torch.cumsum(att_masks.long(), dim=1)
    att_2d = cumsum[:, None, :] <= cumsum[:, :, None]
    pad_2d = pad_masks[:, None, :] & pad_masks[:, :, None]
    return att_2d & pad_2d


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, Q, K] bool -> [B, 1, Q, K] additive float mask."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    neg = torch.full((), MASK_VALUE, dtype=dtype, device=allowed.device)
    return torch.where(allowed[:, None], zero, neg)


class AdaRMSNorm(nn.Module):
    """pi0.5's adaptive RMSNorm (openpi / LeRobot `PiGemmaRMSNorm` with a condition): `dense` maps the condition
    [B, cond_dim] to (scale, shift, gate), each [B, width]; the norm is rmsnorm(x) * (1 + scale) + shift (no learned
    weight) and the gate multiplies the residual branch this norm feeds. Arithmetic in float32 like Gemma's norm."""

    def __init__(self, width: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * width)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        scale, shift, gate = self.dense(cond.to(self.dense.weight.dtype))[:, None, :].chunk(3, dim=-1)
        return (normed * (1.0 + scale.float()) + shift.float()).to(x.dtype), gate.to(x.dtype)


def conditioned_norm(
    norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(normed x, gate): a plain Gemma norm without a condition (gate None), an AdaRMSNorm with one."""
    if cond is None:
        return norm(x), None
    return norm(x, cond)


def gated_residual(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    return x + branch if gate is None else x + branch * gate


def joint_layer(
    layers: Sequence[nn.Module],
    hiddens: Sequence[torch.Tensor],
    mask: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    run_mlp: bool = True,
    conds: Sequence[torch.Tensor | None] | None = None,
) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One pi0 layer over the concatenation of `hiddens` (one per tower, in sequence order).

    layers:  one transformers GemmaDecoderLayer per tower (its submodules only; its forward is not used).
    mask:    additive [B, 1, Q, K] with K = past length + sum of tower lengths.
    cos/sin: rotary tables for the Q new positions, [B, Q, head_dim].
    past_kv: keys/values (already rotated) of earlier tokens, [B, kv_heads, P, head_dim] each.
    conds:   per tower, the adaRMS condition [B, cond_dim] (pi0.5's expert) or None (plain norms); None: all plain.
    Returns the new hidden states per tower and this layer's (rotated) keys/values for the new tokens.
    """
    conds = conds if conds is not None else [None] * len(layers)
    attn0 = layers[0].self_attn
    head_dim = attn0.head_dim
    qs, ks, vs, gates = [], [], [], []
    for layer, h, cond in zip(layers, hiddens, conds):
        x, gate = conditioned_norm(layer.input_layernorm, h, cond)
        gates.append(gate)
        shape = (*x.shape[:-1], -1, head_dim)
        qs.append(layer.self_attn.q_proj(x).view(shape).transpose(1, 2))
        ks.append(layer.self_attn.k_proj(x).view(shape).transpose(1, 2))
        vs.append(layer.self_attn.v_proj(x).view(shape).transpose(1, 2))
    q = torch.cat(qs, dim=2)
    k = torch.cat(ks, dim=2)
    v = torch.cat(vs, dim=2)
    q, k = apply_rotary_pos_emb(q, k, cos.to(q.dtype), sin.to(q.dtype), unsqueeze_dim=1)
    new_kv = (k, v)
    if past_kv is not None:
        k = torch.cat([past_kv[0].to(k.dtype), k], dim=2)
        v = torch.cat([past_kv[1].to(v.dtype), v], dim=2)
    # Grouped-query attention (8 query heads share 1 KV head in pi0); scaling head_dim ** -0.5 as in Gemma.
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask.to(q.dtype), scale=attn0.scaling, enable_gqa=q.shape[1] != k.shape[1]
    )
    out = out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    outputs = []
    start = 0
    for layer, h, cond, gate in zip(layers, hiddens, conds, gates):
        end = start + h.shape[1]
        o = layer.self_attn.o_proj(out[:, start:end].to(layer.self_attn.o_proj.weight.dtype))
        h = gated_residual(h, o, gate)
        if run_mlp:
            x, gate = conditioned_norm(layer.post_attention_layernorm, h, cond)
            h = gated_residual(h, layer.mlp(x), gate)
        outputs.append(h)
        start = end
    return outputs, new_kv
