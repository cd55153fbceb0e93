"""Export a pruned model as a stock Hugging Face checkpoint, and the measurements that check it.

Stock transformers 5.24 reads one H_k/H_v for all linear layers (no per-layer head counts), so a
plan exports only when every linear layer keeps the same number of value heads; other plans are
refused with one line (use ``ranking="per_layer"``). The GVA ratio written is the largest G' valid
in every layer (``surgery.common_group``), see ``surgery`` for the regrouping rule. We do not ship
a custom loader: a checkpoint that needs one is not one users can serve with stock tools.

Measurements (all on real forwards):
  ``state_bytes``   bytes the cache holds after a forward of [B, T] tokens: linear recurrent states
                    (``recurrent_states[0]``), conv states (``conv_states[0]``), attention KV.
  ``decode_speed``  greedy decode tokens/s, prefill untimed (a number for the report, not a test).
  ``logits``        fp32 logits [B, T, vocab] on given ids, to compare the pruned and masked models.

Shapes: B batch, T tokens.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..adapters import HeadLayout, get_adapter
from ..errors import UserError
from ..models import cache_kwarg, output_cache
from ..probes.ablate import ablate
from .plan import Plan
from .surgery import common_group, group_sizes, prune_heads


def export_shape(plan: Plan) -> tuple[int, int, int]:
    """(H_k', H_v', G') a stock config can describe for ``plan``; UserError if there is none."""
    lay = implied_layout(plan)
    if not lay["exportable"]:
        raise UserError(f"plan keeps {plan.kept_h_v()} value heads per layer; stock transformers needs the same count in "
                        "every layer to load it: use --ranking per_layer or key_groups (or --no-export to evaluate it in memory)")
    first = lay["per_layer"][0]
    return first["h_k"], first["h_v"], first["group"]


def implied_layout(plan: Plan) -> dict:
    """What ``plan`` means for the checkpoint and for serving engines (prune.json's ``layout``).

    Per layer the (H_k', H_v', G') surgery builds; key heads before/after (a key head duplicated to keep
    a uniform G' costs q/k parameters and conv state); ``exportable``: stock transformers can describe
    it (equal H_v' in every layer); ``engine_compatible``: vLLM and SGLang can serve it too, as they
    size GDN state from one global head count (equal H_k' and H_v' in every layer, H_v' a multiple of
    H_k'); ``why``: the first reason it is not."""
    removed = plan.by_layer()
    layouts = [HeadLayout(*lo) for lo in plan.facts["layouts"]]
    gp = common_group(layouts, [removed[li] for li in plan.layers])
    per_layer = []
    for li, lo in zip(plan.layers, layouts):
        h_v, kept_groups = lo.h_v - len(removed[li]), len(group_sizes(lo, removed[li]))
        # each surviving key group becomes c_g / G' key heads: copies beyond the first are duplicates
        per_layer.append({"layer": li, "h_k": h_v // gp, "h_v": h_v, "group": gp,
                          "key_heads_removed": lo.h_k - kept_groups, "key_heads_duplicated": h_v // gp - kept_groups})
    hv = {p["h_v"] for p in per_layer}
    hk = {p["h_k"] for p in per_layer}
    why = None
    if len(hv) != 1:
        why = f"the plan keeps {[p['h_v'] for p in per_layer]} value heads per layer; stock configs hold one count"
    elif len(hk) != 1:
        why = f"the plan keeps {[p['h_k'] for p in per_layer]} key heads per layer; engines size state from one count"
    elif any(p["h_v"] % p["h_k"] for p in per_layer):
        why = "H_v' is not a multiple of H_k'"
    return {"per_layer": per_layer, "group": gp,
            "key_heads": [sum(lo.h_k for lo in layouts), sum(p["h_k"] for p in per_layer)],
            "value_heads": [sum(lo.h_v for lo in layouts), sum(p["h_v"] for p in per_layer)],
            "key_heads_duplicated": sum(p["key_heads_duplicated"] for p in per_layer),
            "exportable": len(hv) == 1, "engine_compatible": why is None, "why": why}


def _configs(model: nn.Module) -> list:
    cfg = model.config
    return [c for c in (cfg, getattr(cfg, "text_config", None)) if c is not None and hasattr(c, "layer_types")]


def update_config(model: nn.Module, h_k: int, h_v: int) -> None:
    """Write the head counts into the config fields the adapter declares (``config_keys``, and the
    ``num_heads`` of its ``config_dict`` where a checkpoint has one: that one wins on load)."""
    adapter = get_adapter(model)
    for c in _configs(model):
        setattr(c, adapter.config_keys[0], h_k)
        setattr(c, adapter.config_keys[1], h_v)
        sub = getattr(c, adapter.config_dict, None) if adapter.config_dict else None
        if isinstance(sub, dict) and "num_heads" in sub:
            sub["num_heads"] = h_v


@contextlib.contextmanager
def masked(model: nn.Module, plan: Plan) -> Iterator[None]:
    """The model with the plan's heads zero-ablated (the reference the pruned model must match)."""
    with ablate(model, {li: hs for li, hs in plan.by_layer().items() if hs}, mode="zero"):
        yield


def _cast(model: nn.Module, dtype: torch.dtype) -> None:
    """``model.to(dtype)`` except the tensors a model of this class holds in fp32 at that dtype
    (Kimi's ``dt_bias`` and router gate, OLMo-hybrid's ``A_log``): exporting in a checkpoint's dtype
    then keeps them fp32, as ``from_pretrained`` does, instead of rounding decays to bf16. The rule
    is read off the class itself, built at ``dtype`` on the meta device (no memory, no init)."""
    try:
        with torch.device("meta"):
            ref = type(model)._from_config(model.config, dtype=dtype)
        keep = {n for n, t in chain(ref.named_parameters(), ref.named_buffers()) if t.dtype == torch.float32}
    except Exception:  # a class transformers cannot build from its config: cast everything, as before
        keep = set()
    for name, t in chain(model.named_parameters(), model.named_buffers()):
        if t.is_floating_point() and t.dtype != dtype and not (t.dtype == torch.float32 and name in keep):
            t.data = t.data.to(dtype)


def export(model: nn.Module, plan: Plan, out_dir: str | Path, tokenizer=None, dtype: torch.dtype | None = None) -> dict:
    """Prune ``model`` IN PLACE by ``plan`` and save it with an updated config to ``out_dir``, in
    ``dtype`` (the model is cast in place; default: as it is).

    Returns {"path", "dtype", "h_k", "h_v", "group", "key_heads_before", "key_heads_after" (all
    layers), "key_heads_duplicated"}. The folder also gets the plan (``prune_plan.json``) for
    provenance, and the tokenizer as a serving stack wants it (``clean_tokenizer_config``).
    """
    plan.check_model(model)
    h_k, h_v, gp = export_shape(plan)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose another folder")
    removed = plan.by_layer()
    layouts = prune_heads(model, removed, group=gp)
    assert all((lo.h_k, lo.h_v) == (h_k, h_v) for lo in layouts.values()), layouts
    update_config(model, h_k, h_v)
    if dtype is not None:  # a bf16 checkpoint analysed in fp32 on a CPU is exported in bf16 again
        _cast(model, dtype)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
        clean_tokenizer_config(out)
    plan.save(out / "prune_plan.json")
    lay = implied_layout(plan)
    return {"path": str(out), "dtype": str(next(model.parameters()).dtype).removeprefix("torch."), "h_k": h_k, "h_v": h_v,
            "group": gp, "key_heads_before": lay["key_heads"][0], "key_heads_after": lay["key_heads"][1],
            "key_heads_duplicated": lay["key_heads_duplicated"]}


def write_card(folder: Path, result: dict) -> None:
    """The export's model card (README.md): what was removed and how, on what calibration, at what
    measured cost, and how to load it, from the prune stage's own result (``prune.json``)."""
    from ..runio import atomic_write_text

    acc = result["accuracy"]
    rows = [f"| {t} | {acc['before'][t]['acc']:.3f} | {acc['after'][t]['acc']:.3f} [{acc['after'][t]['lo']:.3f}, "
            f"{acc['after'][t]['hi']:.3f}] | {acc['after'][t]['n']} |" for t in result["tasks"]["names"]]
    saved = result["fraction_saved"]
    cal = result.get("calibration") or {}
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f} %"
    lines = [
        "---", "library_name: transformers", "tags: [staterank, head-pruning, linear-attention]", "---", "",
        f"# {result['model']}, {100 * result['head_fraction_removed']:.1f} % of linear-attention value heads removed", "",
        f"Pruned by staterank: method `{result['method']}` {json.dumps(result['params'])}, ranking "
        f"`{result['ranking']}`, budget {json.dumps(result['budget'])}; {len(result['removed'])} of "
        f"{result['value_heads']} value heads removed (per layer: {result['removed_per_layer']}). The heads are "
        "listed in `prune_plan.json`; calibration: " + (json.dumps({k: cal[k] for k in ("suite", "tokens") if k in cal})
                                                       if cal else "none (a given plan)") + ".", "",
        "Measured by the prune stage (greedy exact match, Wilson 95 % intervals):", "",
        "| task | before | after [95 % CI] | n |", "|---|---|---|---|", *rows, "",
        f"Cache bytes saved at context {result['state_measured_at']['context']}, batch "
        f"{result['state_measured_at']['batch']}: linear state {pct(saved['linear_state'])}, conv state "
        f"{pct(saved['conv_state'])}, attention KV {pct(saved['attention_kv'])}, total {pct(saved['total'])}. "
        f"Checked against the head-masked original: max |Δlogit| {result['check']['max_abs_logit_diff_vs_masked']:.3g} "
        f"(tolerance {result['check']['tolerance']:.3g}).", "",
        "Stock transformers loads it (no custom code):", "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        'model = AutoModelForCausalLM.from_pretrained("PATH/TO/THIS/FOLDER")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")', "```", ""]
    atomic_write_text(folder / "README.md", "\n".join(lines))


def clean_tokenizer_config(folder: Path) -> None:
    """What loading here wrote into tokenizer_config.json that a user of the export must not inherit:
    ``local_files_only`` (it would stop a hub download), and right padding (batched generation
    needs left padding)."""
    from ..runio import read_json, write_json

    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return
    cfg = read_json(path)
    cfg.pop("local_files_only", None)
    cfg["padding_side"] = "left"
    write_json(path, cfg)  # atomic, as every file the run writes


def reload(path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
           device_map: dict | None = None) -> nn.Module:
    """Load an exported folder with stock ``AutoModelForCausalLM`` (safetensors, no remote code);
    ``device_map``: place it as the model it came from was placed (module names survive surgery)."""
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32, use_safetensors=True, use_kernels=False,
                                             **({"device_map": device_map} if device_map else {}))
    if not device_map:
        m.to(device or "cpu")
    return m.eval().requires_grad_(False)


@torch.no_grad()
def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    dev = next(model.parameters()).device
    return model(ids.to(dev), use_cache=False).logits.float().cpu()


@torch.no_grad()
def state_bytes(model: nn.Module, batch: int = 1, context: int = 256, seed: int = 0) -> dict:
    """Bytes held in the cache after one forward of [batch, context] random tokens (the count does
    not depend on the tokens): linear recurrent state, conv state, attention KV, total."""
    vocab = int(model.get_input_embeddings().num_embeddings)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, context), generator=g)
    dev = next(model.parameters()).device
    cache = output_cache(model(ids.to(dev), use_cache=True, logits_to_keep=1))  # [T, vocab] logits not needed
    out = {"linear_state": 0, "conv_state": 0, "attention_kv": 0}

    def nbytes(t):
        return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0

    for layer in cache.layers:
        if hasattr(layer, "recurrent_states"):
            out["linear_state"] += sum(nbytes(t) for t in layer.recurrent_states.values())
            out["conv_state"] += sum(nbytes(t) for t in layer.conv_states.values())
        else:
            out["attention_kv"] += nbytes(getattr(layer, "keys", None)) + nbytes(getattr(layer, "values", None))
    out["total"] = sum(out.values())
    return {**out, "batch": batch, "context": context}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def decode_rate(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> float:
    """Tokens/s of greedy decoding alone: ``ids`` [B, T] go through the cache first (untimed), then
    ``new_tokens`` one-token steps through it are timed: B·new_tokens / seconds."""
    kw = cache_kwarg(model)
    out = model(ids, use_cache=True, logits_to_keep=1)
    cache, nxt = output_cache(out), out.logits[:, -1:].argmax(-1)
    _sync(ids.device)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        out = model(nxt, **{kw: cache}, use_cache=True)
        cache, nxt = output_cache(out), out.logits[:, -1:].argmax(-1)
    _sync(ids.device)
    return ids.shape[0] * new_tokens / (time.perf_counter() - t0)


@torch.no_grad()
def decode_speed(model: nn.Module, prompt: int = 32, new_tokens: int = 32, batch: int = 1, seed: int = 0,
                 repeats: int = 3) -> dict:
    """Greedy decode throughput (``decode_rate``: the prompt's prefill untimed) of ``new_tokens``
    tokens after a ``prompt``-token random prompt, ``repeats`` times after a warm-up. Returns
    {"tokens_per_s" (median), "repeats" (each run's tokens/s), "new_tokens", "batch", "prompt"}."""
    vocab = int(model.get_input_embeddings().num_embeddings)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, prompt), generator=g).to(next(model.parameters()).device)
    decode_rate(model, ids, 1)  # warm-up
    rates = [decode_rate(model, ids, new_tokens) for _ in range(repeats)]
    return {"tokens_per_s": float(np.median(rates)), "repeats": rates, "new_tokens": new_tokens, "batch": batch,
            "prompt": prompt}
