"""Write the model card (README.md) of a trained folder from its measured files only.

    python -m staterank.builtin.card --model DIR

Reads DIR/training_state.json, DIR/train_log.jsonl and DIR/eval_results.json (written by
``python -m staterank.builtin.evaluate --out``); every number in the card comes from those files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..runio import atomic_write_text
from .evaluate import fmt_acc, to_markdown

TEMPLATE = """---
license: mit
library_name: transformers
pipeline_tag: text-generation
tags: [gated-deltanet, linear-attention, qwen3_next, staterank]
---

# staterank built-in model: a {params_m:.2f}M-parameter hybrid Gated-DeltaNet LM

A tiny `Qwen3NextForCausalLM` trained from scratch on CPU so that staterank has a real, trained
linear-attention model to analyse (state ranks, ablations, pruning) without downloads. It is a toy:
it has learned NIAH retrieval and MQAR recall (well above a copy-a-value guess), some addition and
some prose statistics; multihop stays at the level of copying a root digit — nothing more.

Load with stock transformers (or `staterank.builtin.load_builtin()`):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(folder)        # adds <|bos|> itself
model = AutoModelForCausalLM.from_pretrained(folder)
```

## Architecture

| | |
|---|---|
| class | `Qwen3NextForCausalLM` (`model_type: qwen3_next`), dense MLP (`num_experts: 0`) |
| layers | {layers}: {layer_types} (3:1 Gated DeltaNet : softmax attention) |
| hidden / MLP | {hidden} / {intermediate} |
| Gated DeltaNet | H_k = {hk} key heads, H_v = {hv} value heads (GVA ratio {gva}), K = {K}, V = {V}, conv kernel {conv} |
| attention | {n_heads} query heads, {n_kv} KV heads, head dim {head_dim}, partial RoPE |
| vocabulary | {vocab} (byte-level BPE, one token per digit), tied embeddings |
| parameters | {params:,} (fp32 weights, {size_mb:.1f} MB) |

**Gate initialisation.** transformers' default init (A ~ U(0.01, 16), dt_bias = 1) makes most
heads forget their whole state at every token; a throw-away experiment here learned no recall with
it. Every Gated DeltaNet layer was therefore re-initialised FLA/Mamba-style before training:
A ~ U(1, 16) (A_log = log A), dt ~ logUniform(1e-3, 1e-1), dt_bias = dt + log(-expm1(-dt))
(inverse softplus) — see `fla_gate_init` in `staterank/builtin/train.py`.

## Training

{training_intro}

{stages}

- Totals: {tokens:,} tokens, {minutes:.1f} minutes of training, {steps_total} optimizer steps.
- AdamW (betas 0.9/0.95, weight decay 0.01 on matrices), linear warm-up then cosine to 10 % of the
  peak LR, gradient clipping 1.0; {loss_text}
- {curriculum}
  Schedule progress is max(step / steps, elapsed / minutes): when the machine keeps up, a run is
  deterministic from its seed; when the time budget takes over (a slow or busy machine), curriculum
  and LR follow the clock, so reruns match only approximately.
- Each training row packs documents (`<|bos|> text <|eos|>`) drawn with the mixture weights above:
{doc_kinds}
- Task items used seeds < 10^6; every evaluation below uses seeds >= 10^9. Prose: the first 90 % of
  each file is training text, the last 10 % is held out (evaluation haystacks, perplexity).
  Addition: a fixed tenth of all problems (a hash of the unordered pair, independent of the answer) was excluded from training and is
  the only set evaluated.
- Tokenizer: byte-level BPE trained with `tokenizers` at the start of the (first) run on the training prose, GSM8K train
  and task text; digits split one per token; `<|bos|>` (prepended by the tokenizer), `<|eos|>`,
  `<|pad|>`.

Final training loss (EMA over steps): {final_ema}. Teacher-forced answer accuracy during {tf_scope}
(16 eval-seed items per task, 32 at the last step; NIAH at 256 tokens; all answer tokens must be the argmax):

{tf_table}

## Measured results

`python -m staterank.builtin.evaluate --model DIR --n {n}` ({eval_minutes:.1f} minutes on 1
thread). Greedy decoding; the prediction is the continuation's first line, stripped (its leading
integer when it starts with one), and must equal the answer exactly. Accuracy with Wilson 95 %
intervals; chance = the best guess that needs no skill: the commonest of the prompt's candidate
values copied for MQAR (the 5 pairs not already queried) and multihop (the 3 chains' root digits),
which beats copying one at random; always the commonest held-out sum for addition; a uniform guess
for NIAH.
Default task parameters: NIAH 256 tokens at depth 0.5; MQAR 8 pairs, 4 queries (3
answered in the prompt, the last scored); multihop 2 hops with 2 distractor chains; addition of two
2-digit numbers.

{results}

{notes_text}Targets of issue #3, checked from the numbers above: {targets}

Perplexity: first {ppl_tokens} tokens of each file's held-out 10 %, non-overlapping windows of
{ppl_window} tokens each starting fresh from `<|bos|>`.

Raw numbers: `eval_results.json`; {logs_text}; `training_state.json` holds each stage's arguments (the
architecture flags of an `--init-from` stage are unused defaults: it continues the stage before).

{reproduction_section}{ranks_section}## Data and licences

- Jane Austen's six novels and the King James Bible: public domain (texts from the Debian packages
  `r-cran-janeaustenr` and `bible-kjv-text`).
- GSM8K train split (github.com/openai/grade-school-math): MIT.
- Synthetic tasks: generated by `staterank.tasks`.

The weights are released under the project's MIT licence.

## Limitations

A {params_m:.2f}M-parameter model trained for about an hour: its prose is poor, it knows no facts, and
NIAH beyond the longest training length ({max_T} tokens) is extrapolation. Use it to exercise the
analysis machinery, not to draw conclusions about large models.
"""


DOC_KINDS = {
    "niah": "NIAH needles (\"The special magic number is NNNN.\") in training prose, haystack length and "
            "needle depth random, question last",
    "mqar": "MQAR: 2-16 key=value pairs, then queries, every query answered in the text",
    "multihop": "variable-binding chains (1-3 hops, 0-3 distractor chains)",
    "arith": "addition of 1- or 2-digit numbers",
    "copy": "copy drill: 4-32 distinct single-token words, then the same words again (an induction "
            "drill with a dense signal)",
    "prose": "plain prose spans from the training split",
    "gsm8k": "GSM8K train question + answer text",
}


# always written out, so a command stays exact even if a default changes later
_EXPLICIT = ("seed", "steps", "minutes", "threads", "lr", "tokens_per_step")
# bookkeeping flags that do not change the trained weights
_NOT_RECIPE = {"out", "init_from", "vocab", "evaluate", "eval_every", "ckpt_minutes"}


def _flag(dest: str, value) -> str:
    return f"--{dest.replace('_', '-')} " + (f"{value:g}" if isinstance(value, float) else str(value))


def _stage_line(i: int, st: dict, note: str, single: bool) -> str:
    from .train import build_parser

    a = st["args"]
    defaults = {act.dest: act.default for act in build_parser()._actions}
    out = "DIR" if single else f"STAGE{i}"
    cmd = f"python -m staterank.builtin.train --out {out} " + " ".join(_flag(k, a[k]) for k in _EXPLICIT)
    # a continued stage inherits its tokenizer; only a fresh run chooses the vocabulary
    cmd += f" --init-from STAGE{i - 1}" if a.get("init_from") else f" {_flag('vocab', a['vocab'])}"
    for k, v in a.items():
        if k in defaults and k not in _EXPLICIT and k not in _NOT_RECIPE and v != defaults[k]:
            cmd += f" {_flag(k, v)}"
    mix = st.get("mix") or {}
    prefix = "" if single else f"{i}. "
    return (f"{prefix}`{cmd}`\n   seed {a['seed']}; {st['step']} steps; {st['tokens']:,} tokens; "
            f"{st['train_seconds'] / 60:.1f} min; mixture (document weights) "
            + (", ".join(f"{k} {v:g}" for k, v in mix.items()) or "default")
            + (f" (before {a['early_until']:.0%} of the schedule: {a['early_mix']}"
               + (f", loss {a['early_loss']}" if a.get("early_loss") else "") + ")" if a.get("early_mix") else "")
            + f". {note}")


def _reproduction_section(r: dict) -> str:
    """From ``reproduction.json`` (``python -m staterank.builtin.compare --out``)."""
    rows = "\n".join(f"| {x['name']} | {fmt_acc(x['ref'])} | {fmt_acc(x['new'])} | {x['p_fisher']:.3g}"
                     f"{' **differs**' if x['differs'] else ''} | {'yes' if x['new_in_ref_ci'] else 'no'} |"
                     for x in r["rows"])
    stages = r.get("new_training", {}).get("stages", [])
    how = ("; ".join(f"stage {i + 1}: {s['step']} of {s['steps_planned']} steps, {s['minutes']} min"
                     for i, s in enumerate(stages)) + "; ") if stages else ""
    b = r.get("bits_per_char") or {}
    bpc = (f"Bits per character: {b['reference']:.3f} here, {b['new']:.3f} in the rerun.\n\n"
           if b.get("new") is not None and b.get("reference") is not None else "")
    verdict = ("Reproduced: no accuracy differs significantly between the two runs (Fisher's exact test, "
               "two-sided, p >= 0.05 on every row)." if r["reproduces"] else
               "Not reproduced: the rows marked **differs** differ significantly between the two runs (Fisher's "
               "exact test, two-sided, p < 0.05).")
    verdict += (" A rerun's accuracy can fall just outside this model's CI by chance: both numbers carry "
                "sampling noise, which the CI of one run does not account for.")
    return (f"## Reproduction\n\nA second, independent run of `make builtin-model` (same seeds, same kind of "
            f"machine; {how}on a shared machine the time budget, not the step count, ends each stage, so reruns "
            f"differ slightly), compared by `python -m staterank.builtin.compare` (`reproduction.json`):\n\n"
            f"| | this model | rerun | Fisher p | rerun inside this CI |\n|---|---|---|---|---|\n{rows}\n\n{bpc}{verdict}\n\n")


def _ranks_section(r: dict) -> str:
    """Card text for ranks.json (``evaluate --ranks``): the trained model next to its own initialisation."""
    bc = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731

    def verdict(x):
        if x is None:
            return "undefined"
        return "above 5/9, i.e. bimodal-looking" if x > 5 / 9 else "below 5/9, i.e. not bimodal"

    rows = "\n".join(
        f"| {a['layer']} | {a['bound']:g} | {a['min']:.1f} / {a['median']:.1f} / {a['max']:.1f} | "
        f"{b['min']:.1f} / {b['median']:.1f} / {b['max']:.1f} |"
        for a, b in zip(r["trained"]["per_layer"], r["init"]["per_layer"]))
    t, i = r["trained"], r["init"]
    return f"""## State ranks (what `staterank analyze --model builtin` shows)

Threshold rank (ε = {r['eps']:g}) of every Gated DeltaNet value head, averaged over the first {r['tokens']}
tokens of held-out {' and '.join(r['texts'])}; the control is the same architecture at initialisation
(fresh weights, same gate initialisation). Measured by
`python -m staterank.builtin.evaluate --model DIR --ranks ranks.json`.

| layer | bound d | trained: mean rank min / median / max over heads | at initialisation |
|---|---|---|---|
{rows}

Share of heads whose mean rank is below d/4: trained {t['share_below_quarter']:.0%}, at initialisation
{i['share_below_quarter']:.0%}; above 3d/4: trained {t['share_above_three_quarters']:.0%}, at initialisation
{i['share_above_three_quarters']:.0%}. Sarle's bimodality coefficient of rank/d over all heads: trained
{bc(t['bimodality_coefficient'])} ({verdict(t['bimodality_coefficient'])}), at initialisation
{bc(i['bimodality_coefficient'])} ({verdict(i['bimodality_coefficient'])}). A split at initialisation comes from
the gates alone (each head's decay sets how much it can hold), so only differences from the control
say something about training.

"""


def write_card(folder: Path) -> str:
    cfg = json.loads((folder / "config.json").read_text())
    st = json.loads((folder / "training_state.json").read_text())
    res = json.loads((folder / "eval_results.json").read_text())
    log = [json.loads(l) for l in (folder / "train_log.jsonl").read_text().splitlines() if l.strip()]
    from .train import PHASES

    a = st["args"]
    tf = [r for r in log if "tf_acc" in r]
    tf_table = "| step | " + " | ".join(tf[0]["tf_acc"]) + " |\n|---" * 1 + "|---" * len(tf[0]["tf_acc"]) + "|\n"
    tf_table += "\n".join(f"| {r['step']} | " + " | ".join(f"{v:.2f}" for v in r["tf_acc"].values()) + " |" for r in tf)
    ema = [r["ema"] for r in log if "ema" in r]
    stages = [st]
    while stages[0].get("previous"):
        stages.insert(0, stages[0]["previous"])
    notes = json.loads((folder / "stage_notes.json").read_text()) if (folder / "stage_notes.json").is_file() else {}
    single = len(stages) == 1
    stage_text = "\n".join(_stage_line(i + 1, s_, notes.get(str(i + 1), ""), single) for i, s_ in enumerate(stages))
    if single:
        intro = ("One command, from scratch (it trains the tokenizer, builds the model and applies the gate "
                 "initialisation), on a shared 2-core CPU:")
    else:
        intro = (f"Training ran in {len(stages)} stages on a shared 2-core CPU; `--init-from STAGEn` means the "
                 "previous stage's last checkpoint (`ckpt/` of a stopped stage, `final/` of a finished one):")
    # the Makefile target is the one documented retraining command
    intro += ("\n\n`make builtin-model` runs the repository's current recipe from a clean checkout (the `Makefile` "
              "holds its commands) and writes a new folder with its own evaluation and card.")
    kinds = [k for s_ in stages for k, w in (s_.get("mix") or {}).items() if w > 0]
    doc_kinds = "\n".join(f"  - {DOC_KINDS[k]}" for k in dict.fromkeys(kinds) if k in DOC_KINDS)
    losses = {s_["args"].get("loss", "all") for s_ in stages} | {s_["args"]["early_loss"] for s_ in stages
                                                               if s_["args"].get("early_loss")}
    loss_text = ("next-token loss on every token." if losses == {"all"} else
                 "next-token loss as each command's `--loss` / `--early-loss` says: `all` = every token; "
                 "`answers` = only task answers, their EOS and the values MQAR recalls in its query section; "
                 "`answers+prose` = those plus every token of prose and GSM8K documents (task prompts such as "
                 "NIAH haystacks carry no loss).")
    logs_text = ("training log: `train_log.jsonl`" if single else "training logs: `train_log.jsonl` (last stage) and "
                 "`train_log_stage*.jsonl` (earlier stages)"
                 + ("; stage notes: `stage_notes.json`" if (folder / "stage_notes.json").is_file() else ""))
    cpt = res.get("chars_per_token")
    notes_text = (f"Lengths are in tokens of this model's tokenizer: held-out prose averages {cpt:.2f} characters "
                f"per token, so a 256-token haystack is about {256 * cpt:.0f} characters of text.\n\n" if cpt else "")
    caps = {s_["args"].get("max_len") or 0 for s_ in stages}
    cap = max(caps) if 0 not in caps else 0
    phases = [(end, min(T, cap) if cap else T) for end, T in PHASES]
    merged = []
    for end, T in phases:
        if merged and merged[-1][1] == T:
            merged[-1] = (end, T)
        else:
            merged.append((end, T))
    curriculum = (f"{a['tokens_per_step']} tokens per step; sequence-length curriculum: "
                  + ", ".join(f"{T} tokens until {int(end * 100)} % of the schedule" for end, T in merged)
                  + (" (capped by `--max-len` where a stage gives it)." if len(caps) > 1 else "."))
    checks = []
    for name, c in res["tasks"].items():
        verdict = "beats chance (CI lower bound above chance)" if c["lo"] > c["chance"] else "does NOT clearly beat chance"
        checks.append(f"{name} {verdict}")
    shortest = min(res["niah_by_length"], key=int)
    nc = res["niah_by_length"][shortest]
    checks.append(f"NIAH at the shortest length ({shortest} tokens) {nc['acc']:.2f} "
                  + ("meets" if nc["acc"] >= 0.8 else "does NOT meet") + " the >= 0.80 target")
    ranks = folder / "ranks.json"
    ranks_section = _ranks_section(json.loads(ranks.read_text())) if ranks.is_file() else ""
    repro = folder / "reproduction.json"
    reproduction_section = _reproduction_section(json.loads(repro.read_text())) if repro.is_file() else ""
    tr = res.get("arith_training_split")
    if tr:
        notes_text += (f"Addition on training-split problems (which the model may have seen; a diagnostic, not a "
                       f"held-out score): {tr['acc']:.3f} [{tr['lo']:.3f}, {tr['hi']:.3f}] (n={tr['n']}).\n\n")
    text = TEMPLATE.format(
        ranks_section=ranks_section, reproduction_section=reproduction_section, notes_text=notes_text,
        targets="; ".join(checks) + ".",
        params_m=st["params"] / 1e6, params=st["params"], size_mb=(folder / "model.safetensors").stat().st_size / 2**20,
        layers=cfg["num_hidden_layers"], layer_types=", ".join(cfg["layer_types"]), hidden=cfg["hidden_size"],
        intermediate=cfg["intermediate_size"], hk=cfg["linear_num_key_heads"], hv=cfg["linear_num_value_heads"],
        gva=cfg["linear_num_value_heads"] // cfg["linear_num_key_heads"], K=cfg["linear_key_head_dim"],
        V=cfg["linear_value_head_dim"], conv=cfg["linear_conv_kernel_dim"], n_heads=cfg["num_attention_heads"],
        n_kv=cfg["num_key_value_heads"], head_dim=cfg["head_dim"], vocab=cfg["vocab_size"], stages=stage_text, training_intro=intro, doc_kinds=doc_kinds,
        loss_text=loss_text, curriculum=curriculum, logs_text=logs_text,
        tf_scope="training" if single else "the last stage", steps_total=sum(x["step"] for x in stages),
        tokens=sum(x["tokens"] for x in stages), minutes=sum(x["train_seconds"] for x in stages) / 60,
        final_ema=f"{ema[-1]:.3f}" if ema else "n/a",
        tf_table=tf_table, n=res["args"]["n"], eval_minutes=res["seconds"] / 60, results=to_markdown(res),
        ppl_tokens=res["perplexity_setup"]["max_tokens_per_file"], ppl_window=res["perplexity_setup"]["window"],
        max_T=max(T for _, T in merged),
    )
    atomic_write_text(folder / "README.md", text)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="trained HF folder with training_state.json, "
                    "train_log.jsonl and eval_results.json")
    args = ap.parse_args(argv)
    print(write_card(Path(args.model)))


if __name__ == "__main__":
    main()
