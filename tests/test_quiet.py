"""prefopt's own code paths raise no third-party deprecation warnings and log no irrelevant noise."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest
from peft import LoraConfig

from helpers_trainer import config_kwargs, make_model, make_tokenizer, pair_dataset
from prefopt import PrefOptConfig, Trainer
from prefopt._quiet import KNOWN_NOISE, activation_checkpointing_disabled, silence_known_noise


@pytest.mark.parametrize("logger_name, prefix", KNOWN_NOISE)
def test_known_third_party_message_is_dropped_and_others_are_kept(caplog, logger_name, prefix):
    silence_known_noise()
    silence_known_noise()  # idempotent
    assert len(logging.getLogger(logger_name).filters) == 1
    with caplog.at_level(logging.WARNING, logger=logger_name):
        logging.getLogger(logger_name).warning(prefix + ": %s. Please make sure ...", "No module named 'kernels'")
        logging.getLogger(logger_name).warning("a different warning of the same library")
    assert [record.getMessage() for record in caplog.records] == ["a different warning of the same library"]


def test_importing_bitsandbytes_offline_logs_nothing():
    """The optional hub kernel bitsandbytes looks for on import is the noise KNOWN_NOISE drops, whatever
    `kernels` version transformers brings (run in a fresh interpreter: bitsandbytes logs only on first import)."""
    code = "import prefopt, bitsandbytes"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.stderr == ""


def test_activation_checkpointing_is_disabled_inside_and_restored_after():
    model = make_model()
    model.activation_checkpointing_enable()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with activation_checkpointing_disabled(model):
            assert not model.is_activation_checkpointing
        assert model.is_activation_checkpointing
        model.activation_checkpointing_disable()
        with activation_checkpointing_disabled(model):  # a model without checkpointing stays without
            pass
        assert not model.is_activation_checkpointing


@pytest.mark.slow
def test_training_with_lora_and_checkpointing_raises_no_deprecation_warning(tmp_path):
    settings = config_kwargs(tmp_path, max_steps=2, gradient_checkpointing=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(
            make_model(), train_dataset=pair_dataset(8), processing_class=make_tokenizer(),
            args=PrefOptConfig(loss="dpo", **settings), peft_config=LoraConfig(r=4, target_modules="all-linear"),
        )
        trainer.train()
    deprecations = [
        f"{w.filename}:{w.lineno}: {w.message}" for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning)) and "deprecated" in str(w.message)
    ]
    assert deprecations == []
