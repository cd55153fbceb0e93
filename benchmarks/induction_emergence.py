"""When does in-context copying emerge? The experiment behind docs/builtin-training-findings.md.

    python benchmarks/induction_emergence.py --arch builtin --vocab 512 --alphabet 64 --minutes 25

Rows are ``<bos> x x`` with x random tokens from ``[2, alphabet)``; with ``--fixed-length`` every x
has 16 tokens (a positional "look 16 back" head solves it), otherwise the length is drawn per step
from 4..32, so copying needs content matching (induction). Prints copy accuracy on the second x
(teacher-forced argmax) every 50 steps. Shapes: B = 64 rows per step, T = 2·len(x) + 1.
"""

from __future__ import annotations

import argparse
import time

import torch


def build(arch: str, vocab: int, hidden: int, layers: int, seed: int):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3NextConfig

    from staterank.builtin.train import fla_gate_init

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        return AutoModelForCausalLM.from_config(cfg)
    # "builtin": the built-in model's head layout; every 4th layer softmax attention (the last if < 4)
    types = ["full_attention" if (i + 1) % 4 == 0 or (layers < 4 and i == layers - 1) else "linear_attention"
             for i in range(layers)]
    cfg = Qwen3NextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          layer_types=types, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                          linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=32,
                          linear_value_head_dim=32, num_experts=0, tie_word_embeddings=True, use_cache=False)
    model = AutoModelForCausalLM.from_config(cfg)
    fla_gate_init(model, torch.Generator().manual_seed(seed))
    return model


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["builtin", "llama"], default="builtin")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--alphabet", type=int, default=0, help="draw tokens from [2, alphabet) (0: whole vocab)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--fixed-length", action="store_true", help="every x has 16 tokens (positional shortcut)")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = build(a.arch, a.vocab, a.hidden, a.layers, a.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    top = a.alphabet or a.vocab
    t0 = time.time()
    step = 0
    while time.time() - t0 < 60 * a.minutes:
        n = 16 if a.fixed_length else int(torch.randint(4, 33, (1,)))
        x = torch.randint(2, top, (64, n))
        ids = torch.cat([torch.ones(64, 1, dtype=torch.long), x, x], 1)
        out = model(input_ids=ids, labels=ids, use_cache=False)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step % 50 == 0:
            acc = (out.logits[:, n + 1:-1].argmax(-1) == ids[:, n + 2:]).float().mean().item()
            print(f"step {step} min {(time.time() - t0) / 60:.1f} loss {out.loss.item():.3f} copy_acc {acc:.3f}", flush=True)
        step += 1


if __name__ == "__main__":
    main()
