"""Tiny random-config models built in-process, for tests and examples (no weights, no hub).

Every family gets a hybrid layout (linear, linear, full, linear) so that layer indices of linear
layers are not simply 0..L-1, and GVA ratios > 1 where the family allows it.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from .adapters import families, get_adapter

FAMILIES = families()  # every registered family, in registry order


def tiny_config(family: str, *, h_k: int = 2, h_v: int = 4, k: int = 8, v: int = 12, vocab: int = 97,
                hidden: int = 32, layers: tuple[str, ...] = ("linear_attention", "linear_attention", "full_attention", "linear_attention"),
                max_positions: int = 4096):
    """A tiny random config of ``family``: the sizes common to all families here, the rest from the
    family's adapter (``Adapter.tiny_config``)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}")
    return get_adapter(family).tiny_config(
        h_k=h_k, h_v=h_v, k=k, v=v, vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=len(layers), layer_types=list(layers), max_position_embeddings=max_positions,
    )


def tiny_model(family: str, seed: int = 0, *, memory_gates: bool = True, **kw):
    """A random tiny model in eval mode. ``memory_gates`` applies the FLA/Mamba-style gate
    initialisation (decay ≈ 0.9–0.999) so states carry memory; transformers' default init forgets
    almost everything every token."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **kw), dtype=torch.float32)
    if memory_gates:
        g = torch.Generator().manual_seed(seed)
        for layer in get_adapter(model).linear_layers(model):
            # the layer itself, or its first submodule holding both (Kimi's forget gate)
            fg = next(x for x in layer.module.modules() if hasattr(x, "A_log") and hasattr(x, "dt_bias"))
            with torch.no_grad():
                fg.A_log.copy_(torch.empty_like(fg.A_log).uniform_(1, 16, generator=g).log())
                dt = torch.exp(torch.empty_like(fg.dt_bias).uniform_(-7, -2.3, generator=g))
                fg.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    return model.eval()


def char_tokenizer():
    """97 tokens: <pad>, <unk> and the 95 printable ASCII characters, one token per character."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tm
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, **{chr(c): c - 30 for c in range(32, 127)}}
    tok = Tokenizer(tm.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


def byte_tokenizer():
    """A byte-level tokenizer with no merges (256 byte ids + bos/eos/pad): real text in, no files needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    for s in ("<|bos|>", "<|eos|>", "<|pad|>"):
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
