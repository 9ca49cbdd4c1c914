"""Progress on long work: prefopt.logprobs.score (held-out evaluation, every scorer) shows a tqdm bar on a
terminal, and stays quiet off a terminal, when asked to wait longer than the call, per call, and when
switched off for the process."""

import io
import sys

import pytest
from transformers.utils import logging as transformers_logging

import prefopt._progress as progress
from helpers_trainer import make_model, make_tokenizer
from prefopt.logprobs import score

PROMPTS, RESPONSES = ["say"] * 5, ["a", "bb", "ccc", "dd", "e"]


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _stderr_of_score(monkeypatch, stream, delay=0.0, **options):
    monkeypatch.setattr(progress, "DELAY_SECONDS", delay)
    monkeypatch.setattr(sys, "stderr", stream)
    result = score(make_model(), make_tokenizer(), PROMPTS, RESPONSES, batch_size=2, **options)
    assert result.logps.shape == (5,)
    return stream.getvalue()


def test_score_shows_rows_done_on_a_terminal(monkeypatch):
    output = _stderr_of_score(monkeypatch, _Terminal(), desc="held-out, before")
    assert "held-out, before" in output and "/5" in output and "row" in output  # rows done of 5


@pytest.mark.parametrize("case", ["not_a_terminal", "fast_call", "per_call", "environment", "transformers_switch"])
def test_score_is_quiet_when_it_should_be(monkeypatch, case):
    stream, delay, options = _Terminal(), 0.0, {}
    if case == "not_a_terminal":
        stream = io.StringIO()
    elif case == "fast_call":
        delay = 600.0
    elif case == "per_call":
        options["progress"] = False
    elif case == "environment":
        monkeypatch.setenv(progress.ENVIRONMENT_SWITCH, "1")
    else:  # what transformers.utils.logging.disable_progress_bar() sets; restored after the test
        monkeypatch.setattr(transformers_logging, "_tqdm_active", False)
    assert _stderr_of_score(monkeypatch, stream, delay=delay, **options) == ""
