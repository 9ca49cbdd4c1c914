"""prefopt.rewards: CDR's density-ratio reward against a hand computation, function and classifier rewards, oracles."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from helpers_trainer import make_model, make_tokenizer
from prefopt.rewards import BradleyTerryOracle, DensityRatioReward, FunctionReward, JudgeOracle, RewardModel


def hand_logp(model, tokenizer, messages, response: str) -> float:
    """sum_t log p(y_t | x~, y_<t) over the response tokens, from the full-vocabulary softmax, one position at a time.

    Prompt tokens = the chat template with the generation prompt; response tokens = what the template adds
    for the assistant turn (its text, the end-of-turn marker)."""
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=True,
                                             return_dict=True)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full_ids])).logits[0].double()
    total = 0.0
    for position in range(len(prompt_ids), len(full_ids)):
        total += torch.log_softmax(logits[position - 1], dim=-1)[full_ids[position]].item()
    return total


PROMPTS = ["say", "tell please"]
RESPONSES = ["good good", "bad ok"]


def test_density_ratio_is_strong_minus_weak_response_logps():
    strong, weak, tokenizer = make_model(seed=1), make_model(seed=2), make_tokenizer()
    reward = DensityRatioReward(strong, weak, tokenizer)
    expected = [
        hand_logp(strong, tokenizer, [{"role": "user", "content": p}], r) - hand_logp(weak, tokenizer, [{"role": "user", "content": p}], r)
        for p, r in zip(PROMPTS, RESPONSES)
    ]
    torch.testing.assert_close(reward(PROMPTS, RESPONSES).double(), torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=0)


def test_density_ratio_scores_both_models_on_the_same_customised_prompt():
    """system prompt + criteria form one system message; exemplars are earlier user/assistant turns."""
    strong, weak, tokenizer = make_model(seed=1), make_model(seed=2), make_tokenizer()
    reward = DensityRatioReward(strong, weak, tokenizer, system_prompt="nice", criteria=["good"],
                                exemplars=[("say", "good")])
    system = "nice\n\nCriteria:\n- good"
    expected = []
    for prompt, response in zip(PROMPTS, RESPONSES):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": "say"},
                    {"role": "assistant", "content": "good"}, {"role": "user", "content": prompt}]
        expected.append(hand_logp(strong, tokenizer, messages, response) - hand_logp(weak, tokenizer, messages, response))
    actual = reward(PROMPTS, RESPONSES).double()
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=0)
    plain = DensityRatioReward(strong, weak, tokenizer)(PROMPTS, RESPONSES).double()
    assert not torch.allclose(actual, plain)  # the customisation changes the reward


def test_density_ratio_of_an_adapter_over_its_base():
    """weak=None: the PEFT model with its adapter (strong) against the same model with it disabled (weak)."""
    tokenizer = make_tokenizer()
    base = make_model(seed=1)
    base_copy = copy.deepcopy(base)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    strong = get_peft_model(base, lora)
    reward = DensityRatioReward(strong, None, tokenizer)
    expected = [
        hand_logp(strong, tokenizer, [{"role": "user", "content": p}], r) - hand_logp(base_copy, tokenizer, [{"role": "user", "content": p}], r)
        for p, r in zip(PROMPTS, RESPONSES)
    ]
    actual = reward(PROMPTS, RESPONSES).double()
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=0)
    assert actual.abs().min() > 1e-3  # the adapter is not the identity
    two_models = DensityRatioReward(strong, base_copy, tokenizer)(PROMPTS, RESPONSES).double()
    torch.testing.assert_close(actual, two_models, atol=1e-5, rtol=0)


def test_density_ratio_without_a_peft_strong_model_needs_a_weak_one():
    with pytest.raises(ValueError, match="PEFT"):
        DensityRatioReward(make_model(), None, make_tokenizer())


def test_function_reward_per_pair_and_batched_and_non_finite_values():
    reward = FunctionReward(lambda prompt, response: response.count("good"))
    assert reward(["a", "b"], ["good good", "bad"]).tolist() == [2.0, 0.0]
    batched = FunctionReward(lambda prompts, responses: [len(r) for r in responses], batched=True)
    assert batched(["a", "b"], ["xy", "z"]).tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="pair 1"):
        FunctionReward(lambda p, r: float("nan") if r == "bad" else 1.0)(["a", "b"], ["good", "bad"])


def test_function_reward_wraps_a_bundled_tasks_ground_truth():
    from prefopt.data import get_task

    task = get_task("arithmetic")
    prompt = [{"role": "user", "content": "What is 2 + 3?"}]
    values = FunctionReward(task.reward)([prompt, prompt], ["The answer is 5.", "The answer is 7."])
    assert values[0] == 1.0 and values[1] < 1.0


def test_reward_model_reads_the_first_logit_of_a_sequence_classifier():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    classifier = LlamaForSequenceClassification(LlamaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
        vocab_size=len(tokenizer), max_position_embeddings=64, pad_token_id=0, num_labels=1))
    reward = RewardModel(classifier, tokenizer)
    values = reward(PROMPTS, RESPONSES)
    for index, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                                             tokenize=False)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            assert values[index].item() == pytest.approx(classifier(**ids).logits[0, 0].item(), abs=1e-5)


def test_bradley_terry_oracle_is_a_logistic_of_the_reward_difference():
    # rewards 2 vs 0 at temperature 2: sigmoid(1) = 0.7311; 0 vs 2: sigmoid(-1) = 0.2689
    oracle = BradleyTerryOracle(FunctionReward(lambda p, r: r.count("good")), temperature=2.0)
    probabilities = oracle(["x", "x"], ["good good", "bad"], ["bad", "good good"])
    torch.testing.assert_close(probabilities, torch.tensor([0.7310586, 0.2689414]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="temperature"):
        BradleyTerryOracle(oracle, temperature=0.0)


def test_judge_oracle_takes_any_pairwise_judge():
    oracle = JudgeOracle(lambda prompt, first, second: len(first) > len(second))
    assert oracle(["x", "x"], ["long answer", "a"], ["short", "bb"]).tolist() == [1.0, 0.0]
    assert JudgeOracle(lambda p, a, b: 0.25)(["x"], ["a"], ["b"]).tolist() == [0.25]
    with pytest.raises(ValueError, match="probability"):
        JudgeOracle(lambda p, a, b: 2.0)(["x"], ["a"], ["b"])
