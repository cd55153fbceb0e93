"""Write the model card (README.md) of a trained folder from its measured files only.

    python -m staterank.builtin.card --model DIR

Reads DIR/training_state.json, DIR/train_log.jsonl and DIR/eval_results.json (written by
``python -m staterank.builtin.evaluate --out``); every number in the card comes from those files.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .evaluate import to_markdown

TEMPLATE = """---
license: mit
library_name: transformers
pipeline_tag: text-generation
tags: [gated-deltanet, linear-attention, qwen3_next, staterank]
---

# staterank built-in model: a {params_m:.2f}M-parameter hybrid Gated-DeltaNet LM

A tiny `Qwen3NextForCausalLM` trained from scratch on CPU so that staterank has a real, trained
linear-attention model to analyse (state ranks, ablations, pruning) without downloads. It is a toy:
it has learned the built-in in-context tasks and some prose statistics, nothing more.

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

Training ran in {n_stages} stage(s) on a shared 2-core CPU:

{stages}

- `--init-from STAGEn` means the previous stage's last checkpoint (`ckpt/` of a stopped stage, `final/` of a finished one).
- Totals: {tokens:,} tokens, {minutes:.1f} minutes of training, {steps_total} optimizer steps.
- AdamW (betas 0.9/0.95, weight decay 0.01 on matrices), linear warm-up then cosine to 10 % of the
  peak LR, gradient clipping 1.0; next-token loss on every token unless a stage says `--loss answers`
  (then only on task answers, their EOS, and the values MQAR recalls in its query section).
- {tokens_per_step} tokens per step; each stage runs a curriculum of sequence lengths {phases}
  (capped by `--max-len` where given).
  Schedule progress is max(step / steps, elapsed / minutes): on a contended machine the time budget
  drives the curriculum and LR, so runs are reproducible from the seed only approximately.
- Each training row packs documents (`<|bos|> text <|eos|>`): NIAH needles in training prose (length
  and depth random), MQAR (2–16 pairs, every query answered in the text), variable-binding chains
  (1–3 hops, 0–3 distractor chains), addition (1–2 digits), GSM8K train question+answer text, plain
  prose spans.
- Task items used seeds < 10^6; every evaluation below uses seeds >= 10^9. Prose: the first 90 % of
  each file is training text, the last 10 % is held out (evaluation haystacks, perplexity).
  Addition: a fixed tenth of all problems ((31a + b) mod 10 = 0) was excluded from training and is
  the only set evaluated.
- Tokenizer: byte-level BPE trained with `tokenizers` (stage 1) on the training prose, GSM8K train
  and task text; digits split one per token; `<|bos|>` (prepended by the tokenizer), `<|eos|>`,
  `<|pad|>`.

Final training loss (EMA over steps): {final_ema}. Teacher-forced answer accuracy during the last stage
(16 eval-seed items per task; NIAH at 256 tokens; all answer tokens must be the argmax):

{tf_table}

## Measured results

`python -m staterank.builtin.evaluate --model {{folder}} --n {n}` ({eval_minutes:.1f} minutes on 1
thread). Greedy decoding; the prediction is the continuation up to the first newline, stripped, and
must equal the answer exactly. Accuracy with Wilson 95 % intervals; chance = uniform guess over the
answer space. Default task parameters: NIAH 256 tokens at depth 0.5; MQAR 8 pairs, 4 queries (3
answered in the prompt, the last scored); multihop 2 hops with 2 distractor chains; addition of two
2-digit numbers.

{results}

Targets of issue #3, checked from the numbers above: {targets}

Perplexity: first {ppl_tokens} tokens of each file's held-out 10 %, non-overlapping windows of
{ppl_window} tokens each starting fresh from `<|bos|>`.

Raw numbers: `eval_results.json`; training logs: `train_log.jsonl` (last stage) and
`train_log_stage*.jsonl` (earlier stages); stage notes: `stage_notes.json`.

## Data and licences

- Jane Austen's six novels and the King James Bible: public domain (texts from the Debian packages
  `r-cran-janeaustenr` and `bible-kjv-text`).
- GSM8K train split (github.com/openai/grade-school-math): MIT.
- Synthetic tasks: generated by `staterank.tasks`.

The weights are released under the project's MIT licence.

## Limitations

A few-million-parameter model trained for under an hour: its prose is poor, it knows no facts, and
NIAH beyond the longest training length ({max_T} tokens) is extrapolation. Use it to exercise the
analysis machinery, not to draw conclusions about large models.
"""


def _stage_line(i: int, st: dict, note: str) -> str:
    a = st["args"]
    cmd = f"python -m staterank.builtin.train --out STAGE{i} --seed {a['seed']} --steps {a['steps']} " \
          f"--minutes {a['minutes']:g} --threads {a['threads']} --lr {a['lr']:g}"
    if a.get("init_from"):
        cmd += f" --init-from STAGE{i - 1}"
    if a.get("mix"):
        cmd += f" --mix {a['mix']}"
    if a.get("max_len"):
        cmd += f" --max-len {a['max_len']}"
    if a.get("loss", "all") != "all":
        cmd += f" --loss {a['loss']}"
    mix = st.get("mix") or {}
    return (f"{i}. `{cmd}`\n   seed {a['seed']}; {st['step']} steps; {st['tokens']:,} tokens; "
            f"{st['train_seconds'] / 60:.1f} min; mixture (document weights) "
            + (", ".join(f"{k} {v:g}" for k, v in mix.items()) or "default") + f". {note}")


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
    stage_text = "\n".join(_stage_line(i + 1, s_, notes.get(str(i + 1), "")) for i, s_ in enumerate(stages))
    checks = []
    for name, c in res["tasks"].items():
        verdict = "beats chance (CI lower bound above chance)" if c["lo"] > c["chance"] else "does NOT clearly beat chance"
        checks.append(f"{name} {verdict}")
    shortest = min(res["niah_by_length"], key=int)
    nc = res["niah_by_length"][shortest]
    checks.append(f"NIAH at the shortest length ({shortest} tokens) {nc['acc']:.2f} "
                  + ("meets" if nc["acc"] >= 0.8 else "does NOT meet") + " the >= 0.80 target")
    text = TEMPLATE.format(targets="; ".join(checks) + ".",
        params_m=st["params"] / 1e6, params=st["params"], size_mb=(folder / "model.safetensors").stat().st_size / 2**20,
        layers=cfg["num_hidden_layers"], layer_types=", ".join(cfg["layer_types"]), hidden=cfg["hidden_size"],
        intermediate=cfg["intermediate_size"], hk=cfg["linear_num_key_heads"], hv=cfg["linear_num_value_heads"],
        gva=cfg["linear_num_value_heads"] // cfg["linear_num_key_heads"], K=cfg["linear_key_head_dim"],
        V=cfg["linear_value_head_dim"], conv=cfg["linear_conv_kernel_dim"], n_heads=cfg["num_attention_heads"],
        n_kv=cfg["num_key_value_heads"], head_dim=cfg["head_dim"], vocab=cfg["vocab_size"], stages=stage_text, n_stages=len(stages), steps_total=sum(x["step"] for x in stages),
        tokens=sum(x["tokens"] for x in stages), minutes=sum(x["train_seconds"] for x in stages) / 60,
        tokens_per_step=a["tokens_per_step"],
        phases=", ".join(f"{T} tokens until {int(end * 100)} % of steps" for end, T in PHASES),
        final_ema=f"{ema[-1]:.3f}" if ema else "n/a",
        tf_table=tf_table, n=res["args"]["n"], eval_minutes=res["seconds"] / 60, results=to_markdown(res),
        ppl_tokens=res["perplexity_setup"]["max_tokens_per_file"], ppl_window=res["perplexity_setup"]["window"],
        max_T=max(T for _, T in PHASES),
    )
    (folder / "README.md").write_text(text)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="trained HF folder with training_state.json, "
                    "train_log.jsonl and eval_results.json")
    args = ap.parse_args(argv)
    print(write_card(Path(args.model)))


if __name__ == "__main__":
    main()
