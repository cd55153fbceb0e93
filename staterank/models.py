"""Load a model for analysis: 'builtin', a local folder, or a Hugging Face id.

    loaded = load_model("Qwen/Qwen3-Next-80B-A3B-Instruct")   # or "builtin", or "./my_model"
    ids = tokenize_texts(loaded.tokenizer, ["some text"], max_tokens=2048)   # [[1, T]]

The config is read first (a local folder's ``model_type`` straight from config.json, before
transformers sees it), so an unsupported architecture fails in one line listing the supported ones
before any weight is loaded; the tokenizer is loaded and checked next (a folder without tokenizer
files gets an empty one from transformers, refused here), then the weights. A config transformers
rejects, a corrupt or truncated safetensors file, or a config that does not match the weights each
fail in one line naming the folder. Weights load through stock ``AutoModelForCausalLM`` from safetensors only. A Qwen3.5
vision-language checkpoint (``model_type == "qwen3_5"`` with a ``text_config``) loads its text part
as ``Qwen3_5ForCausalLM``: transformers maps ``qwen3_5`` to that class and renames
``model.language_model.*`` weights itself (verified on a saved tiny checkpoint).

fla on CPU: when ``fla`` (or ``causal_conv1d``) is importable, transformers binds its kernels into
the modeling module at import time with no device check, and a CPU forward crashes. We *re-bind*
(not refuse): loading on CPU puts transformers' own PyTorch reference functions back into the
modeling module's globals; loading on another device restores the bound kernels. The binding is
per modeling module and per process, so the last ``load_model`` of a family decides it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import compat
from . import kernel_binding as kernels
from .adapters import Adapter, get_adapter
from .errors import UserError

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass
class Loaded:
    """A model ready for analysis (eval mode, no grad) with its tokenizer and adapter."""

    model: nn.Module
    tokenizer: Any
    adapter: Adapter
    spec: str  # what the user asked for: 'builtin', a folder, or an HF id
    source: str  # resolved folder or HF id the weights came from
    config: dict = field(default_factory=dict)  # JSON-able summary (see ``_summary``)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the first parameter's device (the embedding's, with a device map too)."""
        return next(self.model.parameters()).device

    @property
    def device_map(self) -> dict | None:
        """accelerate's module -> device map when ``device="auto"`` spread the model over several
        devices; None when it sits on one (accelerate then sets no map)."""
        return getattr(self.model, "hf_device_map", None)


AUTO_DEVICE = "auto"  # spread the model over all GPUs (and CPU if it must) with accelerate's device map


def rank_gpus() -> list[int] | None:
    """Under torchrun with several processes on this node, the GPUs this rank holds (consecutive
    blocks of GPUs / LOCAL_WORLD_SIZE, ``distributed.gpu_group``); None with one process per node."""
    from .distributed import env_rank, gpu_group

    r = env_rank()
    if r.local_size == 1 or not torch.cuda.is_available():
        return None
    return gpu_group(r.local_rank, r.local_size, torch.cuda.device_count())


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device a model goes to; for "auto", the primary one (cuda if available). Under torchrun
    an unnumbered "cuda" (or auto) is the first GPU of this rank's group (``rank_gpus``)."""
    if device is None or device == AUTO_DEVICE:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise UserError(f"bad --device {device!r}: {e}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device} asked for CUDA, but torch sees no CUDA device")
    gpus = rank_gpus() if dev.type == "cuda" and dev.index is None else None
    return torch.device("cuda", gpus[0]) if gpus else dev


def auto_device_map_kwargs() -> dict:
    """from_pretrained's placement for ``--device auto``: all GPUs, or under torchrun only this
    rank's group, with host RAM shared among the node's ranks for what does not fit."""
    gpus = rank_gpus()
    if gpus is None:
        return {"device_map": AUTO_DEVICE}
    import psutil

    from .distributed import env_rank

    cpu = psutil.virtual_memory().available // env_rank().local_size
    return {"device_map": AUTO_DEVICE, "max_memory": {**{g: torch.cuda.mem_get_info(g)[0] for g in gpus}, "cpu": cpu}}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if dtype not in _DTYPES:
        raise UserError(f"bad --dtype {dtype!r}; choose one of float32, bfloat16, float16")
    return _DTYPES[dtype]


def builtin_dir() -> Path:
    """The shipped model folder (``staterank.builtin.BUILTIN_DIR``)."""
    mod = importlib.import_module("staterank.builtin")
    d = getattr(mod, "BUILTIN_DIR", None)
    return Path(d) if d is not None else Path(mod.__file__).parent / "model"


def _resolve_source(spec: str) -> tuple[str, bool]:
    """-> (folder or HF id, is_local)."""
    if spec == "builtin":
        d = builtin_dir()
        if not (d / "config.json").is_file():
            raise UserError(f"the builtin model is not installed ({d} has no config.json); "
                            "train it with `python -m staterank.builtin.train` or pass --model <hf-id|folder>")
        return str(d), True
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"--model {spec}: is a file; give the model folder (with config.json)")
        if not (p / "config.json").is_file():
            raise UserError(f"--model {spec}: folder has no config.json")
        return str(p), True
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep + os.sep in spec or spec.count("/") > 1
    if looks_like_path or not _HF_ID.match(spec):
        raise UserError(f"--model {spec}: no such folder")
    return spec, False


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return msg[0] if msg else type(e).__name__


def _flat(e: BaseException) -> str:
    """All of ``e``'s message on one line (huggingface_hub's validation errors put the cause on line 2)."""
    msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return msg or type(e).__name__


def _config_errors() -> tuple[type[BaseException], ...]:
    """What transformers' strict config dataclasses raise for a bad value (not a ValueError)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # older huggingface_hub: configs were not strict dataclasses
        return ()
    return (StrictDataclassError,)


def _safetensor_error() -> type[BaseException]:
    from safetensors import SafetensorError

    return SafetensorError


def _local_model_type(folder: str) -> str | None:
    """``model_type`` from ``folder/config.json`` as plain JSON (None if absent: transformers decides)."""
    path = Path(folder) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"cannot read the config of {folder}: config.json is not valid JSON ({_one_line(e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"cannot read the config of {folder}: config.json is not a JSON object")
    mt = data.get("model_type")
    return None if mt is None else str(mt)


def _check_tokenizer(tokenizer: Any, where: str) -> None:
    """transformers builds an empty tokenizer (length 1) for a folder without tokenizer files, and the
    user would only learn it from "text 0 has no tokens" later: refuse it here."""
    try:
        n = len(tokenizer)
        ids = tokenizer("Hello world.", add_special_tokens=False, verbose=False)["input_ids"]
    except Exception as e:  # noqa: BLE001 - any failure here means the tokenizer is unusable; type kept
        raise UserError(f"{where} has no usable tokenizer ({type(e).__name__}: {_one_line(e)})") from None
    if n <= 1 or len(ids) == 0:
        raise UserError(f"{where} has no usable tokenizer (vocabulary of {n}, encodes 'Hello world.' to "
                        f"{len(ids)} tokens): add tokenizer.json / tokenizer_config.json to the model folder")


def _summary(model: nn.Module, adapter: Adapter, cfg: Any, dtype: torch.dtype, device: torch.device | str) -> dict:
    layers = adapter.linear_layers(model)
    layouts = sorted({(l.layout.h_k, l.layout.h_v, l.layout.k, l.layout.v) for l in layers})
    return {
        "model_type": cfg.model_type,
        "architecture": type(model).__name__,
        "num_hidden_layers": int(getattr(model.config, "num_hidden_layers", 0)),
        "linear_layers": [l.index for l in layers],
        "layouts": [dict(zip(("h_k", "h_v", "k", "v"), lo)) for lo in layouts],
        "state_bytes_per_sequence": sum(l.layout.state_bytes() for l in layers),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype).removeprefix("torch."),
        # as saved, before loading cast it: what an export of this model should be written in
        "checkpoint_dtype": str(getattr(cfg, "dtype", None) or dtype).removeprefix("torch."),
        "device": str(device),
    }


def load_model(spec: str, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
               trust_remote_code: bool = False) -> Loaded:
    """Load ``spec`` ('builtin' | folder | HF id) with its tokenizer; one-line UserError on failure."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    auto = device == AUTO_DEVICE
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if spec == NEGATIVE_CONTROL:
        return negative_control(device=dev, dtype=dt)
    if auto and importlib.util.find_spec("accelerate") is None:
        raise UserError("--device auto needs accelerate: pip install accelerate")
    source, local = _resolve_source(str(spec))
    where = source if local else f"{source} (Hugging Face Hub)"
    if local:  # unsupported type: our one line (listing the supported ones), before transformers reads it
        model_type = _local_model_type(source)
        if model_type is not None:
            get_adapter(model_type)
    try:
        cfg = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, *_config_errors()) as e:
        hint = "" if local else " (no network, not in the local HF cache, or not a model id?)"
        msg = _flat(e) if isinstance(e, _config_errors()) else _one_line(e)  # their cause is on line 2
        raise UserError(f"cannot read the config of {where}: {msg}{hint}") from None
    adapter = get_adapter(cfg.model_type)  # unsupported type: one line, before any weight loads
    compat.selftest(adapter.model_type)  # a transformers whose rule call we cannot read: likewise
    _check_cache_runs(cfg, where)
    # the tokenizer before the weights: a folder without one fails in seconds, not after a 160 GB load
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"cannot load the tokenizer of {where}: {_one_line(e)}") from None
    _check_tokenizer(tokenizer, where)
    kernels.bind_for(adapter, dev)
    try:
        # use_kernels=False: transformers >= 5.25 otherwise fetches hub kernels (downloaded code, needing
        # network and publisher trust) while placing a model on a GPU; a locally installed fla still runs
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dt, use_safetensors=True, trust_remote_code=trust_remote_code, use_kernels=False,
            **(auto_device_map_kwargs() if auto else {}))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the weights of {where} (safetensors only): {_one_line(e)}") from None
    except _safetensor_error() as e:
        files = sorted(p.name for p in Path(source).glob("*.safetensors")) if local else []
        what = files[0] if len(files) == 1 else "a .safetensors file"
        raise UserError(f"cannot load the weights of {where}: {what} is corrupt or truncated "
                        f"({type(e).__name__}: {_one_line(e)})") from None
    except RuntimeError as e:
        if "ignore_mismatched_sizes" not in str(e):
            raise  # not a checkpoint problem: a bug, keep its traceback
        raise UserError(f"cannot load the weights of {where}: config.json does not match the weights "
                        "(tensor shapes differ; transformers' load report lists them)") from None
    if auto:
        # layers accelerate placed on CPU cannot run fla's Triton kernels: every layer takes the
        # (slower, exact) PyTorch reference then, since the functions are module globals
        if any(p.device.type == "cpu" for p in model.parameters()) and kernels.gpu_kernels_importable():
            kernels.bind_reference_kernels(adapter.module, cpu=True)
    else:
        model.to(dev)
    model.eval().requires_grad_(False)
    _check_finite(model, where)
    placed = "auto: " + ", ".join(sorted({str(p.device) for p in model.parameters()})) if auto else dev
    return Loaded(model=model, tokenizer=tokenizer, adapter=get_adapter(model), spec=str(spec), source=source,
                  config=_summary(model, adapter, cfg, dt, placed))


def _check_cache_runs(cfg, where: str) -> None:
    """Every stage runs the model through its cache (segmented prefill, greedy decoding). transformers
    5 derives positions and mask sizes from the cache (``get_seq_length``, ``get_mask_sizes``), which
    only attention layers can answer (5.20-5.24 fail at the first, 5.25 at the second): a model of
    these families without one (all layers linear attention) fails inside transformers on its first
    cached step. Say so in one line, before any weight loads."""
    import transformers
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=cfg)
        cache.get_seq_length()
        cache.get_mask_sizes(1, 0)
    except ValueError as e:
        if "get_seq_length" not in str(e) and "Attention layers" not in str(e):
            return  # some other complaint about the config: not this check's to judge
        raise UserError(f"{where} has no attention layer, and transformers {transformers.__version__} cannot run "
                        "the cache of such a model (its get_seq_length / get_mask_sizes need one): pure "
                        "linear-attention models of this family are not supported") from None
    except Exception:  # noqa: BLE001 - a pre-check: a config it cannot build a cache for is judged later
        return


def _check_finite(model: nn.Module, where: str) -> None:
    """NaN or inf weights make every state and statistic NaN far downstream: refuse them here,
    naming the first such tensor (one pass over the weights, on their own devices)."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise UserError(f"cannot use the weights of {where}: {name} holds NaN or inf values")


NEGATIVE_CONTROL = "negative-control"


def negative_control(seed: int = 0, *, device=None, dtype=None) -> Loaded:
    """The negative-control model (issue #9): the builtin model's architecture and tokenizer with
    transformers' own default initialisation (gates included: most heads forget almost everything
    every token), untrained. Built in-process, deterministic from ``seed``. Any "claim" it supports
    is an artefact of architecture and gates, which is what the claims report must say."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    source, _ = _resolve_source("builtin")
    cfg = AutoConfig.from_pretrained(source)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dt)
    model.to(dev).eval().requires_grad_(False)
    adapter = get_adapter(model)
    compat.selftest(adapter.model_type)
    kernels.bind_for(adapter, dev)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return Loaded(model=model, tokenizer=tokenizer, adapter=adapter, spec=NEGATIVE_CONTROL,
                  source=f"{source} (config only; default init, seed {seed})",
                  config=_summary(model, adapter, cfg, dt, dev))


def weights_fingerprint(model: nn.Module, sample: int = 256) -> str:
    """16 hex digits over every parameter's name, shape, dtype and its first and last ``sample``
    values: any retraining or other revision changes it, and it costs a few small reads per tensor
    (not a pass over 160 GB of weights)."""
    import hashlib

    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        if p.device.type == "meta":  # offloaded by accelerate: its values are not in memory
            continue
        flat = p.detach().reshape(-1)
        h.update(torch.cat([flat[:sample], flat[-sample:]]).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_kwarg(model: nn.Module) -> str:
    """The forward keyword that takes a cache: transformers 5.24 renamed ``past_key_values`` to
    ``cache`` (the old name warns and goes in 5.40); older 5.x releases only know the old one."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out: Any):
    """The cache a forward returned: ``out.cache`` from transformers 5.24 on (reading
    ``out.past_key_values`` there warns), ``out.past_key_values`` before."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_tokens: int | None = None) -> list[torch.Tensor]:
    """Each text -> input ids [1, T] (T ≤ max_tokens, special tokens as the tokenizer adds them).
    Texts are tokenized one by one: no padding ever reaches the recurrence."""
    if max_tokens is not None and max_tokens < 1:
        raise UserError(f"--max-tokens must be >= 1, got {max_tokens}")
    out = []
    for i, text in enumerate(texts):
        if not text or not text.strip():
            raise UserError(f"text {i} is empty")
        if max_tokens is not None:
            # a book-length file need not be tokenized whole: grow a prefix until it yields enough tokens.
            # verbose=False here and wherever staterank cuts text: the tokenizer's model_max_length
            # warning is about positional limits, and long texts are streamed in segments anyway.
            n = 64 * max_tokens
            while True:
                ids = tokenizer(text[:n], return_tensors="pt", verbose=False)["input_ids"]
                if ids.shape[1] > max_tokens + 64 or n >= len(text):  # margin: the cut word
                    break
                n *= 4
            ids = ids[:, :max_tokens]
        else:
            ids = tokenizer(text, return_tensors="pt", verbose=False)["input_ids"]
        if ids.shape[1] == 0:
            raise UserError(f"text {i} has no tokens")
        out.append(ids.long())
    return out
