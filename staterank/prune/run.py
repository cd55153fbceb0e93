"""The prune stage: calibrate → score → plan → controls → surgery/export → checks → prune.json.

    result = run_prune(load_model("builtin"), PruneConfig(method="jrnp", alpha=0.5, fraction=0.389,
                       ranking="per_layer"), out="runs/pr1")

Run folder (never overwritten; rerunning the same command resumes and skips finished pieces):
  config.json            every setting (runio.new_run_dir)
  calibration/           the analyze run of the calibration contexts (dynamics.npz, heads.csv)
  plan.json              the tested plan (see plan.py)
  baselines/*.json       the control plans, matched to the plan's removals: count-matched random
                         (as many heads, any layer), layer-matched random (as many per layer),
                         byte-matched random (as many recurrent-state bytes, any layer), each for
                         ``random_seeds`` seeds
  evals/*.json           per model variant and task: per-item rows and accuracy with Wilson 95 % CI
  before.json            state bytes, decode speed of the original; masked_logits.npz: the reference
  model/                 the pruned checkpoint (stock transformers loads it), with prune_plan.json
  prune.json             the summary (schema below); its presence marks the run done

Accuracies: ``before`` is the original model, ``masked`` the original with the plan's heads
zero-ablated, ``after`` the pruned model as reloaded from ``model/`` (or pruned in memory with
``export=False``); controls are evaluated zero-ablated (exactly equal to removing the heads, which
``check`` verifies for the tested plan). State bytes are measured from a real forward's cache at
``state_context`` tokens × ``state_batch`` sequences.

Sweep (:func:`run_sweep`): α × fraction with per-layer or global ranking, every point evaluated
zero-ablated; the linear recurrent state after pruning is measured once on the original and scaled
by kept/total heads, which the surgery tests show is exact (state is [B, H_v, K, V]).

Under torchrun the calibration texts and every evaluation's batches are shared out over the ranks
(``analyze``, ``evaluate.accuracy``); rank 0 alone writes the folder, measures state bytes and decode
speed and exports (the other ranks reload its export to evaluate their share).

Modules: config.py (PruneConfig, SweepConfig), calibrate.py (per-head statistics), evaluate.py
(task items, cached accuracies), controls.py (random controls); this module alone owns the run
folder and re-exports their public names.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .. import distributed, runio
from ..errors import UserError, VerificationFailed
from ..models import Loaded, weights_fingerprint
from ..progress import say
from ..tasks import items_digest
from .calibrate import calibrate, calibration_contexts
from .config import PruneConfig, SweepConfig
from .controls import _summ, control_notes, control_plans
from .evaluate import _plan_key, accuracy, task_items
from .export import decode_speed, export, export_shape, implied_layout, logits, masked, reload, state_bytes, write_card
from .plan import Plan, make_plan
from .scores import Budget, get_method, select
from .surgery import prune_heads

# The pieces live in their own modules (config, calibrate, evaluate, controls) and are re-exported
# here, where callers and tests import them. prune_heads is looked up in this module at call time:
# tests patch staterank.prune.run.prune_heads to plant a surgery bug.
__all__ = ["CheckFailed", "PruneConfig", "SweepConfig", "run_prune", "run_sweep", "calibrate",
           "calibration_contexts", "task_items", "accuracy", "control_plans", "control_notes", "prune_heads"]


class CheckFailed(VerificationFailed):
    """The pruned model does not reproduce the masked model (a surgery bug): results are kept."""


def _model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def gva_group(layers) -> int:
    """G, value heads per key head, shared by every linear layer (1 if the layers differ: the
    key_groups ranking then removes single heads, i.e. it is per_layer)."""
    groups = {l.layout.group for l in layers}
    return groups.pop() if len(groups) == 1 else 1


# ---- the stage ------------------------------------------------------------------------------------
def run_prune(loaded: Loaded, cfg: PruneConfig, out: str | Path) -> dict:
    """Run (or resume) the prune stage into ``out``; returns prune.json's content. The loaded model
    is pruned in place: do not reuse ``loaded`` afterwards."""
    cfg.validate()
    model, tok = loaded.model, loaded.tokenizer
    layers = loaded.adapter.linear_layers(model)
    group = gva_group(layers)
    if not cfg.plan_file:  # a budget the model cannot meet fails now, before a run folder or calibration
        select(np.zeros((len(layers), max(l.layout.h_v for l in layers))), cfg.budget(), cfg.ranking,
               [l.index for l in layers], [l.layout.k * l.layout.v * 4 for l in layers], group)
    # every input that can be wrong is read before the run folder exists
    ctx = calibration_contexts(loaded, cfg)
    given = None
    if cfg.plan_file:
        given = Plan.load(cfg.plan_file)
        given.check_model(model)
    items = task_items(cfg.tasks, cfg.eval_n, cfg.eval_seed, tok)
    # under torchrun rank 0 alone makes the folder and writes its files; analyze and accuracy shard their work
    run_dir = distributed.on_main(lambda: runio.new_run_dir(
        out, {"stage": "prune", "model": loaded.spec, **asdict(cfg), "items": items_digest(items)},
        weights=weights_fingerprint(model)))
    if (run_dir / "prune.json").exists():
        done = runio.read_json(run_dir / "prune.json")
        if not done["check"]["passed"]:
            raise CheckFailed(f"this run's check failed earlier (see {run_dir}/prune.json)")
        return done

    # 1. plan
    say("prune: calibrating")
    stats, head_bytes, calib = calibrate(loaded, cfg, run_dir / "calibration", ctx=ctx)
    if given is not None:  # apply a given plan; calibration still feeds the controls' scores
        plan = given
    else:
        scorer = get_method(cfg.method, alpha=cfg.alpha, seed=cfg.seed)
        plan = make_plan(model, scorer.select(stats, cfg.budget(), cfg.ranking, head_bytes, group), model_id=loaded.spec,
                         method=cfg.method, params=scorer.params(), ranking=cfg.ranking,
                         budget=cfg.budget().to_dict(), scores=scorer.score(stats), calibration=calib)
    distributed.on_main(lambda: None if (run_dir / "plan.json").exists() else plan.save(run_dir / "plan.json"))
    # Stock transformers loads only equal head counts in every layer: a plan it cannot describe (the
    # paper's global top-k usually) is pruned in memory and checked there, and prune.json says why.
    not_exported = None
    if cfg.export:
        try:
            export_shape(plan)
        except UserError:
            not_exported = (f"the plan keeps {plan.kept_h_v()} value heads per layer and stock transformers "
                            "loads only equal counts; pruned in memory instead (--ranking per_layer exports)")
    do_export = cfg.export and not_exported is None
    controls = control_plans(loaded, stats, head_bytes, plan, cfg)

    def save_controls():
        for kind, plans in controls.items():
            for i, p in enumerate(plans):
                if not (run_dir / "baselines" / f"{kind}_{i}.json").exists():
                    p.save(run_dir / "baselines" / f"{kind}_{i}.json")

    distributed.on_main(save_controls)

    # 2. everything that needs the original model (cached: a resumed run after surgery reads it back)
    ev = run_dir / "evals"
    model_dir = run_dir / "model"
    say("prune: evaluating the original, the masked model and the controls")
    acc_before = accuracy(model, tok, items, ev / "before.json", cfg)
    acc_masked = accuracy(model, tok, items, ev / f"masked_{_plan_key(plan)}.json", cfg, plan)
    acc_controls = {kind: [accuracy(model, tok, items, ev / f"masked_{_plan_key(p)}.json", cfg, p) for p in plans]
                    for kind, plans in controls.items()}

    def measure_before():  # rank 0 only: decode speed is a timing, the others would disturb it
        if (run_dir / "before.json").exists():
            return
        g = torch.Generator().manual_seed(cfg.seed)
        vocab = int(model.get_input_embeddings().num_embeddings)
        ids = torch.randint(0, vocab, (2, 64), generator=g)
        with masked(model, plan):
            ref = logits(model, ids)
        runio.write_npz(run_dir / "masked_logits.npz", ids=ids.numpy(), logits=ref.cpu().numpy())
        runio.write_json(run_dir / "before.json", {
            "state_bytes": state_bytes(model, cfg.state_batch, cfg.state_context, cfg.seed),
            "decode": decode_speed(model, new_tokens=cfg.decode_tokens, seed=cfg.seed),
            "parameters": sum(p.numel() for p in model.parameters())})

    distributed.on_main(measure_before)
    before = runio.read_json(run_dir / "before.json")

    # 3. surgery (+ export), then everything on the pruned model
    say("prune: surgery")
    dtype, device, device_map = _model_dtype(model), loaded.device, loaded.device_map
    # the export is written in the checkpoint's dtype (or the one asked for), not the compute dtype
    ckpt = (loaded.config or {}).get("checkpoint_dtype")
    src_dtype = getattr(torch, ckpt) if ckpt else dtype
    out_dtype = getattr(torch, cfg.export_dtype) if cfg.export_dtype else src_dtype
    export_info = None
    if do_export:

        def export_once():
            if not (run_dir / "export.json").exists():
                if model_dir.exists():  # an export that died half-way: redo it
                    import shutil

                    shutil.rmtree(model_dir)
                runio.write_json(run_dir / "export.json", export(model, plan, model_dir, tok, dtype=out_dtype))

        distributed.on_main(export_once)  # every rank then reloads what rank 0 wrote
        export_info = runio.read_json(run_dir / "export.json")
        loaded.model = model = None  # free the in-place pruned copy; measure what users will load
        pruned = reload(model_dir, dtype=dtype, device=device, device_map=device_map)
    else:
        prune_heads(model, plan.by_layer())
        pruned = model
    z = runio.read_npz(run_dir / "masked_logits.npz")
    diff = float((logits(pruned, torch.from_numpy(z["ids"])) - torch.from_numpy(z["logits"])).abs().max())
    # The masked and the pruned model round differently (other shapes, other reduction orders), so the
    # tolerance is relative to the logit scale: fp32 measured 1.4e-4 on logits up to 22 (builtin model);
    # half precision is looser (untested on GPU). A surgery bug is O(1).
    scale = float(np.abs(z["logits"]).max())
    # 16-bit compute, or an export that rounds the weights to 16 bits (a bf16 checkpoint computed in
    # fp32 and written back in bf16 is exact: its weights were bf16 to begin with)
    half = dtype != torch.float32 or (do_export and out_dtype not in (torch.float32, src_dtype))
    tol = max(cfg.check_tol, (1e-2 if half else 3e-5) * scale)
    check = {"max_abs_logit_diff_vs_masked": diff, "tolerance": tol, "passed": diff <= tol,
             "reloaded_with": "AutoModelForCausalLM.from_pretrained" if do_export else "in-memory surgery",
             "ids_shape": list(z["ids"].shape)}
    say("prune: evaluating the pruned model")
    acc_after = accuracy(pruned, tok, items, ev / ("after_export.json" if do_export else "after_memory.json"), cfg)
    result = distributed.on_main(lambda: _summary(loaded, cfg, plan, before, pruned, dtype, acc_before, acc_masked,
                                                  acc_controls, acc_after, export_info, not_exported, check, head_bytes,
                                                  run_dir, model_dir, do_export))
    if not check["passed"]:
        if not distributed.world().main:  # rank 0 reports it
            raise distributed.RankFailed(f"the pruned model failed its check (see {run_dir}/prune.json)")
        raise CheckFailed(f"pruned model differs from the masked model by {diff:.3g} > {tol:g} (see {run_dir}/prune.json)")
    return result


def _summary(loaded, cfg, plan, before, pruned, dtype, acc_before, acc_masked, acc_controls, acc_after, export_info,
             not_exported, check, head_bytes, run_dir, model_dir, do_export) -> dict:
    """prune.json (and the model card) from the measurements; state bytes and decode speed of the pruned model."""
    sb_after = state_bytes(pruned, cfg.state_batch, cfg.state_context, cfg.seed)
    dec_after = decode_speed(pruned, new_tokens=cfg.decode_tokens, seed=cfg.seed)
    sb_before = before["state_bytes"]

    def saved(key):
        return 1 - sb_after[key] / sb_before[key] if sb_before[key] else None

    result = {
        "model": loaded.spec, "method": plan.method, "params": plan.params, "ranking": plan.ranking,
        "budget": plan.budget, "removed": [list(p) for p in plan.removed], "removed_per_layer": plan.counts(),
        "value_heads": sum(plan.h_v), "head_fraction_removed": plan.fraction,
        "state_bytes_before": sb_before, "state_bytes_after": sb_after,
        "fraction_saved": {k: saved(k) for k in ("linear_state", "conv_state", "attention_kv", "total")},
        "state_measured_at": {"context": cfg.state_context, "batch": cfg.state_batch, "dtype": str(dtype)},
        "decode": {"before": before["decode"], "after": dec_after},
        "parameters": {"before": before["parameters"], "after": sum(p.numel() for p in pruned.parameters())},
        "accuracy": {"before": acc_before, "masked": acc_masked, "after": acc_after,
                     "controls": {k: {"per_seed": v, "summary": _summ(v)} for k, v in acc_controls.items()}},
        "tasks": {"names": list(cfg.tasks), "n": cfg.eval_n, "seed": cfg.eval_seed},
        "calibration": plan.calibration, "export": export_info, "not_exported": not_exported, "check": check,
        "layout": implied_layout(plan),
        "control_notes": control_notes(head_bytes, plan),
    }
    runio.write_json(run_dir / "prune.json", result)
    if do_export:
        write_card(model_dir, result)
    return result


# ---- sweep ----------------------------------------------------------------------------------------
def run_sweep(loaded: Loaded, sc: SweepConfig, out: str | Path) -> dict:
    """α × fraction grid, zero-ablated, with count-matched random controls at every fraction.

    Writes sweep.json: {"points": [{method, alpha, fraction, seed, removed, linear_state_bytes,
    accuracy}], "state_bytes_before", ...}; finished points are cached in evals/ and skipped."""
    cfg = sc.base
    sc.validate()
    model, tok = loaded.model, loaded.tokenizer
    items = task_items(cfg.tasks, cfg.eval_n, cfg.eval_seed, tok)
    run_dir = distributed.on_main(lambda: runio.new_run_dir(
        out, {"stage": "prune_sweep", "model": loaded.spec, **asdict(sc), "items": items_digest(items)},
        weights=weights_fingerprint(loaded.model)))
    if (run_dir / "sweep.json").exists():
        return runio.read_json(run_dir / "sweep.json")
    stats, head_bytes, calib = calibrate(loaded, cfg, run_dir / "calibration")
    sb = state_bytes(model, cfg.state_batch, cfg.state_context, cfg.seed)
    specs = [("jrnp", {"alpha": a}, f) for a in sc.alphas for f in sc.fractions]
    specs += [(m, {"alpha": cfg.alpha}, f) for m in sc.methods_extra for f in sc.fractions]
    specs += [("random", {"seed": 1000 + s}, f) for s in range(cfg.random_seeds) for f in sc.fractions]
    points = []
    base_acc = accuracy(model, tok, items, run_dir / "evals" / "before.json", cfg)
    for method, params, f in specs:
        scorer = get_method(method, **params)
        plan = make_plan(model, scorer.select(stats, Budget("fraction", f), cfg.ranking, head_bytes,
                                              gva_group(loaded.adapter.linear_layers(model))), model_id=loaded.spec,
                         method=method, params=scorer.params(), ranking=cfg.ranking,
                         budget={"kind": "fraction", "value": f}, scores=scorer.score(stats), calibration=calib)
        say(f"sweep: {method} {params} fraction {f}")
        acc = accuracy(model, tok, items, run_dir / "evals" / f"masked_{_plan_key(plan)}.json", cfg, plan)
        total_bytes = sum(lo[2] * lo[3] * 4 * lo[1] for lo in plan.facts["layouts"])  # K·V·4 × H_v per layer
        kept = 1 - plan.removed_state_bytes() / total_bytes
        points.append({"method": method, **params, "fraction": f, "removed": [list(p) for p in plan.removed],
                       "head_fraction_removed": plan.fraction,
                       "linear_state_bytes": int(round(sb["linear_state"] * kept)), "accuracy": acc})
    result = {"model": loaded.spec, "ranking": cfg.ranking, "state_bytes_before": sb, "accuracy_before": base_acc,
              "tasks": {"names": list(cfg.tasks), "n": cfg.eval_n, "seed": cfg.eval_seed},
              "calibration": calib, "points": points,
              "note": "zero-ablated evaluation; linear_state_bytes = measured original × the share of K·V state "
                      "bytes the plan keeps (each layer's heads weighted by their own K·V)"}
    distributed.on_main(lambda: runio.write_json(run_dir / "sweep.json", result))
    return result
