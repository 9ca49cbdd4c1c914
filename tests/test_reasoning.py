"""BVPO's two views: the thinking format, how each view is tokenised, the trainer feeding both in one step,
alpha = 1 / 0 equal to DPO on one view, and the auto mixing weight against a hand computation."""

import logging

import pytest
import torch
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers_models import tiny_llama, tiny_tokenizer
from helpers_trainer import config_kwargs
from prefopt import PrefOptConfig, Trainer
from prefopt.losses import LogProbs
from prefopt.chat import Thinking
from prefopt.methods.bvpo.alpha import AutoAlphaCallback, auto_alpha
from prefopt.training.fields import EmptyTraceField

EMPTY = "<think>\n\n</think>\n\n"
# ChatML with a reasoning switch, as Qwen3 writes it: with enable_thinking=False the template itself places an
# empty thinking block after the assistant header (in the generation prompt and before the last answer).
THINKING_TEMPLATE = (
    "{% set off = enable_thinking is defined and not enable_thinking %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' and off %}<think>\n\n</think>\n\n{% endif %}"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if off %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def _rows(conversational=False, count=4):
    rows = []
    for i in range(count):
        a, b = i + 1, i + 2
        row = {
            "prompt": f"Q: {a}+{b}?",
            "chosen": f"<think>{a}+{b}={a + b}</think>A: {a + b}",
            "rejected": f"<think>{a}+{b}={a + b + 1}</think>A: {a + b + 1}",
            "chosen_no_trace": f"A: {a + b}",
            "rejected_no_trace": f"{EMPTY}A: {a + b + 2}",  # an answer may come with its empty block already
        }
        if conversational:
            row = {key: [{"role": "user" if key == "prompt" else "assistant", "content": value}] for key, value in row.items()}
        rows.append(row)
    return rows


def _bound(provider, tokenizer):
    provider.tokenizer, provider.max_length = tokenizer, None
    return provider


def _completion(batch, row, prefix="field_empty/"):
    ids, mask = batch[f"{prefix}input_ids"][row], batch[f"{prefix}completion_mask"][row]
    return ids[mask.bool()].tolist(), ids[(~mask.bool()) & batch[f"{prefix}attention_mask"][row].bool()].tolist()


def test_thinking_splits_traces_and_writes_empty_blocks():
    thinking = Thinking()
    assert thinking.empty_block == EMPTY
    assert thinking.split("<think> 2+3=5 </think>\nA: 5") == ("2+3=5", "A: 5")
    assert thinking.split("A: 5") == (None, "A: 5")
    assert thinking.with_empty_block("A: 5") == EMPTY + "A: 5"
    assert thinking.with_empty_block(EMPTY + "A: 5") == EMPTY + "A: 5"
    with pytest.raises(ValueError, match="got a trace"):
        thinking.with_empty_block("<think>work</think>A: 5")
    custom = Thinking("<reasoning>", "</reasoning>")
    assert custom.empty_block == "<reasoning>\n\n</reasoning>\n\n"
    assert custom.split("<reasoning>x</reasoning>y") == ("x", "y")
    with pytest.raises(ValueError, match="must be"):
        Thinking(empty_block="nothing")


def test_empty_view_of_plain_rows_puts_the_empty_block_before_the_answer():
    tokenizer = tiny_tokenizer()
    batch = _bound(EmptyTraceField(), tokenizer).collate(_rows(), kwise=False, num_responses=2)
    completion, prompt = _completion(batch, 0)
    assert tokenizer.decode(prompt) == "Q: 1+2?"
    assert tokenizer.decode(completion) == EMPTY + "A: 3<|im_end|>"
    rejected, _ = _completion(batch, 4)  # rows are chosen 0..3, then rejected 4..7
    assert tokenizer.decode(rejected) == EMPTY + "A: 5<|im_end|>"  # not a second block


def test_both_views_with_a_template_without_thinking_mode(tmp_path):
    """ChatML has no reasoning switch: the tags are written into the assistant message, in both views."""
    tokenizer = tiny_tokenizer()
    rows = _rows(conversational=True)
    batch = _bound(EmptyTraceField(), tokenizer).collate(rows, kwise=False, num_responses=2)
    completion, prompt = _completion(batch, 0)
    assert tokenizer.decode(prompt) == "<|im_start|>user\nQ: 1+2?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(completion) == EMPTY + "A: 3<|im_end|>\n"
    trainer = _trainer(tmp_path, rows, "bvpo", tokenizer=tokenizer)
    trace = trainer.train_dataset[0]
    assert tokenizer.decode(trace["chosen_ids"]) == "<think>1+2=3</think>A: 3<|im_end|>\n"
    assert tokenizer.decode(trace["prompt_ids"]) == tokenizer.decode(prompt)


def test_both_views_with_a_template_thinking_switch(tmp_path):
    """With the switch off the template writes the empty block after the assistant header: it is part of the
    prompt the answer is scored after, and the answer is the completion. The trace view renders with reasoning on."""
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = THINKING_TEMPLATE
    rows = _rows(conversational=True)
    provider = _bound(EmptyTraceField(Thinking(template_switch="enable_thinking")), tokenizer)
    batch = provider.collate(rows, kwise=False, num_responses=2)
    completion, prompt = _completion(batch, 0)
    assert tokenizer.decode(prompt) == f"<|im_start|>user\nQ: 1+2?<|im_end|>\n<|im_start|>assistant\n{EMPTY}"
    assert tokenizer.decode(completion) == "A: 3<|im_end|>\n"
    rejected, _ = _completion(batch, 4)
    assert tokenizer.decode(rejected) == "A: 5<|im_end|>\n"  # its own empty block is the template's, not repeated
    trainer = _trainer(tmp_path, rows, "bvpo", tokenizer=tokenizer,
                       providers=[EmptyTraceField(Thinking(template_switch="enable_thinking"))])
    trace = trainer.train_dataset[0]
    assert tokenizer.decode(trace["prompt_ids"]) == "<|im_start|>user\nQ: 1+2?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(trace["chosen_ids"]) == "<think>1+2=3</think>A: 3<|im_end|>\n"


def test_template_switch_needs_conversational_rows():
    with pytest.raises(ValueError, match="needs conversational rows"):
        EmptyTraceField(Thinking(template_switch="enable_thinking")).check(_rows()[0], False, ["bvpo"])


def test_empty_trace_columns_must_not_hold_a_trace():
    rows = _rows()
    rows[1]["chosen_no_trace"] = "<think>1+3=4</think>A: 4"
    with pytest.raises(ValueError, match=r"row 1, column 'chosen_no_trace'.*empty \(or no\) thinking block"):
        _bound(EmptyTraceField(), tiny_tokenizer()).collate(rows, kwise=False, num_responses=2)


def _trainer(tmp_path, rows, loss, providers=None, callbacks=None, tokenizer=None, **loss_kwargs):
    return Trainer(tiny_llama(seed=3), train_dataset=Dataset.from_list(rows), processing_class=tokenizer or tiny_tokenizer(),
                   args=PrefOptConfig(loss=loss, beta=0.5, loss_kwargs=loss_kwargs or None, **config_kwargs(tmp_path)),
                   field_providers=providers, callbacks=callbacks)


def _loss_and_gradients(trainer):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}


def _assert_same(first, second):
    (loss, gradients), (other_loss, other_gradients) = first, second
    torch.testing.assert_close(loss, other_loss, rtol=1e-5, atol=1e-6)
    assert gradients.keys() == other_gradients.keys()
    for name in gradients:
        torch.testing.assert_close(gradients[name], other_gradients[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_alpha_one_is_dpo_on_the_trace_view_and_zero_dpo_on_the_empty_view(tmp_path):
    rows = _rows()
    trace_only = [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in rows]
    empty_only = [{"prompt": row["prompt"], "chosen": Thinking().with_empty_block(row["chosen_no_trace"]),
                   "rejected": Thinking().with_empty_block(row["rejected_no_trace"])} for row in rows]
    _assert_same(_loss_and_gradients(_trainer(tmp_path / "a", rows, "bvpo", alpha=1.0)),
                 _loss_and_gradients(_trainer(tmp_path / "b", trace_only, "dpo")))
    _assert_same(_loss_and_gradients(_trainer(tmp_path / "c", rows, "bvpo", alpha=0.0)),
                 _loss_and_gradients(_trainer(tmp_path / "d", empty_only, "dpo")))


def test_missing_empty_trace_columns_name_the_columns_and_the_fallback(tmp_path):
    trace_only = [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in _rows()]
    with pytest.raises(ValueError, match=r"\['chosen_no_trace', 'rejected_no_trace'\].*from_trace_pairs=True"):
        _trainer(tmp_path, trace_only, "bvpo")


@pytest.mark.slow
def test_trace_pairs_fallback_is_explicit_and_scores_the_traced_answers(tmp_path, caplog):
    trace_only = [{key: row[key] for key in ("prompt", "chosen", "rejected")} for row in _rows()]
    with caplog.at_level(logging.WARNING, logger="prefopt.training.fields"):
        fallback = _trainer(tmp_path / "a", trace_only, "bvpo", providers=[EmptyTraceField(from_trace_pairs=True)], alpha=0.0)
    assert "approximates the paper" in caplog.text
    answers = [{"prompt": row["prompt"], "chosen": EMPTY + row["chosen"].split("</think>")[1],
                "rejected": EMPTY + row["rejected"].split("</think>")[1]} for row in trace_only]
    _assert_same(_loss_and_gradients(fallback), _loss_and_gradients(_trainer(tmp_path / "b", answers, "dpo")))


# ------------------------------------------------------------------------------------- alpha = "auto"


class _TwoParameters(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(2))


class _FakeTrainer:
    def __init__(self, model, alpha="auto"):
        from prefopt.losses import combine_losses

        self.model = model
        self.preference_loss = combine_losses(["bvpo"])
        self.loss_hyperparameters = {"bvpo": {"beta": 1.0, "alpha": alpha}}


def test_auto_alpha_matches_a_hand_computation_on_a_two_parameter_model():
    """Two pairs, reference 0, beta 1, theta = (0, 0). Trace margins h_t = x_i . theta with x = (2, 0), (0, 2);
    empty-trace margins h_e = z_i . theta with z = (1, 0), (1, 0). At theta = 0, d/dtheta -log sigma(h) = -x/2:
    g_t = (-1, 0), (0, -1); g_e = (-0.5, 0) twice; g = mean g_t = (-0.5, -0.5).
    g_e - g = (0, 0.5) for both; g_e - g_t = (0.5, 0), (-0.5, 1).
    numerator = mean(<(0, .5), (.5, 0)>, <(0, .5), (-.5, 1)>) = mean(0, 0.5) = 0.25
    denominator = mean(0.25, 1.25) = 0.75  ->  alpha = 1/3."""
    model = _TwoParameters()
    theta = model.theta
    x, z = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    zeros = torch.zeros(2)
    batch = LogProbs(policy=torch.stack([x @ theta, zeros], 1), reference=torch.zeros(2, 2),
                     empty_policy=torch.stack([z @ theta, zeros], 1), empty_reference=torch.zeros(2, 2))
    callback = AutoAlphaCallback(micro_batches=2)
    trainer = _FakeTrainer(model)
    callback.bind_trainer(trainer)
    callback.before_loss(trainer, batch)
    assert callback.alpha == pytest.approx(1 / 3)
    assert callback.loss_hyperparameters() == {"bvpo": {"alpha": pytest.approx(1 / 3)}}
    trace = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    assert auto_alpha(trace, torch.tensor([[-0.5, 0.0], [-0.5, 0.0]])) == pytest.approx(1 / 3)


def test_auto_alpha_needs_alpha_auto_and_two_micro_batches():
    with pytest.raises(ValueError, match="fixed alpha=0.5"):
        AutoAlphaCallback().bind_trainer(_FakeTrainer(_TwoParameters(), alpha=0.5))
    with pytest.raises(ValueError, match="micro_batches must be >= 2"):
        AutoAlphaCallback(micro_batches=1)
    with pytest.raises(ValueError, match="at least 2 micro-batches"):
        auto_alpha(torch.zeros(1, 3), torch.zeros(1, 3))
    assert auto_alpha(torch.ones(3, 2), torch.ones(3, 2)) == 1.0  # identical views: the unbiased one


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6), st.integers(1, 5), st.integers(0, 10_000), st.floats(0.01, 10.0))
def test_auto_alpha_is_the_clipped_minimiser_of_the_estimated_mse(micro_batches, width, seed, scale):
    generator = torch.Generator().manual_seed(seed)
    trace = torch.randn(micro_batches, width, generator=generator, dtype=torch.float64) * scale
    empty = torch.randn(micro_batches, width, generator=generator, dtype=torch.float64)
    alpha = auto_alpha(trace, empty)
    assert 0.0 <= alpha <= 1.0
    unbiased = trace.mean(0)

    def mse(a):
        return ((a * trace + (1 - a) * empty - unbiased) ** 2).sum(1).mean().item()

    grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    best = min(mse(a.item()) for a in grid)
    assert mse(alpha) <= best + 1e-9 * max(1.0, best)


@pytest.mark.slow
def test_auto_alpha_trains_and_is_logged_every_step(tmp_path):
    trainer = _trainer(tmp_path, _rows(count=8), "bvpo", callbacks=[AutoAlphaCallback(micro_batches=2)], alpha="auto")
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss/bvpo" in log]
    assert len(logs) == trainer.args.max_steps
    assert all(0.0 <= log["hyperparameters/bvpo/alpha"] <= 1.0 for log in logs)



# ------------------------------------------------------------------------- building data: annotate twice


def test_thinking_tokenizer_switches_reasoning_in_the_rendered_prompt():
    from prefopt.online import prompt_token_ids
    from prefopt.chat import ThinkingTokenizer

    tokenizer = tiny_tokenizer()
    messages = [{"role": "user", "content": "Q"}]
    header = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    off = ThinkingTokenizer(tokenizer, reasoning=False)  # ChatML: no switch, the block is appended
    assert tokenizer.decode(prompt_token_ids(off, messages)) == header + EMPTY
    assert tokenizer.decode(prompt_token_ids(ThinkingTokenizer(tokenizer, reasoning=True), messages)) == header
    plain = tiny_tokenizer()
    plain.chat_template = None
    assert plain.decode(prompt_token_ids(ThinkingTokenizer(plain, reasoning=False), "Q:")) == "Q:" + EMPTY
    switched = tiny_tokenizer()
    switched.chat_template = THINKING_TEMPLATE
    switch = Thinking(template_switch="enable_thinking")
    assert switched.decode(prompt_token_ids(ThinkingTokenizer(switched, switch, reasoning=False), messages)) == header + EMPTY
    assert switched.decode(prompt_token_ids(ThinkingTokenizer(switched, switch, reasoning=True), messages)) == header


def test_annotate_views_samples_both_views_from_one_model_and_joins_them_by_prompt(tmp_path):
    from prefopt.methods.bvpo.annotation import annotate_views
    from prefopt.rewards import FunctionReward

    reward = FunctionReward(lambda prompt, response: sum(map(ord, response)) % 97)
    result = annotate_views(["Q: 1+2?", "Q: 2+2?"], tiny_llama(), tiny_tokenizer(), reward, n=3, max_new_tokens=6,
                            progress=False)
    assert result.report["rows"] == len(result.rows) == 2 - result.report["prompts_without_both"]
    assert result.report["trace"]["samples"] == result.report["empty_trace"]["samples"] == 6
    for row in result.rows:
        assert row["score_chosen"] > row["score_rejected"] and row["score_chosen_no_trace"] > row["score_rejected_no_trace"]
        assert row["chosen_no_trace"][0]["role"] == "assistant"
    if result.rows:
        trainer = _trainer(tmp_path, result.rows, "bvpo")  # the rows feed BVPO as they are
        loss, _ = _loss_and_gradients(trainer)
        assert torch.isfinite(loss)
