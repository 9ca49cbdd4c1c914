"""Text and message forms have one home (`prefopt.chat`): every caller answers "is this a conversation?" alike."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers_trainer import make_tokenizer
from prefopt import chat

MESSAGE = {"role": "user", "content": "say"}


@pytest.mark.parametrize(
    "value, expected",
    [
        ("say", False),
        ([], False),
        ([MESSAGE], True),
        ([MESSAGE, {"role": "assistant", "content": "good"}], True),
        ([MESSAGE, "not a message"], False),  # a list mixing messages and text is neither form
        (["say"], False),
        (None, False),
        ({"role": "user", "content": "say"}, False),
    ],
)
def test_is_conversational_hand_worked(value, expected):
    assert chat.is_conversational(value) is expected


def test_data_validation_uses_the_same_definition():
    from prefopt.data import _validation
    from prefopt.online import sampling

    assert _validation.is_conversational is chat.is_conversational
    assert sampling.is_conversational is chat.is_conversational


@given(st.lists(st.one_of(st.text(max_size=3), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)), max_size=4))
def test_is_conversational_means_a_non_empty_list_of_dicts(value):
    assert chat.is_conversational(value) == (bool(value) and all(isinstance(item, dict) for item in value))


def test_as_conversation_and_as_response():
    tokenizer = make_tokenizer()
    assert chat.as_conversation(tokenizer, "say") == [MESSAGE]
    assert chat.as_conversation(tokenizer, [MESSAGE]) == [MESSAGE]
    tokenizer.chat_template = None
    assert chat.as_conversation(tokenizer, "say") == "say"
    with pytest.raises(TypeError, match="text or a message list"):
        chat.as_conversation(tokenizer, 3)
    assert chat.as_response([MESSAGE], "good") == [{"role": "assistant", "content": "good"}]
    assert chat.as_response("say", "good") == "good"


def test_response_text_round_trip():
    message = [{"role": "assistant", "content": "good good"}]
    assert chat.response_text(message) == "good good"
    assert chat.response_text("good") == "good"
    assert chat.with_response_text(message, "bad") == [{"role": "assistant", "content": "bad"}]
    assert chat.with_response_text("good", "bad") == "bad"
    with pytest.raises(TypeError, match="text or a message list"):
        chat.response_text(5)


def test_display_text_and_prompt_key():
    assert chat.display_text([MESSAGE, {"role": "assistant", "content": "ok"}]) == "user: say\nassistant: ok"
    assert chat.prompt_key([{"content": "say", "role": "user"}]) == chat.prompt_key([MESSAGE])
    assert chat.prompt_key("say") != chat.prompt_key([MESSAGE])
