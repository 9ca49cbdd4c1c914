"""Turn a CUDA out-of-memory error into one that says what to change, with this run's values.

The error is re-raised as the same type (``torch.OutOfMemoryError``) with torch's message first, so
code that catches it (``auto_find_batch_size``) still does; the advice lists only the changes that
are not already in effect, most effective first.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def out_of_memory_advice(trainer) -> list[str]:
    """Concrete changes that lower the peak memory of ``trainer``'s training step, given its settings."""
    args = trainer.args
    batch, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    advice = []
    if batch > 1:
        advice.append(
            f"lower the batch size and keep the global batch: --per_device_train_batch_size {max(1, batch // 2)} "
            f"--gradient_accumulation_steps {accumulation * 2} (now {batch} x {accumulation})"
        )
    if not args.gradient_checkpointing:
        advice.append("recompute activations in the backward pass: --gradient_checkpointing true")
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        advice.append("load the base weights in 4 bits and train a LoRA adapter: --quantization 4bit --use_lora true "
                      "(prefopt.load_model(..., quantization='4bit', lora=True))")
    if trainer.preference_loss.needs_reference and not args.precompute_ref_log_probs:
        advice.append("compute the reference log-probs once before training instead of a reference model in memory: "
                      "--precompute_ref_log_probs true")
    if args.max_length is not None:
        advice.append(f"cut sequences shorter: --max_length {max(1, args.max_length // 2)} (now {args.max_length})")
    return advice


@contextlib.contextmanager
def advise_on_out_of_memory(trainer) -> Iterator[None]:
    """Re-raise ``torch.OutOfMemoryError`` from the block with `out_of_memory_advice` appended."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        lines = "\n".join(f"  - {item}" for item in out_of_memory_advice(trainer))
        raise torch.OutOfMemoryError(f"{error}\n\nprefopt: the training step ran out of accelerator memory. To fit, try:\n{lines}") from error
