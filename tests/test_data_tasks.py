"""Bundled tasks: ground-truth rewards on hand-worked cases, the committed files, and the generator's determinism."""

import json
from pathlib import Path

import pytest

from prefopt.data import get_task, list_tasks, render_chatml
from prefopt.data.generate_tasks import NOISE_RATE, NUM_TEST, NUM_TRAIN, generate
from prefopt.data.tasks import TASKS_DIR, arithmetic_answer, final_number, lexicon_score, requested_sentiment

ARITHMETIC = get_task("arithmetic")
SENTIMENT = get_task("sentiment")


def test_task_registry():
    assert list_tasks() == ["arithmetic", "sentiment"]
    with pytest.raises(ValueError, match="unknown task 'chess'; bundled tasks: arithmetic, sentiment"):
        get_task("chess")


@pytest.mark.parametrize(
    "question, answer",
    [
        ("Maya has 12 apples. She buys 7 more. How many apples does Maya have now?", 19),
        ("What is 96 - 88?", 8),
        ("Each box holds 6 crayons. How many crayons are in 4 boxes?", 24),
        ("Sofia shares 42 stamps equally among 7 friends. How many stamps does each friend get?", 6),
        ("A teacher splits 30 students into 5 equal groups. How many students are in each group?", 6),
    ],
)
def test_arithmetic_answer_is_recomputed_from_the_question(question, answer):
    assert arithmetic_answer(question) == answer


def test_arithmetic_answer_rejects_foreign_questions_and_names_that_do_not_repeat():
    with pytest.raises(ValueError, match="not an arithmetic task question"):
        arithmetic_answer("What is the capital of France?")
    with pytest.raises(ValueError, match="not an arithmetic task question"):  # {name} must be the same person twice
        arithmetic_answer("Maya has 12 apples. She buys 7 more. How many apples does Liam have now?")
    with pytest.raises(ValueError, match="not a whole-number division"):
        arithmetic_answer("What is 7 divided by 2?")


def test_arithmetic_reward_on_text_messages_and_chatml():
    question = "What is 40 + 2?"
    assert ARITHMETIC.reward(question, "40 + 2 = 42, so the answer is 42.") == 1.0
    assert ARITHMETIC.reward(question, "The answer is 1,042.") == pytest.approx(0.5 / 1001)
    assert ARITHMETIC.reward(question, "The answer is 44.") == pytest.approx(0.5 / 3)
    assert ARITHMETIC.reward(question, "I can't tell.") == 0.0
    messages = [{"role": "user", "content": question}]
    assert ARITHMETIC.reward(messages, [{"role": "assistant", "content": "It is 42."}]) == 1.0
    assert ARITHMETIC.reward(render_chatml(messages, add_generation_prompt=True), "42<|im_end|>\n") == 1.0


def test_lexicon_score_counts_hits_and_handles_negation():
    assert lexicon_score("I love it. It is great.") == pytest.approx(2 / 3)
    assert lexicon_score("I would not recommend it.") == pytest.approx(-1 / 2)  # negated positive
    # "isn't bad" counts as positive: 2 positive (bad negated, excellent), 1 negative (flimsy)
    assert lexicon_score("It isn't bad at all, it is excellent but flimsy.") == pytest.approx(1 / 4)
    assert lexicon_score("The manual is twelve pages long.") == 0.0


def test_sentiment_reward_is_signed_by_the_requested_sentiment():
    text = "I absolutely love this kettle. It is a great value for the price."
    assert SENTIMENT.reward("Write a short positive review of a kettle.", text) == pytest.approx(2 / 3)
    assert SENTIMENT.reward("Write a short negative review of a kettle.", text) == pytest.approx(-2 / 3)
    neutral = SENTIMENT.reward("Write a short negative review of a kettle.", "It is grey.")
    assert neutral == 0.0 and str(neutral) == "0.0"  # not -0.0
    with pytest.raises(ValueError, match="not a sentiment task prompt"):
        requested_sentiment("Write a positive or negative review.")


def test_render_chatml_matches_smollm2_template():
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert render_chatml(messages) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, messages[0]]
    assert render_chatml(with_system, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("name", ["arithmetic", "sentiment"])
def test_bundled_splits_load_and_agree_with_the_reward(name):
    task = get_task(name)
    kwise = task.load("kwise")
    pairwise = task.load("pairwise")
    assert {k: len(v) for k, v in kwise.items()} == {"train": NUM_TRAIN, "test": NUM_TEST}
    assert {k: len(v) for k, v in pairwise.items()} == {"train": NUM_TRAIN, "test": NUM_TEST}
    train_prompts = {json.dumps(p) for p in kwise["train"]["prompt"]}
    assert not train_prompts & {json.dumps(p) for p in kwise["test"]["prompt"]}
    for row in kwise["test"]:
        assert len(row["completions"]) == 4
        assert [round(task.reward(row["prompt"], c), 6) for c in row["completions"]] == row["scores"]
    for row in pairwise["test"]:
        assert task.reward(row["prompt"], row["chosen"]) > task.reward(row["prompt"], row["rejected"])
    if name == "arithmetic":  # the best completion is always the correct answer
        assert all(scores[0] == 1.0 for scores in kwise["train"]["scores"])


@pytest.mark.parametrize("name", ["arithmetic", "sentiment"])
def test_noisy_split_records_its_flip_rate(name):
    task = get_task(name)
    noisy = task.load("noisy", split="train")
    clean = task.load("pairwise", split="train")
    flipped = noisy["label_flipped"]
    assert task.flip_rate == sum(flipped) / len(flipped) == round(NOISE_RATE * NUM_TRAIN) / NUM_TRAIN
    for noisy_row, clean_row, was_flipped in zip(noisy, clean, flipped):
        assert (noisy_row["chosen"] == clean_row["rejected"]) == was_flipped
    with pytest.raises(ValueError, match="has no 'noisy' split 'test'"):
        task.load("noisy", split="test")


def test_generator_is_deterministic_and_matches_the_committed_files(tmp_path):
    written = generate(tmp_path)
    committed = sorted(p.name for p in TASKS_DIR.iterdir() if p.suffix in (".jsonl", ".json"))
    assert sorted(p.name for p in written) == committed
    for path in written:
        assert path.read_bytes() == (TASKS_DIR / path.name).read_bytes(), f"{path.name} differs: rerun python -m prefopt.data.generate_tasks"
    assert sum(p.stat().st_size for p in written) < 3_000_000


SMOLLM2_TOKENIZERS = sorted(Path.home().glob(".cache/prefopt/models/SmolLM2-135M-Instruct*/tokenizer_config.json"))


@pytest.mark.skipif(not SMOLLM2_TOKENIZERS, reason="no local SmolLM2-135M-Instruct tokenizer (the Hub is not used)")
def test_render_chatml_equals_the_real_smollm2_chat_template():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZERS[0].parent)
    for name in list_tasks():
        row = get_task(name).load("pairwise", split="test")[0]
        assert render_chatml(row["prompt"], add_generation_prompt=True) == tokenizer.apply_chat_template(
            row["prompt"], tokenize=False, add_generation_prompt=True
        )
        assert render_chatml(row["prompt"] + row["chosen"]) == tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)


def test_reasoning_task_has_trace_pairs_and_empty_trace_pairs():
    from prefopt.data.generate_tasks import NUM_REASONING_TEST, NUM_REASONING_TRAIN
    from prefopt.data.tasks import load_reasoning
    from prefopt.chat import Thinking

    splits = load_reasoning()
    assert {name: len(split) for name, split in splits.items()} == {"train": NUM_REASONING_TRAIN, "test": NUM_REASONING_TEST}
    thinking = Thinking()
    for row in splits["test"]:
        texts = {column: row[column][0]["content"] for column in ("chosen", "rejected", "chosen_no_trace", "rejected_no_trace")}
        for column in ("chosen", "rejected"):  # a worked trace, then the answer it reached
            trace, answer = thinking.split(texts[column])
            assert trace and answer.startswith("The answer is ")
            assert final_number(trace) == final_number(answer) or "Check" in trace
        assert all(thinking.split(texts[c])[0] is None for c in ("chosen_no_trace", "rejected_no_trace"))
        assert row["score_chosen"] == row["score_chosen_no_trace"] == 1.0
        assert row["score_rejected"] < 1.0 and row["score_rejected_no_trace"] < 1.0
        for column, text in texts.items():
            assert ARITHMETIC.reward(row["prompt"], text) == pytest.approx(row[f"score_{column}"], abs=1e-6)
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_reasoning("validation")
