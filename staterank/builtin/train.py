"""Train the built-in Gated-DeltaNet LM (a small 3:1 hybrid Qwen3-Next) on CPU.

    python -m staterank.builtin.train --out DIR --seed 0 [--steps N] [--minutes M] [--threads N] [--evaluate 64]

The shipped model's exact stage commands are in its card (``staterank/builtin/model/README.md``).

The data of step s depends only on (seed, s). Curriculum and learning rate follow the training
progress p = max(step / steps, elapsed / minutes): when the machine keeps up, p = step / steps and a
run is fully deterministic from ``--seed``; on a slow (shared) machine the time budget takes over, so
the schedule still completes (LR annealed, longest contexts seen) and the run stops at p = 1. A checkpoint (a
complete HF folder) is written to ``DIR/ckpt`` every few minutes and the final model to ``DIR``.
"""

# The data mixture and batches live in mixture.py, the probe and checkpoint folders in monitor.py;
# this module keeps the tokenizer, the model, the command line and the training loop, and
# re-exports the moved names (card.py, the tests and benchmarks import them from here).

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path

import torch

from .. import runio
from ..tasks import TASKS, TRAIN_SEED_LIMIT, train_text
from ..tasks.prose import prose_texts
from .mixture import _LOSSES, KINDS, MIX, PHASES, DataStream, balanced_loss, gsm8k_texts, parse_mix, seq_len_at
from .monitor import copy_stage_logs, save_folder, teacher_forced_acc

__all__ = ["SPECIALS", "train_tokenizer", "build_config", "fla_gate_init", "build_parser", "main", "PHASES", "MIX",
           "KINDS", "DataStream", "balanced_loss", "gsm8k_texts", "parse_mix", "seq_len_at", "copy_stage_logs",
           "save_folder", "teacher_forced_acc"]


SPECIALS = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>"}


# ---------------------------------------------------------------- tokenizer

def train_tokenizer(vocab_size: int, seed: int):
    """Byte-level BPE, one token per digit, wrapped so stock AutoTokenizer loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # digits one per token: makes arithmetic and needle numbers learnable
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = list(SPECIALS.values())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    task_docs = [train_text(it) for name, t in TASKS.items() if name != "niah"
                 for it in t.generate(500, seed=TRAIN_SEED_LIMIT - 1 - seed)]
    corpus = list(prose_texts("train")) + gsm8k_texts("train") + task_docs
    tok.train_from_iterator(corpus, trainer=trainer)
    bos = tok.token_to_id(SPECIALS["bos_token"])
    # BOS is prepended by the tokenizer itself so training and stock-transformers use agree
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=4096, **SPECIALS)


# ---------------------------------------------------------------- model

def build_config(vocab_size: int, layers: int, hidden: int, tokenizer, intermediate: int = 512):
    from transformers import Qwen3NextConfig

    return Qwen3NextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        # 3:1 hybrid: every 4th layer is softmax attention, the rest Gated DeltaNet
        layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)],
        num_attention_heads=4, num_key_value_heads=2, head_dim=64,
        linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=32, linear_value_head_dim=32,
        linear_conv_kernel_dim=4,
        num_experts=0,  # dense MLP in every layer (verified: Qwen3NextMLP)
        tie_word_embeddings=True, max_position_embeddings=4096, rms_norm_eps=1e-6,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@torch.no_grad()
def fla_gate_init(model, generator: torch.Generator) -> int:
    """FLA/Mamba-style forget-gate init for every Gated DeltaNet layer; returns the layer count.

    transformers' default (A ~ U(0.01, 16), dt_bias = 1) makes most heads forget everything every
    token, and then nothing is learned. Here A ~ U(1, 16), dt ~ logU(1e-3, 1e-1) and
    dt_bias = softplus^-1(dt) = dt + log(-expm1(-dt)).
    """
    n = 0
    for mod in model.modules():
        if hasattr(mod, "A_log") and hasattr(mod, "dt_bias"):
            h = mod.A_log.numel()
            A = torch.empty(h).uniform_(1.0, 16.0, generator=generator)
            mod.A_log.copy_(torch.log(A))
            dt = torch.exp(torch.empty(h).uniform_(math.log(1e-3), math.log(1e-1), generator=generator))
            mod.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            n += 1
    return n


# ---------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (HF model folder + logs)")
    ap.add_argument("--seed", type=int, default=0, help="seed for init, data order and tokenizer corpus")
    ap.add_argument("--steps", type=int, default=1200, help="optimizer steps (sets the curriculum and LR schedule)")
    ap.add_argument("--tokens-per-step", type=int, default=4096, help="batch size x sequence length")
    ap.add_argument("--minutes", type=float, default=0, help="time budget; the schedule follows whichever of "
                    "steps or minutes runs out first (0 = steps only)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (every 4th is full attention)")
    ap.add_argument("--hidden", type=int, default=256, help="hidden size")
    ap.add_argument("--intermediate", type=int, default=512, help="MLP width (512 keeps fp32 weights < 16 MB)")
    ap.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary size")
    ap.add_argument("--ckpt-minutes", type=float, default=5.0, help="checkpoint interval")
    ap.add_argument("--init-from", default=None, help="continue from this HF folder (its weights and "
                    "tokenizer; no new tokenizer, no gate re-init) - stage 2 of a two-stage recipe")
    ap.add_argument("--mix", default=None, help="document mixture override, e.g. 'mqar=0.3,niah=0.25,...' "
                    f"(kinds: {', '.join(KINDS)})")
    ap.add_argument("--early-mix", default=None, help="mixture for the start of the schedule (same syntax as "
                    "--mix; its kinds must appear in the main mixture), e.g. a copy-heavy phase")
    ap.add_argument("--early-until", type=float, default=0.0, help="schedule fraction using --early-mix")
    ap.add_argument("--loss", choices=list(_LOSSES), default="all",
                    help="next-token loss on every token, only on task answers (and MQAR's recalled values), "
                    "on task answers plus every token of prose / GSM8K documents (one mean), or 'balanced': "
                    "the mean over answers plus the mean over prose tokens, halved")
    ap.add_argument("--niah-min", type=int, default=64, help="shortest NIAH haystack in training (tokens); "
                    "short haystacks put the needle near the question, an easier start")
    ap.add_argument("--early-loss", choices=list(_LOSSES), default=None,
                    help="loss before --early-until (default: --loss); e.g. answers-only while a skill forms")
    ap.add_argument("--max-len", type=int, default=0, help="cap the curriculum's sequence length (0 = no cap)")
    ap.add_argument("--eval-every", type=int, default=100, help="steps between teacher-forced probes")
    ap.add_argument("--evaluate", type=int, default=0, metavar="N",
                    help="after training, evaluate DIR/final on the built-in tasks with N items each "
                    "(eval_results.json), summarise its state ranks (ranks.json) and write its model card "
                    "(README.md): a shippable folder")
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)

    # arguments are checked before anything is written, so a typo leaves no half-made run behind
    mix = parse_mix(args.mix) if args.mix else None
    early_mix = parse_mix(args.early_mix) if args.early_mix else None
    if early_mix and set(early_mix) - set(mix or MIX):
        raise SystemExit("--early-mix kinds must also appear in the main mixture")
    if args.early_loss and not early_mix:
        raise SystemExit("--early-loss applies to the --early-mix phase; give --early-mix and --early-until too")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    out = Path(args.out)
    if (out / "train_log.jsonl").exists():
        raise SystemExit(f"{out} already holds a training run; choose a new --out (runs are never overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "train_log.jsonl", "a")

    def log(rec: dict) -> None:
        rec = {"time": time.strftime("%H:%M:%S"), **rec}
        print(json.dumps(rec), flush=True)
        logf.write(json.dumps(rec) + "\n")
        logf.flush()

    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    previous = None
    if args.init_from:
        tok = AutoTokenizer.from_pretrained(args.init_from)
        model = AutoModelForCausalLM.from_pretrained(args.init_from, dtype=torch.float32, use_kernels=False)
        cfg = model.config
        n_gdn = cfg.layer_types.count("linear_attention")
        prev_file = Path(args.init_from) / "training_state.json"
        previous = json.loads(prev_file.read_text()) if prev_file.is_file() else None
        log({"event": "init_from", "folder": args.init_from, "previous": previous})
    else:
        t0 = time.time()
        tok = train_tokenizer(args.vocab, args.seed)
        log({"event": "tokenizer", "vocab": len(tok), "seconds": round(time.time() - t0, 1)})
        cfg = build_config(len(tok), args.layers, args.hidden, tok, args.intermediate)
        model = AutoModelForCausalLM.from_config(cfg)
        g = torch.Generator().manual_seed(args.seed)
        n_gdn = fla_gate_init(model, g)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=False)
    n_params = sum(p.numel() for p in model.parameters())
    log({"event": "model", "params": n_params, "gdn_layers": n_gdn, "layer_types": cfg.layer_types})

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    warm = max(1, args.steps // 30)

    def lr_at(s: int, p: float) -> float:
        if s < warm:
            return args.lr * (s + 1) / warm
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))

    def progress(s: int) -> float:
        p = s / args.steps
        if args.minutes:
            p = max(p, (time.time() - t_train) / (args.minutes * 60))
        return p

    data = DataStream(tok, args.seed, mix, args.loss, early_loss=args.early_loss,
                      early_mix=early_mix, early_until=args.early_until, niah_min=args.niah_min)
    model.train()
    t_train = time.time()
    last_ckpt = t_train
    tokens = 0
    step = 0
    stopped_early = False
    ema = None
    for step in range(args.steps):
        p = progress(step)
        if p >= 1.0:
            stopped_early = True  # time budget ran out before the planned steps
            break
        T = min(seq_len_at(p), args.max_len) if args.max_len else seq_len_at(p)
        x, labels, kind = data.batch_with_mask(step, T, max(1, args.tokens_per_step // T), p)
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step, p)
        if data.loss_at(p) == "balanced":
            loss = balanced_loss(model(input_ids=x, use_cache=False).logits, labels, kind)
        else:
            loss = model(input_ids=x, labels=labels, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += x.numel()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 10 == 0:
            el = time.time() - t_train
            log({"step": step, "T": T, "loss": round(loss.item(), 4), "ema": round(ema, 4),
                 "lr": round(lr_at(step, p), 6), "progress": round(p, 4), "tokens": tokens, "tok_s": round(tokens / el, 1),
                 "min": round(el / 60, 2)})
        if step > 0 and step % args.eval_every == 0:
            log({"step": step, "tf_acc": teacher_forced_acc(model, tok)})
        state = {"seed": args.seed, "step": step + 1, "steps_planned": args.steps, "tokens": tokens,
                 "params": n_params, "train_seconds": round(time.time() - t_train, 1), "args": vars(args),
                 "mix": mix or MIX, "previous": previous}
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            save_folder(model, tok, out / "ckpt", state)
            last_ckpt = time.time()
            log({"event": "checkpoint", **state})
    else:
        step = args.steps
    state = {"seed": args.seed, "step": step if stopped_early else args.steps, "steps_planned": args.steps,
             "stopped_early": stopped_early, "tokens": tokens, "params": n_params,
             "train_seconds": round(time.time() - t_train, 1), "args": vars(args),
                 "mix": mix or MIX, "previous": previous}
    log({"step": state["step"], "tf_acc": teacher_forced_acc(model, tok, n=32)})
    model.eval()
    save_folder(model, tok, out / "final", state)
    log({"event": "done", **state})
    logf.close()
    if args.evaluate:
        from . import card, evaluate

        final = out / "final"
        shutil.copy(out / "train_log.jsonl", final / "train_log.jsonl")
        if args.init_from:  # earlier stages' logs travel with the model (the card cites them)
            copy_stage_logs(Path(args.init_from), final)
        res = evaluate.run(final, n=args.evaluate)
        res["args"] = {"n": args.evaluate}
        runio.write_json(final / "eval_results.json", res)
        runio.write_json(final / "ranks.json", evaluate.analysis_summary(final))
        card.write_card(final)
        print(evaluate.to_markdown(res), flush=True)


if __name__ == "__main__":
    main()
