"""The same model at initialisation, the control beside which stratify reports a trained model's
statistics: its own gate init (``_init_weights``) or FLA/Mamba-style gates, and the
``--init-gates auto`` judgement between them. Builds models; measures nothing.

    gates, why = auto_init_gates(loaded)           # "model" or "fla", and a sentence why
    model0 = init_copy(loaded.model, seed, gates)  # same architecture, device, dtype; eval mode

torch is imported inside the functions, so importing this module (and stratify) stays light.
"""

from __future__ import annotations

import copy

import numpy as np

from .errors import UserError

INIT_GATES = ("auto", "model", "fla")
MEMORYLESS_DECAY = 0.5  # median per-token decay below this: the init forgets more than half each token


def init_copy(model, seed: int = 0, gates: str = "model"):
    """The same architecture at initialisation: a fresh ``type(model)(config)`` built under
    ``torch.manual_seed(seed)``, so transformers runs the model's own ``_init_weights`` (bit-identical to
    ``from_config`` with that seed), moved to the model's device and dtype, eval mode. A model spread
    over several devices (``--device auto``) gets its copy built in its dtype and spread the same way.

    gates="fla" then re-draws every Gated DeltaNet forget gate FLA/Mamba-style (A ~ U(1, 16),
    dt ~ logU(1e-3, 1e-1), dt_bias = softplus⁻¹(dt)), the initialisation the builtin model was trained
    from; transformers' own gate init makes most heads forget everything each token."""
    import torch

    if gates not in ("model", "fla"):
        raise UserError(f"unknown init gates {gates!r}; choose model or fla")
    p = next(model.parameters())
    dm = getattr(model, "hf_device_map", None)
    spread = bool(dm) and len({str(d) for d in dm.values()}) > 1
    # a spread model is too big for one device: its copy is built on CPU in the model's own dtype
    # (not fp32: half the memory), then placed module by module as the model is placed
    old = torch.get_default_dtype()
    torch.set_default_dtype(p.dtype if spread else old)
    try:
        torch.manual_seed(seed)
        fresh = type(model)(copy.deepcopy(model.config))
    finally:
        torch.set_default_dtype(old)
    if gates == "fla":
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for mod in fresh.modules():
                if hasattr(mod, "A_log") and hasattr(mod, "dt_bias"):
                    mod.A_log.copy_(torch.empty(mod.A_log.shape).uniform_(1.0, 16.0, generator=g).log())
                    dt = torch.exp(torch.empty(mod.dt_bias.shape).uniform_(np.log(1e-3), np.log(1e-1), generator=g))
                    mod.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    if spread:
        from accelerate import dispatch_model

        return dispatch_model(fresh.eval().requires_grad_(False), device_map=dm)
    return fresh.to(device=p.device, dtype=p.dtype).eval().requires_grad_(False)


def own_init_decay(model, adapter, seed: int = 0, draws: int = 16) -> float:
    """Median per-token decay exp(−A·softplus(dt_bias)) (gate input 0) over heads (channels, for
    per-channel decay) of the model's OWN gate initialisation: one linear-attention layer built fresh
    on CPU, its gates initialised ``draws`` times by the model's ``_init_weights`` (a model with few
    heads gives too few samples from one draw). transformers' Qwen3-Next / Qwen3.5 init (A ~ U(0.01,
    16), dt_bias = 1) gives ~e^-10: heads forget everything each token; OLMo-hybrid's and Kimi's ~0.95."""
    import torch
    import torch.nn.functional as F

    layer = adapter.linear_layers(model)[0]
    cfg = model.config if hasattr(model.config, "hidden_size") else model.config.get_text_config()
    decays = []
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        with torch.device("cpu"):
            fresh = type(layer.module)(copy.deepcopy(cfg), layer.index)
        gates = [m for m in fresh.modules() if hasattr(m, "A_log") and hasattr(m, "dt_bias")]
        if not gates:
            raise UserError(f"{type(layer.module).__name__} has no A_log/dt_bias gate to initialise")
        for i in range(draws):
            torch.manual_seed(seed + i)
            for m in dict.fromkeys([fresh, *gates]):  # the layer's init sets its gates (Kimi's: the gate module's)
                model._init_weights(m)
            for m in gates:
                A, dt = m.A_log.detach().float().exp().flatten(), F.softplus(m.dt_bias.detach().float()).flatten()
                if dt.numel() != A.numel():  # per-channel decay: one A per head, one dt per channel
                    A = A.repeat_interleave(dt.numel() // A.numel())
                decays.append(torch.exp(-A * dt))
    return float(torch.cat(decays).median())


def auto_init_gates(loaded, seed: int = 0) -> tuple[str, str]:
    """-> (gates, why) for ``--init-gates auto``: the model's own init unless it is memoryless, then
    FLA/Mamba-style gates (what GDN models are trained from in fla, and the builtin model was). A
    memoryless baseline has no rank structure at all, so any stratification would beat it: too weak
    a control."""
    d = own_init_decay(loaded.model, loaded.adapter, seed)
    if d < MEMORYLESS_DECAY:
        return "fla", (f"the model's own gate init has median per-token decay {d:.2g} (memoryless), "
                       f"so FLA/Mamba-style gates")
    return "model", f"the model's own gate init (median per-token decay {d:.2f})"
