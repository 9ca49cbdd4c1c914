"""Tiny in-memory model, tokenizer and preference data for the trainer tests (no Hub access).

The tokenizer is word-level over a fixed vocabulary; the model is a 2-layer Llama with hidden size 32.
The toy task is learnable: after "say" the chosen answer is "good good" and the rejected one "bad bad".
"""

from __future__ import annotations

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = ["say", "tell", "please", "good", "bad", "ok", "meh", "nice", "yes", "no"]
SPECIAL = ["<pad>", "<eos>", "<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "system"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|> {{ message['role'] }} {{ message['content'] }} <|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_model(seed: int = 0, vocab_size: int | None = None) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=vocab_size or len(SPECIAL) + len(WORDS),
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return LlamaForCausalLM(config).float()


def pair_dataset(num_rows: int = 8) -> Dataset:
    """Standard explicit-prompt pairs; chosen/rejected carry a leading space so words stay separate."""
    prompts = ["say", "tell", "please say", "say please"]
    return Dataset.from_dict(
        {
            "prompt": [prompts[i % len(prompts)] for i in range(num_rows)],
            "chosen": [" good good" for _ in range(num_rows)],
            "rejected": [" bad bad" for _ in range(num_rows)],
        }
    )


def conversational_dataset(num_rows: int = 4) -> Dataset:
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "say"}],
                "chosen": [{"role": "assistant", "content": "good good"}],
                "rejected": [{"role": "assistant", "content": "bad bad"}],
            }
            for _ in range(num_rows)
        ]
    )


def kwise_dataset(num_rows: int = 8, with_ranking: bool = False) -> Dataset:
    """Ranked completions best first (or shuffled with a `ranking` giving indices best first)."""
    completions = [" good good", " ok ok", " meh meh", " bad bad"]
    rows = []
    for i in range(num_rows):
        k = 3 + i % 2  # varying K inside a batch exercises the mask
        ranked = completions[:k]
        if with_ranking:
            shuffled = list(reversed(ranked))
            rows.append({"prompt": "say", "completions": shuffled, "ranking": list(range(k))[::-1]})
        else:
            rows.append({"prompt": "say", "completions": ranked})
    return Dataset.from_list(rows)


def config_kwargs(tmp_path, **overrides) -> dict:
    """Settings every trainer test shares: CPU, float32, no checkpointing, no reporting."""
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        bf16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        ref_logps_cache_dir=str(tmp_path / "ref_cache"),
        dataloader_num_workers=0,
        seed=0,
    )
    settings.update(overrides)
    return settings
