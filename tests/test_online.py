"""prefopt.online: sampling (determinism, n, max_new_tokens, chat template, long prompts) and annotation
(pairing rules, ties never become preferences, K-wise schema, rows the Trainer trains on)."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers_trainer import config_kwargs, make_model, make_tokenizer
from prefopt.online import PAIRINGS, Annotation, PromptTooLongError, SamplingConfig, annotate, generate, pair_samples
from prefopt.rewards import FunctionReward

PROMPTS = ["say", "tell", "please say"]


def test_generate_is_deterministic_for_a_seed_and_honours_n_and_max_new_tokens():
    model, tokenizer = make_model(), make_tokenizer()
    first = generate(model, tokenizer, PROMPTS, n=3, max_new_tokens=4, seed=7, batch_size=2, progress=False)
    again = generate(model, tokenizer, PROMPTS, n=3, max_new_tokens=4, seed=7, batch_size=2, progress=False)
    other = generate(model, tokenizer, PROMPTS, n=3, max_new_tokens=4, seed=8, batch_size=2, progress=False)
    assert first == again and first != other
    assert [len(responses) for responses in first] == [3, 3, 3]
    for responses in first:
        for response in responses:  # word-level tokenizer: one token per word
            assert len(tokenizer(response, add_special_tokens=False)["input_ids"]) <= 4


def test_generate_samples_from_a_lora_model_with_its_adapter():
    from peft import LoraConfig, get_peft_model

    tokenizer = make_tokenizer()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    policy = get_peft_model(make_model(), lora)
    first = generate(policy, tokenizer, PROMPTS, n=2, max_new_tokens=4, seed=3, progress=False)
    assert first == generate(policy, tokenizer, PROMPTS, n=2, max_new_tokens=4, seed=3, progress=False)
    with policy.disable_adapter():
        base = generate(policy, tokenizer, PROMPTS, n=2, max_new_tokens=4, seed=3, progress=False)
    assert base == generate(make_model(), tokenizer, PROMPTS, n=2, max_new_tokens=4, seed=3, progress=False)


def test_generate_leaves_the_global_rng_and_the_training_mode_alone():
    model, tokenizer = make_model(), make_tokenizer()
    model.train()
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    generate(model, tokenizer, PROMPTS[:1], n=2, max_new_tokens=2, progress=False)
    assert torch.rand(1) == expected and model.training


def _prompts_seen_by(model, tokenizer, prompts, **options):
    seen = []
    original = model.generate

    def spy(**kwargs):
        seen.extend(tokenizer.decode(row[mask.bool()]) for row, mask in zip(kwargs["input_ids"], kwargs["attention_mask"]))
        return original(**kwargs)

    model.generate = spy
    generate(model, tokenizer, prompts, n=1, max_new_tokens=2, progress=False, **options)
    return seen


def test_generate_uses_the_chat_template_when_the_tokenizer_has_one():
    model, tokenizer = make_model(), make_tokenizer()
    assert _prompts_seen_by(model, tokenizer, ["say"]) == ["<|im_start|> user say <|im_end|> <|im_start|> assistant"]
    messages = [{"role": "system", "content": "nice"}, {"role": "user", "content": "say"}]
    assert _prompts_seen_by(model, tokenizer, [messages]) == [
        "<|im_start|> system nice <|im_end|> <|im_start|> user say <|im_end|> <|im_start|> assistant"
    ]
    tokenizer.chat_template = None
    assert _prompts_seen_by(model, tokenizer, ["say please"]) == ["say please"]


def test_generate_reports_prompts_that_exceed_the_context_instead_of_cutting_them():
    model, tokenizer = make_model(), make_tokenizer()  # 64 positions
    long_prompt = " ".join(["please"] * 60)
    with pytest.raises(PromptTooLongError, match=r"prompt 1 \(\d+ tokens\)") as error:
        generate(model, tokenizer, ["say", long_prompt], n=1, max_new_tokens=8, progress=False)
    assert error.value.indices == [1]
    skipped = generate(model, tokenizer, ["say", long_prompt], n=2, max_new_tokens=8, on_too_long="skip", progress=False)
    assert len(skipped[0]) == 2 and skipped[1] == []


# ------------------------------------------------------------------------------------------- pairing


def _report():
    return {"ties": 0, "prompts_all_tied": 0}


def test_best_vs_random_draws_the_rejected_among_strictly_worse_samples():
    responses, scores = ["a", "b", "c", "d"], [0.5, 2.0, 2.0, 1.0]  # b and c tie for best: c is never rejected
    rejected, report = set(), _report()
    for seed in range(40):
        row = pair_samples("x", responses, scores, "best_vs_random", random.Random(seed), report)
        assert row["chosen"] == "b" and row["score_chosen"] == 2.0
        rejected.add(row["rejected"])
    assert rejected == {"a", "d"} and report == {"ties": 40, "prompts_all_tied": 0}


def test_best_vs_worst_counts_ties_at_both_ends():
    report = _report()
    row = pair_samples("x", ["a", "b", "c", "d"], [3.0, 0.0, 3.0, 0.0], "best_vs_worst", random.Random(0), report)
    assert (row["chosen"], row["rejected"]) == ("a", "b") and report["ties"] == 2


def test_ranked_keeps_one_sample_per_distinct_score_best_first():
    report = _report()
    row = pair_samples("x", ["a", "b", "c", "d"], [1.0, 3.0, 1.0, 2.0], "ranked", random.Random(0), report)
    assert row == {"prompt": "x", "completions": ["b", "d", "a"], "scores": [3.0, 2.0, 1.0]} and report["ties"] == 1


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_all_tied_samples_make_no_row(pairing):
    report = _report()
    assert pair_samples("x", ["a", "b", "c"], [1.0, 1.0, 1.0], pairing, random.Random(0), report) is None
    assert report["prompts_all_tied"] == 1


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.integers(min_value=-3, max_value=3).map(float), min_size=2, max_size=8),
       pairing=st.sampled_from(PAIRINGS), seed=st.integers(0, 1000))
def test_no_row_ever_prefers_a_response_over_an_equal_score(scores, pairing, seed):
    responses = [f"r{i}" for i in range(len(scores))]
    row = pair_samples("x", responses, scores, pairing, random.Random(seed), _report())
    if len(set(scores)) == 1:
        assert row is None
    elif pairing == "ranked":
        assert row["scores"] == sorted(set(scores), reverse=True)
        assert [scores[int(c[1:])] for c in row["completions"]] == row["scores"]
    else:
        assert row["score_chosen"] == max(scores) > row["score_rejected"]
        assert scores[int(row["chosen"][1:])] == row["score_chosen"]
        assert scores[int(row["rejected"][1:])] == row["score_rejected"]
        if pairing == "best_vs_worst":
            assert row["score_rejected"] == min(scores)


# ---------------------------------------------------------------------------------------- annotation


def _good_count(prompt, response):
    return response.count("good")


def test_annotate_emits_canonical_pairwise_rows_with_scores_and_a_report():
    model, tokenizer = make_model(), make_tokenizer()
    result = annotate(PROMPTS, model, tokenizer, FunctionReward(_good_count), n=6, max_new_tokens=6, seed=0, progress=False)
    report = result.report
    assert report["prompts"] == 3 and report["samples"] == 18 and report["rows"] == len(result.rows)
    for row in result.rows:
        assert set(row) == {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}
        assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
        assert row["score_chosen"] > row["score_rejected"]
        assert row["score_chosen"] == _good_count(None, row["chosen"][0]["content"])
    again = annotate(PROMPTS, model, tokenizer, FunctionReward(_good_count), n=6, max_new_tokens=6, seed=0, progress=False)
    assert again.rows == result.rows


def test_annotate_ranked_rows_load_as_the_kwise_schema(tmp_path):
    from prefopt.data import load_preferences

    model, tokenizer = make_model(), make_tokenizer()
    result = annotate(PROMPTS, model, tokenizer, FunctionReward(_good_count), n=8, pairing="ranked", max_new_tokens=6,
                      progress=False)
    assert result.rows
    path = result.to_jsonl(tmp_path / "ranked.jsonl")
    loaded = load_preferences(str(path), format="ranked")
    assert list(loaded["scores"]) == [row["scores"] for row in result.rows]


def test_annotate_counts_prompts_whose_samples_all_tie():
    model, tokenizer = make_model(), make_tokenizer()
    result = annotate(PROMPTS, model, tokenizer, FunctionReward(lambda p, r: 1.0), n=3, max_new_tokens=3, progress=False)
    assert result.rows == [] and result.report["prompts_all_tied"] == 3 and result.report["ties"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("pairing, loss", [("best_vs_random", "cdr"), ("ranked", "plackett_luce")])
def test_annotated_rows_train_with_the_trainer(tmp_path, pairing, loss):
    from prefopt import PrefOptConfig, Trainer

    model, tokenizer = make_model(), make_tokenizer()
    result = annotate(PROMPTS * 2, model, tokenizer, FunctionReward(_good_count), n=8, pairing=pairing,
                      max_new_tokens=6, progress=False)
    assert len(result.rows) >= 2
    trainer = Trainer(model, train_dataset=result.dataset, processing_class=tokenizer,
                      args=PrefOptConfig(loss=loss, **config_kwargs(tmp_path, max_steps=1, per_device_train_batch_size=2)))
    trainer.train()
    assert trainer.state.global_step == 1


def test_annotation_writes_jsonl(tmp_path):
    import json

    rows = [{"prompt": "x", "chosen": "a", "rejected": "b", "score_chosen": 1.0, "score_rejected": 0.0}]
    path = Annotation(rows, {}).to_jsonl(tmp_path / "sub" / "out.jsonl")
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows


# ---------------------------------------------------------------------------------------- sampling settings


@pytest.mark.parametrize("field, value", [("n", 0), ("max_new_tokens", 0), ("batch_size", -1), ("temperature", -0.1),
                                          ("top_p", 0.0), ("top_p", 1.5), ("seed", 1.5), ("n", True)])
def test_sampling_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"SamplingConfig.{field}"):
        SamplingConfig(**{field: value})


def test_sampling_options_override_a_config_and_unknown_ones_are_named():
    base = SamplingConfig(n=3, seed=5)
    assert SamplingConfig.of(base, max_new_tokens=7, seed=None) == SamplingConfig(n=3, seed=5, max_new_tokens=7)
    with pytest.raises(TypeError, match=r"\['max_tokens'\]"):
        SamplingConfig.of(None, max_tokens=3)
    with pytest.raises(TypeError, match="must be a SamplingConfig"):
        SamplingConfig.of({"n": 2})


def test_every_sampler_takes_its_defaults_from_sampling_config(monkeypatch):
    """One set of defaults: the callbacks, the round loop and annotate start from SamplingConfig() (annotate and the
    loop set only their own sample count)."""
    from prefopt.callbacks import SampleTableCallback, WinRateCallback
    from prefopt.online import OnlineConfig, annotation

    defaults = SamplingConfig()
    assert WinRateCallback(PROMPTS, FunctionReward(len)).sampling == defaults
    assert SampleTableCallback(PROMPTS).sampling == defaults
    assert OnlineConfig().sampling(defaults.n, defaults.seed) == defaults
    seen = []
    monkeypatch.setattr(annotation, "generate", lambda model, tokenizer, prompts, sampling, **kw: seen.append(sampling) or [[] for _ in prompts])
    annotation.annotate(PROMPTS, None, make_tokenizer(), FunctionReward(len), progress=False)
    annotation.annotate(PROMPTS, None, make_tokenizer(), FunctionReward(len), sampling=SamplingConfig(n=3), progress=False)
    assert seen == [defaults.replace(n=annotation.ANNOTATION_SAMPLES), SamplingConfig(n=3)]
