"""The two-tower joint attention of pi0, written by hand.

Why by hand: transformers' `GemmaDecoderLayer.forward` runs one stack over one sequence. pi0 runs two Gemma stacks
(PaliGemma's language model over the prefix, the action expert over the suffix) *side by side*: per layer, each
tower projects its own tokens with its own weights, the queries/keys/values of both are concatenated into one
sequence, one attention runs over it under pi0's block mask, and each tower takes back its own slice for its own
output projection, residuals and MLP. We reuse the layer's submodules (q/k/v/o projections, GemmaRMSNorm, GemmaMLP)
and transformers' rotary helpers; only this wiring is ours.

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


def joint_layer(
    layers: Sequence[nn.Module],
    hiddens: Sequence[torch.Tensor],
    mask: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    run_mlp: bool = True,
) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One pi0 layer over the concatenation of `hiddens` (one per tower, in sequence order).

    layers:  one transformers GemmaDecoderLayer per tower (its submodules only; its forward is not used).
    mask:    additive [B, 1, Q, K] with K = past length + sum of tower lengths.
    cos/sin: rotary tables for the Q new positions, [B, Q, head_dim].
    past_kv: keys/values (already rotated) of earlier tokens, [B, kv_heads, P, head_dim] each.
    Returns the new hidden states per tower and this layer's (rotated) keys/values for the new tokens.
    """
    attn0 = layers[0].self_attn
    head_dim = attn0.head_dim
    qs, ks, vs = [], [], []
    for layer, h in zip(layers, hiddens):
        x = layer.input_layernorm(h)
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
    for layer, h in zip(layers, hiddens):
        end = start + h.shape[1]
        o = layer.self_attn.o_proj(out[:, start:end].to(layer.self_attn.o_proj.weight.dtype))
        h = h + o
        if run_mlp:
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        outputs.append(h)
        start = end
    return outputs, new_kv
