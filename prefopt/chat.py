"""Text and message forms: the one home for what prompts and responses look like.

A prompt or a response is either **text** (``"What is 2 + 3?"``) or **conversational**, a list of
messages (``[{"role": "user", "content": "What is 2 + 3?"}]``; a response is then an assistant message
list). Everything in prefopt that turns one form into the other, reads the text out of a response or
writes a reasoning trace goes through the functions here:

* `is_conversational` -- the test of the message form (a non-empty list of dicts);
* `as_conversation` -- a prompt as the policy sees it: text becomes one user message under a chat template;
* `as_response` -- a sampled text as a completion of a prompt (an assistant message list for a conversation);
* `response_text` / `with_response_text` -- the text of a response, and a response with its text replaced;
* `display_text` -- a prompt as one line of text for tables and logs; `prompt_key` -- a stable key per prompt;
* `Thinking` -- how a response writes its reasoning trace (BVPO), and `ThinkingTokenizer`, a tokenizer that
  renders prompts with reasoning switched on or off.

This module imports nothing from prefopt, so every floor above (and `prefopt.data`) can use it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


def is_conversational(value: Any) -> bool:
    """Whether ``value`` is in the message form: a non-empty list whose items are all dicts (messages)."""
    return isinstance(value, list) and len(value) > 0 and all(isinstance(message, dict) for message in value)


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def as_conversation(tokenizer, prompt: Any) -> Any:
    """The prompt as the policy sees it: message lists stay; text becomes a user message when the
    tokenizer has a chat template, and stays text otherwise."""
    if is_conversational(prompt):
        return list(prompt)
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be text or a message list, got {type(prompt).__name__}")
    return [{"role": "user", "content": prompt}] if uses_chat_template(tokenizer) else prompt


def as_response(prompt: Any, text: str) -> Any:
    """A sampled text as a completion of ``prompt``: an assistant message list for a conversational prompt."""
    return [{"role": "assistant", "content": text}] if is_conversational(prompt) else text


def response_text(response: Any) -> str:
    """The text of a response: the text itself, or its messages' contents joined."""
    if isinstance(response, str):
        return response
    if is_conversational(response):
        return "".join(message["content"] for message in response)
    raise TypeError(f"a response must be text or a message list, got {type(response).__name__}")


def with_response_text(response: Any, text: str) -> Any:
    """``response`` with its text replaced by ``text`` (a message list keeps its first message's role)."""
    if isinstance(response, str):
        return text
    return [{**response[0], "content": text}]


def display_text(prompt: Any) -> str:
    """A prompt as text for a table or a log line: text as is, messages as ``role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{message.get('role', '?')}: {message.get('content', '')}" for message in prompt)


def prompt_key(prompt: Any) -> str:
    """A stable string key of a prompt (text or messages), e.g. to keep per-prompt state or join rows."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


# ----------------------------------------------------------------------------------- reasoning traces


@dataclass(frozen=True)
class Thinking:
    """How a response writes its reasoning trace.

    Args:
        open_tag, close_tag: the tags around a trace in the response text (default ``<think>``, ``</think>``).
        empty_block: the text of an empty thinking block placed before an answer (default
            ``open_tag + "\\n\\n" + close_tag + "\\n\\n"``, what Qwen3 writes with reasoning off).
        template_switch: the chat template variable that turns reasoning on and off (e.g. ``"enable_thinking"``).
            When set, the empty-trace view is rendered by the template with ``{template_switch: False}`` (the
            template writes the empty block) and answers are given without a block. Conversational rows only.
    """

    open_tag: str = "<think>"
    close_tag: str = "</think>"
    empty_block: str | None = None
    template_switch: str | None = None

    def __post_init__(self):
        if not self.open_tag or not self.close_tag:
            raise ValueError("Thinking: open_tag and close_tag must be non-empty strings")
        if self.empty_block is None:
            object.__setattr__(self, "empty_block", f"{self.open_tag}\n\n{self.close_tag}\n\n")
        if not self.empty_block.startswith(self.open_tag) or self.close_tag not in self.empty_block:
            raise ValueError(f"Thinking: empty_block {self.empty_block!r} must be {self.open_tag!r} ... {self.close_tag!r}")

    @property
    def _block(self) -> re.Pattern:
        return re.compile(r"^\s*" + re.escape(self.open_tag) + r"(.*?)" + re.escape(self.close_tag) + r"\s*", re.S)

    def split(self, text: str) -> tuple[str | None, str]:
        """``(trace, answer)`` of a response; trace is None when the response has no thinking block."""
        match = self._block.match(text)
        if match is None:
            return None, text
        return match.group(1).strip(), text[match.end() :]

    def with_empty_block(self, answer: str) -> str:
        """``answer`` behind an empty thinking block (an answer already behind an empty block is kept as is)."""
        trace, bare = self.split(answer)
        if trace:
            raise ValueError(f"expected an answer with an empty or no thinking block, got a trace {trace[:40]!r}")
        return self.empty_block + bare


class ThinkingTokenizer:
    """A tokenizer whose prompts are rendered with reasoning switched on or off, for sampling with
    `prefopt.online.generate` / `annotate` (everything else is the wrapped tokenizer's).

    Reasoning off: with ``thinking.template_switch`` the chat template is rendered with ``{switch: False}``
    (the template writes the empty block); otherwise the empty block is appended to the generation prompt (or
    to a plain-text prompt), so the model answers right after it. Reasoning on: the template gets
    ``{switch: True}`` when there is a switch; otherwise prompts are unchanged (the model opens its trace)."""

    def __init__(self, tokenizer, thinking: Thinking | None = None, *, reasoning: bool):
        self._tokenizer, self._thinking, self._reasoning = tokenizer, thinking or Thinking(), reasoning

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def _suffix(self) -> str:
        return "" if self._reasoning or self._thinking.template_switch else self._thinking.empty_block

    def apply_chat_template(self, messages, *, tokenize=True, return_dict=False, add_generation_prompt=False, **kwargs):
        if self._thinking.template_switch:
            kwargs[self._thinking.template_switch] = self._reasoning
        text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)
        if add_generation_prompt:
            text += self._suffix()
        if not tokenize:
            return text
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return {"input_ids": ids, "attention_mask": [1] * len(ids)} if return_dict else ids

    def __call__(self, text, *args, **kwargs):
        if isinstance(text, str):
            text += self._suffix()
        return self._tokenizer(text, *args, **kwargs)
