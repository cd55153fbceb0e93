"""Pure-PyTorch reference of the (gated) delta rule, replayed token by token.

The op order copies transformers' ``torch_recurrent_gated_delta_rule`` /
``recurrent_kimi_delta_attention`` so a replay reproduces the model's cached decode states bit for
bit, and the chunked prefill states to float32 round-off. Per token:
    S ← S · exp(g_t);  S ← S + k_t ⊗ β_t (v_t − Sᵀk_t);  o_t = Sᵀq_t
with q, k L2-normalised (when the layer asks for it) and q scaled by K^-1/2.

Shapes: B batch, T tokens, H value heads, K key dim, V value dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    # Same formula as transformers/FLA so that replays match bit for bit.
    inv_norm = torch.rsqrt((x * x).sum(dim=dim, keepdim=True) + eps)
    return x * inv_norm


@dataclass
class RuleCall:
    """The arguments one delta-rule call received, as the layer passed them.

    q, k: [B, T, H_k or H_v, K]; v: [B, T, H_v, V]; g: [B, T, H_v] (per head) or [B, T, H_v, K]
    (per channel); beta: [B, T, H_v]; initial_state: [B, H_v, K, V] or None.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor
    beta: torch.Tensor
    initial_state: torch.Tensor | None
    use_qk_l2norm: bool

    @property
    def num_tokens(self) -> int:
        return self.v.shape[1]


@dataclass
class Prepared:
    """fp32 tensors in [B, H_v, T, ...] layout, q/k normalised, q scaled, GVA expanded."""

    q: torch.Tensor  # [B, H, T, K]
    k: torch.Tensor  # [B, H, T, K]
    v: torch.Tensor  # [B, H, T, V]
    decay: torch.Tensor  # [B, H, T, 1, 1] or [B, H, T, K, 1]: exp(g) broadcastable to S
    beta: torch.Tensor  # [B, H, T, 1]
    state0: torch.Tensor  # [B, H, K, V]


def prepare(call: RuleCall) -> Prepared:
    q, k, v, g, beta = call.q, call.k, call.v, call.g, call.beta
    h_v = v.shape[2]
    if k.shape[2] != h_v:  # grouped value attention: each key head serves H_v/H_k consecutive value heads
        rep = h_v // k.shape[2]
        q = q.repeat_interleave(rep, dim=2)
        k = k.repeat_interleave(rep, dim=2)
    q, k, v, beta, g = (x.transpose(1, 2).to(torch.float32) for x in (q, k, v, beta, g))
    if call.use_qk_l2norm:
        q = l2norm(q)
        k = l2norm(k)
    q = q / (q.shape[-1] ** 0.5)
    bsz, h, _, kd = k.shape
    vd = v.shape[-1]
    decay = g.exp()
    decay = decay[..., None, None] if decay.dim() == 3 else decay[..., None]
    if call.initial_state is None:
        s0 = torch.zeros(bsz, h, kd, vd, dtype=torch.float32, device=v.device)
    else:
        s0 = call.initial_state.to(torch.float32)
    return Prepared(q=q, k=k, v=v, decay=decay, beta=beta.unsqueeze(-1), state0=s0)


def replay(
    call: RuleCall,
    keep: torch.Tensor | None = None,
    on_states: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    chunk: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replay the recurrence of one rule call.

    keep: bool [T] — which tokens' states to hand to ``on_states`` (all if None).
    on_states(idx [n], states [B, H, n, K, V]) is called with at most ``chunk`` states at a time,
    so memory stays O(chunk·K·V) whatever T is. ``states`` is a reused buffer, valid only during
    the call: clone what you keep.
    Returns (outputs [B, T, H, V] fp32, final state [B, H, K, V] fp32).
    """
    p = prepare(call)
    B, H, T, _ = p.v.shape
    # In-place updates and one reused chunk buffer: a fresh state tensor per token fragments the
    # heap (resident memory grew with T on glibc); the arithmetic, and so the bits, are unchanged.
    S = p.state0.clone()
    out = torch.empty_like(p.v)
    buf = None
    if on_states is not None:
        buf = torch.empty(B, H, min(chunk, T), *S.shape[-2:], dtype=S.dtype, device=S.device)
    idx: list[int] = []
    for i in range(T):
        S.mul_(p.decay[:, :, i])
        kv_mem = (S * p.k[:, :, i].unsqueeze(-1)).sum(dim=-2)
        delta = (p.v[:, :, i] - kv_mem) * p.beta[:, :, i]
        S.add_(p.k[:, :, i].unsqueeze(-1) * delta.unsqueeze(-2))
        out[:, :, i] = (S * p.q[:, :, i].unsqueeze(-1)).sum(dim=-2)
        if buf is not None and (keep is None or bool(keep[i])):
            buf[:, :, len(idx)] = S
            idx.append(i)
            if len(idx) == buf.shape[2]:
                on_states(torch.tensor(idx), buf)
                idx = []
    if idx:
        on_states(torch.tensor(idx), buf[:, :, : len(idx)])
    return out.transpose(1, 2), S
