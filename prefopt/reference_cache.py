"""Reference log-probs stored on disk, keyed by what they depend on, so a later run skips the reference pass.

The key (fingerprint) hashes:
  * the reference weights that are actually used (for a PEFT model with the adapter disabled, the base
    weights only, so a freshly initialised adapter does not change the key);
  * the tokenised data: the token ids of every prompt and response, in order (this also covers the
    tokenizer, its chat template and EOS handling, since any change changes the ids);
  * the settings applied after tokenisation: ``max_length``, ``truncation_mode``.

A file ``<cache_dir>/<fingerprint>.pt`` holds a float32 tensor [num_rows, K] (K-wise padding = 0).
Another loss on the same model and data hits the same file, since the loss is not part of the key.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any, Iterable

import torch

FORMAT_VERSION = "prefopt-ref-logps-1"


def module_digest(module: torch.nn.Module, skip_segments: Iterable[str] = ()) -> str:
    """SHA-256 of a module's state dict (names, dtypes, values), leaving out entries whose dotted name
    contains one of ``skip_segments`` as a component (e.g. PEFT adapter names)."""
    skip = set(skip_segments)
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if skip & set(name.split(".")):
            continue
        tensor = tensor.detach().cpu()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        if tensor.dtype.is_floating_point and tensor.dtype not in (torch.float32, torch.float64):
            tensor = tensor.to(torch.float32)  # numpy has no bfloat16 / float8
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def rows_digest(dataset, columns: Iterable[str]) -> str:
    """SHA-256 of the values of ``columns`` of every row of a `datasets.Dataset`, in order."""
    columns = [column for column in columns if column in dataset.column_names]
    digest = hashlib.sha256(repr(columns).encode())
    for batch in dataset.select_columns(columns).iter(batch_size=1024):
        for column in columns:
            digest.update(repr(batch[column]).encode())
    return digest.hexdigest()


def fingerprint(model_digest: str, data_digest: str, settings: dict[str, Any]) -> str:
    payload = repr((FORMAT_VERSION, model_digest, data_digest, sorted(settings.items())))
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cache_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, f"{key}.pt")


def load(cache_dir: str, key: str) -> torch.Tensor | None:
    """The stored [num_rows, K] tensor, or None when nothing is stored under ``key``."""
    path = cache_path(cache_dir, key)
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def save(cache_dir: str, key: str, values: torch.Tensor) -> str:
    """Write atomically (a concurrent reader never sees half a file); returns the path."""
    os.makedirs(cache_dir, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    os.close(handle)
    torch.save(values.detach().cpu().to(torch.float32), temporary)
    os.replace(temporary, cache_path(cache_dir, key))
    return cache_path(cache_dir, key)
