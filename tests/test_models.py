"""load_model: folders, builtin, Qwen3.5 VLM checkpoints, one-line errors, CPU kernel re-binding."""

import json
import shutil
import sys
import types

import pytest
import torch

from staterank import kernel_binding as kernels
from staterank import models
from staterank.capture import capture
from staterank.errors import UserError
from staterank.models import cache_kwarg, load_model, output_cache, tokenize_texts
from staterank.testing import char_tokenizer, tiny_config, tiny_model


def save_tiny(path, family="qwen3_next", seed=0, **kw):
    """A tiny random model + char tokenizer saved as an HF folder; returns the in-memory model."""
    model = tiny_model(family, seed, **kw)
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return model


def test_load_folder(tmp_path):
    ref = save_tiny(tmp_path, "qwen3_next", h_k=1, h_v=4, k=8, v=12)
    loaded = load_model(str(tmp_path), device="cpu")
    m = loaded.model
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    assert loaded.adapter.model_type == "qwen3_next"
    assert loaded.config["linear_layers"] == [0, 1, 3]
    assert loaded.config["layouts"] == [{"h_k": 1, "h_v": 4, "k": 8, "v": 12}]
    assert loaded.config["state_bytes_per_sequence"] == 3 * 4 * 8 * 12 * 4
    ids = torch.randint(3, 97, (1, 9))
    torch.testing.assert_close(m(ids).logits, ref(ids).logits, atol=0, rtol=0)


def test_tokenize_texts(tmp_path):
    tok = char_tokenizer()
    a, b = tokenize_texts(tok, ["hello world", "ab"], max_tokens=5)
    assert a.shape == (1, 5) and b.shape == (1, 2) and a.dtype == torch.long
    assert tok.decode(a[0]) == "hello"
    with pytest.raises(UserError, match="empty"):
        tokenize_texts(tok, ["ok", "  \n"], None)
    with pytest.raises(UserError, match="max-tokens"):
        tokenize_texts(tok, ["ok"], 0)


def test_qwen3_5_vlm_checkpoint_loads_text_part(tmp_path):
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    text = tiny_config("qwen3_5", h_k=2, h_v=8, k=12, v=8).to_dict()
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32, patch_size=2,
                  temporal_patch_size=1, spatial_merge_size=1)
    torch.manual_seed(0)
    vlm = Qwen3_5ForConditionalGeneration(Qwen3_5Config(text_config=text, vision_config=vision)).eval()
    vlm.save_pretrained(tmp_path)
    char_tokenizer().save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), device="cpu")
    assert type(loaded.model).__name__ == "Qwen3_5ForCausalLM"
    assert loaded.config["model_type"] == "qwen3_5"
    assert loaded.config["layouts"] == [{"h_k": 2, "h_v": 8, "k": 12, "v": 8}]
    ids = torch.randint(3, 97, (1, 11))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, vlm(input_ids=ids).logits, atol=1e-6, rtol=0)


def test_unsupported_type_fails_before_weights(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=97, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32).save_pretrained(tmp_path)  # config only: no weights to load
    with pytest.raises(UserError, match="unsupported model_type 'llama'") as e:
        load_model(str(tmp_path), device="cpu")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("family", ["qwen3_next", "qwen3_5", "kimi_linear"])
def test_pure_linear_attention_model(family, tmp_path):
    """transformers 5.20-5.25 cannot run the cache of these families without an attention layer
    (get_seq_length or get_mask_sizes needs one): refused by its config in one line, before weights
    load. A release that can: such a model loads, and capture through its cache is exact."""
    from transformers import DynamicCache

    from staterank.testing import tiny_config

    kw = {"h_v": 4} if family == "kimi_linear" else {}
    cfg = tiny_config(family, layers=("linear_attention",) * 2, **kw)
    try:
        cache = DynamicCache(config=cfg)
        cache.get_seq_length()
        cache.get_mask_sizes(1, 0)
        runs = True
    except ValueError:
        runs = False
    if not runs:
        cfg.save_pretrained(tmp_path / "pure")
        with pytest.raises(UserError, match="no attention layer") as e:
            load_model(str(tmp_path / "pure"), device="cpu")
        assert "\n" not in str(e.value)
    else:
        save_tiny(tmp_path / "pure", family, layers=("linear_attention",) * 2, **kw)
        loaded = load_model(str(tmp_path / "pure"), device="cpu")
        ids = torch.randint(3, 90, (1, 7))
        with torch.no_grad(), capture(loaded.model, keep_states=True) as trace:
            cache = output_cache(loaded.model(ids[:, :6], use_cache=True))
            loaded.model(ids[:, 6:], **{cache_kwarg(loaded.model): cache}, use_cache=True)
        for lt in trace.layers:
            torch.testing.assert_close(trace.states(lt.layer.index)[:, :, -1],
                                       cache.layers[lt.layer.index].recurrent_states[0], atol=1e-5, rtol=0)
    save_tiny(tmp_path / "hybrid", family, layers=("linear_attention", "full_attention"), **kw)
    assert load_model(str(tmp_path / "hybrid"), device="cpu").adapter is not None


@pytest.mark.parametrize("spec,msg", [("/no/such/dir", "no such folder"), ("./nope", "no such folder"),
                                       ("a b c", "no such folder")])
def test_missing_path(spec, msg):
    with pytest.raises(UserError, match=msg):
        load_model(spec, device="cpu")


def test_folder_without_config_or_weights(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")
    tiny_config("qwen3_next").save_pretrained(tmp_path)
    char_tokenizer().save_pretrained(tmp_path)  # the tokenizer is checked before the weights
    with pytest.raises(UserError, match="cannot load the weights") as e:
        load_model(str(tmp_path), device="cpu")
    assert "\n" not in str(e.value)


def test_hub_id_offline_is_one_line(monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="cannot read the config of some-org/no-such-model") as e:
        load_model("some-org/no-such-model", device="cpu")
    assert "\n" not in str(e.value)


def test_builtin(tmp_path, monkeypatch):
    import staterank.builtin as b

    monkeypatch.setattr(b, "BUILTIN_DIR", tmp_path / "absent", raising=False)
    with pytest.raises(UserError, match="builtin model is not installed"):
        load_model("builtin", device="cpu")
    save_tiny(tmp_path / "model", "qwen3_5")
    monkeypatch.setattr(b, "BUILTIN_DIR", tmp_path / "model", raising=False)
    loaded = load_model("builtin", device="cpu")
    assert loaded.spec == "builtin" and loaded.source == str(tmp_path / "model")


def test_bad_device_and_dtype():
    with pytest.raises(UserError, match="dtype"):
        models.resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(UserError, match="device"):
        models.resolve_device("nonsense")


def test_cpu_rebinds_reference_of_kernel_bound_functions(monkeypatch):
    """With a GPU-only package importable, transformers binds its kernel; on CPU we put the torch
    reference back, and on another device the kernel returns."""
    from transformers.integrations.hub_kernels import use_kernel_func_from_hub_with_fallback

    fake = types.ModuleType("fake_gpu_pkg")

    def kernel_rule(x):
        raise RuntimeError("0 active drivers")

    fake.kernel_rule = kernel_rule
    monkeypatch.setitem(sys.modules, "fake_gpu_pkg", fake)

    @use_kernel_func_from_hub_with_fallback("kernel_rule", "fake_gpu_pkg")
    def torch_rule(x):
        return x + 1

    @use_kernel_func_from_hub_with_fallback("absent_rule", "fake_gpu_pkg")
    def torch_only(x):  # no kernel in the package: transformers already falls back, nothing to do
        return x * 2

    mod = types.ModuleType("fake_modeling")
    mod.torch_rule, mod.torch_only, mod.other = torch_rule, torch_only, len
    with pytest.raises(RuntimeError, match="active drivers"):
        mod.torch_rule(1)
    assert kernels.bind_reference_kernels(mod, cpu=True) == ["torch_rule"]
    assert mod.torch_rule(1) == 2 and mod.torch_only(3) == 6 and mod.other is len
    assert kernels.bind_reference_kernels(mod, cpu=False) == ["torch_rule"]
    assert mod.torch_rule is torch_rule


def test_tokenize_texts_prefix_equals_whole_text():
    # long files are tokenized by growing prefixes; the kept tokens must be those of the whole text
    from transformers import AutoTokenizer

    from staterank.builtin import BUILTIN_DIR

    tok = AutoTokenizer.from_pretrained(BUILTIN_DIR)
    text = " ".join(f"word{i} of a longish sentence, number {i * 7919 % 10007}." for i in range(3000))
    whole = tok(text, return_tensors="pt")["input_ids"]
    for m in (1, 7, 100, 999):
        (ids,) = tokenize_texts(tok, [text], max_tokens=m)
        assert torch.equal(ids, whole[:, :m])


def test_cutting_long_texts_raises_no_max_length_warning():
    # staterank cuts and streams long texts itself; the tokenizer's "indexing errors" warning
    # about its model_max_length would only alarm users (it fired in make demo's NIAH haystacks)
    from staterank.tasks.niah import _cut_to_tokens, _ntok

    tok = char_tokenizer()
    tok.model_max_length = 16
    text = "a long haystack sentence " * 10
    tokenize_texts(tok, [text], max_tokens=8)
    tokenize_texts(tok, [text])
    _ntok(tok, text)
    _cut_to_tokens(tok, text, 20)
    assert "sequence-length-is-longer-than-the-specified-maximum" not in tok.deprecation_warnings
    tok(text)  # the flag this test reads is the one the warning sets
    assert "sequence-length-is-longer-than-the-specified-maximum" in tok.deprecation_warnings


def test_device_auto_loads_with_a_device_map_and_computes_the_same(tmp_path):
    import accelerate  # noqa: F401  (a dependency: a missing one must fail here, not skip)

    from staterank.prune.export import reload

    ref = save_tiny(tmp_path, "qwen3_next", h_k=1, h_v=4, k=8, v=12)
    loaded = load_model(str(tmp_path), device="auto")
    assert loaded.config["device"] == "auto: cpu"
    assert loaded.device_map is None  # one device: accelerate sets no map, staterank takes the plain path
    ids = torch.randint(3, 97, (1, 9))
    torch.testing.assert_close(loaded.model(ids).logits, ref(ids).logits, atol=0, rtol=0)
    spread = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    again = reload(tmp_path, device_map=spread)  # prune's check reloads a spread export like this
    torch.testing.assert_close(again(ids).logits, ref(ids).logits, atol=0, rtol=0)


def test_negative_control_binds_reference_kernels_on_cpu(monkeypatch):
    """With fla importable, every CPU load (the negative control too) must re-bind the PyTorch rules."""
    calls = []
    monkeypatch.setattr(kernels, "gpu_kernels_importable", lambda: True)
    monkeypatch.setattr(kernels, "bind_reference_kernels", lambda mod, cpu: calls.append((mod.__name__, cpu)) or [])
    models.load_model("negative-control", device="cpu")
    assert calls and all(cpu for _, cpu in calls)


def builtin_copy(tmp_path, config=None, *, replace_config=None, weights=None, tokenizer=True):
    """A copy of the builtin model folder (config, weights, tokenizer only) with one thing broken."""
    src = models.builtin_dir()
    d = tmp_path / "m"
    d.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        if tokenizer or not name.startswith("tokenizer"):
            shutil.copyfile(src / name, d / name)
    cfg = replace_config if replace_config is not None else {**json.loads((d / "config.json").read_text()),
                                                               **(config or {})}
    (d / "config.json").write_text(json.dumps(cfg))
    if weights is not None:
        (d / "model.safetensors").write_bytes(weights((d / "model.safetensors").read_bytes()))
    return str(d)


def one_line_error(path, match):
    with pytest.raises(UserError, match=match) as e:
        load_model(path, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg
    assert path in msg or msg.startswith("unsupported model_type")  # names the folder (get_adapter's line: the type)
    return msg


def test_builtin_copy_loads(tmp_path):
    # the control for the broken copies below: unbroken, the copy loads
    loaded = load_model(builtin_copy(tmp_path), device="cpu")
    assert loaded.config["model_type"] == "qwen3_next" and len(loaded.tokenizer) > 1


def test_config_transformers_rejects_is_one_line(tmp_path):
    # huggingface_hub's StrictDataclass*ValidationError is no ValueError; its cause is on line 2
    msg = one_line_error(builtin_copy(tmp_path, {"hidden_size": "abc"}), "cannot read the config of .*hidden_size")
    assert "expected int" in msg


def test_config_class_validation_error_is_one_line(tmp_path, monkeypatch):
    # the reviewer's {"model_type": "llama", "hidden_size": 8} from the Hub: AutoConfig raises a class validator's error
    from huggingface_hub.errors import StrictDataclassClassValidationError
    from transformers import AutoConfig

    def reject(*a, **k):
        raise StrictDataclassClassValidationError("validate_architecture", ValueError("The hidden size (8) is bad"))

    monkeypatch.setattr(AutoConfig, "from_pretrained", reject)
    with pytest.raises(UserError, match="cannot read the config of some-org/model.*hidden size \\(8\\)") as e:
        load_model("some-org/model", device="cpu")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("cfg,mt", [({"model_type": "llama", "hidden_size": 8}, "llama"),
                                    ({"model_type": "notathing"}, "notathing")])
def test_unknown_model_type_lists_supported_before_transformers(tmp_path, cfg, mt):
    msg = one_line_error(builtin_copy(tmp_path, replace_config=cfg), f"unsupported model_type '{mt}'")
    assert "supported: " in msg and "qwen3_next" in msg


def test_config_not_json_is_one_line(tmp_path):
    d = builtin_copy(tmp_path)
    (tmp_path / "m" / "config.json").write_text("{not json")
    one_line_error(d, "config.json is not valid JSON")


@pytest.mark.parametrize("weights", [lambda b: b"\x00garbage" * 100, lambda b: b[: len(b) // 2],
                                     lambda b: b[:8] + b"\xff" * (len(b) - 8)], ids=["garbage", "truncated", "header"])
def test_corrupt_safetensors_is_one_line(tmp_path, weights):
    d = builtin_copy(tmp_path, weights=weights)
    one_line_error(d, "cannot load the weights of .*model.safetensors is corrupt or truncated \\(SafetensorError")


def test_config_not_matching_weights_is_one_line(tmp_path):
    one_line_error(builtin_copy(tmp_path, {"hidden_size": 256}), "cannot load the weights of .*does not match the weights")


def test_other_runtime_errors_keep_their_traceback(tmp_path, monkeypatch):
    # only the size-mismatch RuntimeError is a user's problem; anything else is a bug and must stay visible
    from transformers import AutoModelForCausalLM

    def boom(*a, **k):
        raise RuntimeError("some bug")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", boom)
    with pytest.raises(RuntimeError, match="some bug"):
        load_model(builtin_copy(tmp_path), device="cpu")


def test_folder_without_tokenizer_is_one_line(tmp_path):
    # transformers builds an empty tokenizer (length 1) that turns every text into 0 tokens
    one_line_error(builtin_copy(tmp_path, tokenizer=False), "has no usable tokenizer")


def test_nan_weights_are_one_line_naming_the_tensor(tmp_path):
    model = save_tiny(tmp_path / "m")
    name = next(n for n, p in model.named_parameters() if n.endswith("A_log"))
    with torch.no_grad():
        dict(model.named_parameters())[name][0] = float("nan")
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(UserError, match=rf"{name} holds NaN or inf values$") as e:
        load_model(str(tmp_path / "m"), device="cpu")
    assert "\n" not in str(e.value)
    from staterank.cli import main

    out = tmp_path / "run"  # the command line: exit 2, and no run folder (analyze made a half one)
    assert main(["analyze", "--model", str(tmp_path / "m"), "--prompt", "hello", "--out", str(out)]) == 2
    assert not out.exists()


def test_hub_kernels_are_never_fetched(tmp_path, monkeypatch):
    """transformers >= 5.25 defaults to use_kernels=True and, on a GPU, downloads kernels-community/fla at
    load (network and publisher trust; on the device machine it failed the load). Every path staterank
    loads weights through must turn that off; on CPU the default would fetch nothing, so the flag itself is checked."""
    from transformers import PreTrainedModel

    from staterank.builtin import load_builtin
    from staterank.prune.export import reload

    seen = []
    real = PreTrainedModel.set_use_kernels

    def spy(self, use_kernels, *a, **kw):
        seen.append(bool(use_kernels))
        return real(self, use_kernels, *a, **kw)

    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", spy)
    save_tiny(tmp_path, "qwen3_next", h_k=1, h_v=4, k=8, v=12)
    load_model(str(tmp_path), device="cpu")
    load_model(str(tmp_path), device="auto")
    reload(tmp_path)
    load_builtin(tmp_path)
    assert seen == [False] * 4
