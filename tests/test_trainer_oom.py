"""A CUDA out-of-memory error in a training step comes back with advice for this run (simulated on CPU)."""

import pytest
import torch

from helpers_trainer import config_kwargs, make_model, make_tokenizer, pair_dataset
from prefopt import PrefOptConfig, Trainer


def _trainer_whose_forward_runs_out_of_memory(tmp_path, **overrides):
    trainer = Trainer(make_model(), train_dataset=pair_dataset(), processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss="dpo", **config_kwargs(tmp_path, max_steps=1, **overrides)))

    def forward(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    # the transformer body, which both the plain forward and the packed one (prefix sharing) run
    trainer.model.model.forward = forward
    return trainer


def test_out_of_memory_is_reraised_with_the_changes_that_would_help(tmp_path):
    trainer = _trainer_whose_forward_runs_out_of_memory(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    with pytest.raises(torch.OutOfMemoryError) as error:
        trainer.train()
    message = str(error.value)
    assert message.startswith("CUDA out of memory. Tried to allocate 2.00 GiB")  # torch's text first: auto_find_batch_size still matches
    assert "--per_device_train_batch_size 2 --gradient_accumulation_steps 4 (now 4 x 2)" in message
    assert "--gradient_checkpointing true" in message
    assert "--quantization 4bit" in message
    assert "--precompute_ref_log_probs true" in message
    assert isinstance(error.value.__cause__, torch.OutOfMemoryError)


def test_advice_leaves_out_what_is_already_in_effect(tmp_path):
    trainer = _trainer_whose_forward_runs_out_of_memory(
        tmp_path, per_device_train_batch_size=1, gradient_checkpointing=True, precompute_ref_log_probs=True
    )
    with pytest.raises(torch.OutOfMemoryError) as error:
        trainer.train()
    message = str(error.value)
    assert "--per_device_train_batch_size" not in message and "--gradient_checkpointing" not in message
    assert "--precompute_ref_log_probs" not in message and "--quantization 4bit" in message


def test_other_errors_pass_through_unchanged(tmp_path):
    trainer = _trainer_whose_forward_runs_out_of_memory(tmp_path)

    def forward(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    trainer.model.model.forward = forward
    with pytest.raises(RuntimeError, match="^shape mismatch$"):
        trainer.train()
