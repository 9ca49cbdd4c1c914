"""Reference log-probs stored on disk, keyed by what they depend on, so a later run skips the reference pass.

The key (fingerprint) hashes:
  * the reference weights that are actually used (for a PEFT model with the adapter disabled, the base
    weights only, so a freshly initialised adapter does not change the key);
  * the tokenised data: the token ids of every prompt and response, in order (this also covers the
    tokenizer, its chat template and EOS handling, since any change changes the ids);
  * the settings applied after tokenisation: ``max_length``, ``truncation_mode``.

A file ``<cache_dir>/<fingerprint>.pt`` holds a float32 tensor [num_rows, K] (K-wise padding = 0).
Another loss on the same model and data hits the same file, since the loss is not part of the key.

A cache file that cannot be trusted (truncated by a full disk or a killed copy, overwritten with
something else, of the wrong shape for the data, or holding NaN / inf) is a miss, not an error:
`load` logs a warning naming the file and the problem, removes the file and returns None, and the
caller recomputes and saves a good one. It is never loaded with pickle (``weights_only=True``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from typing import Any, Iterable

import torch

logger = logging.getLogger(__name__)

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


class CorruptCacheError(ValueError):
    """A cache file that exists but cannot be used; the message names the file and the problem."""


def read_checked(path: str, num_rows: int | None = None, width: int | None = None) -> torch.Tensor:
    """The tensor in ``path`` after checking it is a finite float [num_rows, width] matrix; else `CorruptCacheError`."""
    try:
        values = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, random bytes, a pickle of something that is not a tensor, ...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "weights_only" in reason or "Weights only load failed" in reason:
            reason = "it holds objects other than one tensor"  # torch's own text would suggest unsafe loading
        raise CorruptCacheError(f"reference cache file {path} is unreadable: {reason[:200]}") from None
    if not isinstance(values, torch.Tensor):
        raise CorruptCacheError(f"reference cache file {path} holds a {type(values).__name__}, not a tensor")
    if values.dim() != 2 or not values.dtype.is_floating_point:
        raise CorruptCacheError(f"reference cache file {path} holds a {values.dtype} tensor of shape {list(values.shape)}, not a float [rows, K] matrix")
    expected = (num_rows if num_rows is not None else values.size(0), width if width is not None else values.size(1))
    if tuple(values.shape) != expected:
        raise CorruptCacheError(f"reference cache file {path} has shape {list(values.shape)}; the data needs {list(expected)}")
    bad = (~torch.isfinite(values)).sum().item()
    if bad:
        raise CorruptCacheError(f"reference cache file {path} holds {bad} NaN / infinite value(s)")
    return values


def load(cache_dir: str, key: str, *, num_rows: int | None = None, width: int | None = None) -> torch.Tensor | None:
    """The stored [num_rows, K] tensor, or None when nothing usable is stored under ``key``.

    ``num_rows`` / ``width`` (K) are the shape the caller's data needs; a file of another shape, or
    one that is unreadable or not finite, is reported (a warning with its path), removed, and
    treated as a miss so that the caller recomputes it.
    """
    path = cache_path(cache_dir, key)
    if not os.path.exists(path):
        return None
    try:
        return read_checked(path, num_rows, width)
    except CorruptCacheError as error:
        logger.warning("%s; removing it and recomputing the reference log-probs", error)
        with contextlib.suppress(FileNotFoundError):  # another process may have removed it first
            os.remove(path)
        return None


def save(cache_dir: str, key: str, values: torch.Tensor) -> str:
    """Write atomically (a concurrent reader never sees half a file); returns the path."""
    os.makedirs(cache_dir, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    os.close(handle)
    torch.save(values.detach().cpu().to(torch.float32), temporary)
    os.replace(temporary, cache_path(cache_dir, key))
    return cache_path(cache_dir, key)
