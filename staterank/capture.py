"""Per-token, per-head recurrent states of every linear-attention layer, exactly as computed.

    with capture(model) as trace:
        model(input_ids)                      # prefill, and/or model.generate(...) for cached decode
    dyn = trace.dynamics()                    # {stat: [B, L, H, P]}, positions [P], layers [L]

Each delta-rule call is intercepted (``hooks.intercept``); the recurrence is replayed from the
q, k, v, g, beta and initial state the layer actually passed (``recurrence.replay``), and every
replay is checked against the rule's own outputs and final state (``verify``), so a capture that
drifts from the model fails loudly instead of reporting wrong ranks. Statistics are computed as
states stream (``spectra.spectrum_stats``), a chunk of tokens at a time; full states are kept
only when asked, under a memory limit.

Shapes: B batch, T tokens, L linear-attention layers, H value heads, K key dim, V value dim,
P scheduled positions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from . import spectra
from .adapters import Adapter, LinearLayer, get_adapter
from .errors import UserError, VerificationFailed
from .hooks import intercept
from .recurrence import RuleCall, replay


class CaptureMismatch(VerificationFailed):
    """The replayed recurrence disagrees with what the model computed."""


@dataclass(frozen=True)
class Schedule:
    """Which token counts t (1-based) get statistics: every ``stride``-th token, or powers of two
    (``log``), or explicit ``positions``; the last token of a sequence is not added implicitly."""

    stride: int = 1
    log: bool = False
    positions: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.stride < 1:
            raise UserError(f"stride must be >= 1, got {self.stride}")

    def mask(self, t: torch.Tensor) -> torch.Tensor:
        """t: [n] 1-based token counts -> bool [n]."""
        if self.positions is not None:
            return torch.isin(t, torch.tensor(self.positions, dtype=t.dtype))
        if self.log:
            return (t & (t - 1)) == 0
        return (t % self.stride) == 0 if self.stride > 1 else torch.ones_like(t, dtype=torch.bool)

    def to_dict(self) -> dict:
        return {"stride": self.stride, "log": self.log, "positions": list(self.positions) if self.positions else None}


class _Columns:
    """Chunks [..., n] appended along the last axis into one buffer that doubles when full.

    Thousands of small per-chunk tensors, interleaved with the big temporaries of each segment,
    pinned heap pages malloc_trim could not return: analyze's RSS grew ~8 KB per token on the
    builtin model. A few large blocks do not."""

    def __init__(self):
        self.buf: torch.Tensor | None = None
        self.n = 0

    def append(self, x: torch.Tensor) -> None:
        need = self.n + x.shape[-1]
        if self.buf is not None and self.buf.shape[:-1] != x.shape[:-1]:  # else it would broadcast
            raise ValueError(f"chunk of shape {tuple(x.shape)} after chunks of {tuple(self.buf.shape[:-1])}")
        if self.buf is None or need > self.buf.shape[-1]:
            cap = max(need, 2 * (self.buf.shape[-1] if self.buf is not None else 0), 256)
            new = torch.empty(*x.shape[:-1], cap, dtype=x.dtype)
            if self.buf is not None:
                new[..., : self.n] = self.buf[..., : self.n]
            self.buf = new
        self.buf[..., self.n : need] = x
        self.n = need

    def value(self) -> torch.Tensor:
        return self.buf[..., : self.n]

    def __bool__(self) -> bool:
        return self.n > 0


@dataclass
class _LayerTrace:
    layer: LinearLayer
    t: int = 0  # tokens seen in the current sequence
    positions: _Columns = field(default_factory=_Columns)
    stats: dict[str, _Columns] = field(default_factory=dict)
    states: list[torch.Tensor] = field(default_factory=list)
    log_decay_sum: torch.Tensor | None = None  # [B, H]
    tokens: int = 0
    kept: torch.Tensor | None = None  # fingerprint [2, B, H] of the final state the layer kept


class Trace:
    """What a capture collected. Populated while the ``with`` block runs."""

    def __init__(self, layers: list[LinearLayer], adapter: Adapter, eps: float, schedule: Schedule):
        self.adapter = adapter
        self.eps = eps
        self.schedule = schedule
        self.layers = [_LayerTrace(l) for l in layers]
        self.max_output_err = 0.0
        self.max_state_err = 0.0
        self.calls = 0

    @property
    def layer_indices(self) -> list[int]:
        return [lt.layer.index for lt in self.layers]

    def positions(self) -> np.ndarray:
        """[P] 1-based token counts at which statistics were taken (same for every layer)."""
        lt = self.layers[0]
        return lt.positions.value().cpu().numpy() if lt.positions else np.zeros(0, dtype=np.int64)

    def dynamics(self) -> dict[str, np.ndarray]:
        """{stat: [B, L, H, P]} for every stat in ``spectra.STAT_NAMES``, plus ``positions`` [P],
        ``layers`` [L] (model layer indices), ``bound`` [P] (min(t, K, V); per layer if K, V vary,
        then [L, P]) and ``log_decay`` [B, L, H] (mean log decay per token; mean over channels
        for per-channel decay)."""
        out: dict[str, np.ndarray] = {}
        for name in spectra.stat_names():
            per_layer = [lt.stats[name].value() if lt.stats.get(name) else None for lt in self.layers]
            if any(p is None for p in per_layer):
                raise UserError("the capture saw no tokens at the scheduled positions" if not self.positions().size
                                else "the capture took no statistics (stats=False); use states() or capture with stats")
            out[name] = torch.stack(per_layer, dim=1).cpu().numpy()
        pos = self.positions()
        out["positions"] = pos
        out["layers"] = np.array(self.layer_indices, dtype=np.int64)
        bounds = np.stack([np.minimum(pos, min(lt.layer.layout.k, lt.layer.layout.v)) for lt in self.layers])
        out["bound"] = bounds[0] if (bounds == bounds[0]).all() else bounds
        out["log_decay"] = torch.stack(
            [lt.log_decay_sum / max(lt.tokens, 1) for lt in self.layers], dim=1
        ).cpu().numpy()
        return out

    def states(self, layer: int) -> torch.Tensor:
        """Kept states of model layer ``layer``: [B, H, P, K, V] (only with ``keep_states``)."""
        for lt in self.layers:
            if lt.layer.index == layer:
                if not lt.states:
                    raise UserError("states were not kept; capture with keep_states=True")
                return torch.cat(lt.states, dim=2)
        raise UserError(f"layer {layer} is not a linear-attention layer; those are {self.layer_indices}")


_PADDED = ("capture got a padded batch: positions and statistics would include the pad tokens; give one "
           "text per forward, or texts of equal length")


class _Capturer:
    def __init__(self, trace: Trace, stats: bool, keep_states: bool, max_state_bytes: int,
                 on_states: Callable | None, verify: bool, chunk: int):
        self.trace = trace
        self.by_module = {id(lt.layer.module): lt for lt in trace.layers}
        self.stats = stats
        self.keep_states = keep_states
        self.max_state_bytes = max_state_bytes
        self.kept_bytes = 0
        self.on_states = on_states
        self.verify = verify
        self.chunk = chunk
        self.padded = False  # set by enter() for the layer about to call its rule

    def enter(self, layer: LinearLayer, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        # transformers hands linear-attention layers a mask only when some position is padding
        self.padded = mask is not None and bool((mask == 0).any())

    def arrive(self, layer: LinearLayer, call: RuleCall) -> None:
        """Checks on the call as the layer made it (an ablation may zero heads of the initial state
        after this, legitimately)."""
        lt = self.by_module[id(layer.module)]
        if self.padded:
            raise UserError(_PADDED)
        if lt.t == 0 and call.initial_state is not None and bool((call.initial_state != 0).any()):
            raise UserError("the capture started mid-sequence (the first forward it saw continues a cache): "
                            "positions and the bound min(t, K, V) count from a sequence's first token; start "
                            "the capture before the prefill")
        if call.initial_state is None:
            if lt.t > 0:
                raise UserError("a second sequence started inside one capture (a forward without the cache "
                                "of the first); use one `with capture(...)` per text")
        elif lt.kept is not None:
            seen = _fingerprint(call.initial_state)
            if seen.shape != lt.kept.shape or not torch.allclose(seen, lt.kept, rtol=1e-2, atol=1e-6):
                raise UserError("the cache's state is not the one this capture saw the layer keep (reordered "
                                "beams, or a reset or foreign cache): the per-row statistics would not "
                                "follow the sequences; capture greedy or sampled decoding, one cache per capture")

    def observe(self, layer: LinearLayer, call: RuleCall, out: torch.Tensor, state: torch.Tensor | None):
        lt = self.by_module[id(layer.module)]
        tr = self.trace
        T = call.num_tokens
        t = torch.arange(lt.t + 1, lt.t + T + 1)
        keep = tr.schedule.mask(t)

        def consume(idx: torch.Tensor, S: torch.Tensor) -> None:
            pos = t[idx]
            lt.positions.append(pos)
            if self.stats:
                for name, val in spectra.spectrum_stats(S, eps=tr.eps).items():
                    lt.stats.setdefault(name, _Columns()).append(val.detach().to(torch.float64).cpu())
            if self.keep_states:
                self.kept_bytes += S.numel() * S.element_size()
                if self.kept_bytes > self.max_state_bytes:
                    raise UserError(
                        f"kept states exceed the memory limit of {self.max_state_bytes / 2**20:.0f} MiB; "
                        "raise it, use a stride, or do not keep states"
                    )
                lt.states.append(S.detach().cpu().clone())
            if self.on_states is not None:
                self.on_states(layer, pos, S)

        with torch.no_grad():
            rep_out, rep_state = replay(call, keep=keep, on_states=consume, chunk=self.chunk)
            g = call.g.to(torch.float64)
            g = g.mean(-1) if g.dim() == 4 else g  # per-channel decay: mean over K
            s = g.sum(dim=1)  # [B, H]
            lt.log_decay_sum = s if lt.log_decay_sum is None or call.initial_state is None else lt.log_decay_sum + s
            lt.tokens = T if call.initial_state is None else lt.tokens + T
            if self.verify:
                self._check(out, rep_out, state, rep_state)
        lt.t += T
        tr.calls += 1

    def settle(self, layer: LinearLayer, state: torch.Tensor | None) -> None:
        if state is not None:
            self.by_module[id(layer.module)].kept = _fingerprint(state)

    def _check(self, out, rep_out, state, rep_state):
        """Replay vs the rule's own outputs [B, T, H, V] and final state [B, H, K, V], head by head:
        max |model − replay| ≤ atol + rtol · max |replay| over the head. Round-off scales with a
        head's magnitude, not with each entry (an element-wise rtol flags near-zero entries), while a
        wrong layout, decay or GVA map is off by the order of the head's magnitude. fp32 on CPU runs
        the same reference arithmetic; bf16 outputs and GPU kernels (fla's chunked ones may use TF32)
        get looser bounds."""
        tr = self.trace
        ref = rep_out.to(out.dtype).float()  # the model casts outputs back to its dtype
        tight = out.dtype == torch.float32
        err = _head_check("outputs differ", out.float(), ref, head_dim=2,
                          atol=1e-4 if tight else 2e-2, rtol=1e-3 if tight else 2e-2)
        tr.max_output_err = max(tr.max_output_err, err)
        if state is not None:
            serr = _head_check("state differs", state.float(), rep_state, head_dim=1, atol=1e-4,
                               rtol=state_rtol(out.dtype, state.device))
            tr.max_state_err = max(tr.max_state_err, serr)


def state_rtol(dtype: torch.dtype, device: torch.device) -> float:
    """Relative bound (of a head's magnitude) on final state vs replay. fp32 on CPU: the same reference
    arithmetic. fp32 on a GPU: TF32 in fla's chunked kernels. 16-bit inputs: fla keeps its per-chunk
    states in the input dtype, so rounding accumulates over chunks (measured on an H200, fla 0.6.0,
    bf16, builtin model, 512 tokens: 1.17 % on one head, which a 1 % bound refused). A wrong layout,
    decay or GVA map is off by the order of the head's magnitude."""
    if dtype != torch.float32:
        return 5e-2
    return 1e-3 if device.type == "cpu" else 1e-2


def _fingerprint(state: torch.Tensor) -> torch.Tensor:
    """[B, H, K, V] -> [2, B, H]: the sums of |S| and S² of each row's head state (a reordered,
    reset or foreign cache changes them; a dtype cast moves them by its rounding only)."""
    s = state.detach().float()
    return torch.stack([s.abs().sum((-2, -1)), (s * s).sum((-2, -1))]).cpu()


def _head_check(what: str, a: torch.Tensor, ref: torch.Tensor, head_dim: int, atol: float, rtol: float) -> float:
    """Max abs diff of ``a`` vs the replay ``ref``; CaptureMismatch if any head exceeds its bound
    (see ``_Capturer._check``)."""
    if a.numel() == 0:
        return 0.0
    heads = a.shape[head_dim]
    diff = (a - ref).abs().movedim(head_dim, 0).reshape(heads, -1).amax(-1)  # [H]
    mag = ref.abs().movedim(head_dim, 0).reshape(heads, -1).amax(-1)
    excess = diff - (atol + rtol * mag)
    if bool((excess > 0).any()):
        h = int(excess.argmax())
        raise CaptureMismatch(f"replayed {what} from the model's (max abs diff {float(diff.max()):.3g}, "
                              f"head {h} off by {float(diff[h] / mag[h].clamp(min=1e-30)):.3g} of its magnitude)")
    return float(diff.max())


@contextlib.contextmanager
def capture(
    model: nn.Module,
    adapter: Adapter | None = None,
    *,
    eps: float = 1e-4,
    schedule: Schedule | None = None,
    stats: bool = True,
    keep_states: bool = False,
    max_state_bytes: int = 2**30,
    on_states: Callable[[LinearLayer, torch.Tensor, torch.Tensor], None] | None = None,
    verify: bool = True,
    chunk: int = 64,
) -> Iterator[Trace]:
    """Capture per-token states of every linear-attention layer of ``model`` inside the block.

    on_states(layer, positions [n], states [B, H, n, K, V]) streams raw states to a consumer; the
    states tensor is a reused buffer, valid only during the call (clone what you keep).
    One capture holds one batch of sequences: a prefill, then segments or decode steps through
    its cache. Refused with a UserError: padded batches (give one text per forward, or
    equal-length texts), a second fresh forward, and a cache whose state is not the one the
    capture saw kept (beam search reorders its rows).
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise UserError(f"chunk must be a positive integer, got {chunk!r}")
    if not eps >= 0:
        raise UserError(f"eps must be >= 0, got {eps}")
    adapter = adapter or get_adapter(model)
    schedule = schedule or Schedule()
    layers = adapter.linear_layers(model)
    if not layers:
        raise UserError(f"{type(model).__name__} has no {adapter.layer_class} layers")
    trace = Trace(layers, adapter, eps, schedule)
    handler = _Capturer(trace, stats, keep_states, max_state_bytes, on_states, verify, chunk)

    def padded(module, args, kwargs):
        # transformers gives a one-token forward's linear layers no mask at all: read the model's own
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and bool((mask == 0).any()):
            raise UserError(_PADDED)

    hook = model.register_forward_pre_hook(padded, with_kwargs=True)
    try:
        with intercept(model, adapter, handler):
            yield trace
    finally:
        hook.remove()
