"""Each format adapter on hand-written rows, the registry, column_map, and every kind of source."""

import json

import datasets
import pytest

from prefopt.data import (
    InvalidRowError,
    get_format,
    list_formats,
    load_preferences,
    register_format,
    unregister_format,
)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_format_and_rejects_duplicates_and_unknown_names():
    assert list_formats() == [
        "hh", "ranked", "scored", "shp", "trl", "ultrafeedback", "ultrafeedback_binarized", "ultrafeedback_completions",
    ]
    with pytest.raises(ValueError, match="already registered"):
        register_format("trl", schema="pairwise", consumes=(), description="again")(lambda row: row)
    with pytest.raises(ValueError, match="unknown preference format 'nope'.*hh, ranked"):
        load_preferences([{"chosen": "a", "rejected": "b"}], format="nope")
    with pytest.raises(ValueError, match="schema must be one of"):
        register_format("custom_bad", schema="triples", consumes=(), description="")


def test_a_registered_custom_format_is_used_by_load_preferences():
    @register_format("qa_pairs", schema="pairwise", consumes=("q", "good", "bad"), description="test format")
    def qa_pairs(row):
        return {"prompt": row["q"], "chosen": row["good"], "rejected": row["bad"]}

    try:
        ds = load_preferences([{"q": "2+2?", "good": "4", "bad": "5", "source": "quiz"}], format="qa_pairs")
        assert ds.to_list() == [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "source": "quiz"}]
        assert get_format("qa_pairs").schema == "pairwise"
    finally:
        unregister_format("qa_pairs")
    assert "qa_pairs" not in list_formats()


# --------------------------------------------------------------------------- trl


def test_trl_standard_rows_pass_through_with_scores_and_extra_columns():
    rows = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "score_chosen": 9, "score_rejected": 2, "id": 7}]
    ds = load_preferences(rows, format="trl")
    assert ds.column_names == ["prompt", "chosen", "rejected", "score_chosen", "score_rejected", "id"]
    assert ds[0] == {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "score_chosen": 9.0, "score_rejected": 2.0, "id": 7}


def test_trl_conversational_explicit_prompt():
    row = {
        "prompt": [{"role": "system", "content": "Be brief."}, user("What color is the sky?")],
        "chosen": [assistant("Blue.")],
        "rejected": [assistant("Green.")],
    }
    ds = load_preferences([row], format="trl")
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    assert ds[0] == row


def test_trl_implicit_prompt_conversational_multi_turn_keeps_prompt_ending_on_user_turn():
    shared = [user("Hi"), assistant("Hello! How can I help?"), user("Name a fruit.")]
    row = {"chosen": shared + [assistant("An apple.")], "rejected": shared + [assistant("A chair.")]}
    assert load_preferences([row], format="trl")[0] == {
        "prompt": shared, "chosen": [assistant("An apple.")], "rejected": [assistant("A chair.")],
    }


def test_trl_implicit_prompt_when_completions_share_their_first_assistant_words():
    # the common run of messages ends on the user turn even though both answers begin "Paris"
    row = {"chosen": [user("Capital of France?"), assistant("Paris.")], "rejected": [user("Capital of France?"), assistant("Paris!")]}
    out = load_preferences([row], format="trl")[0]
    assert out["prompt"] == [user("Capital of France?")] and out["chosen"] == [assistant("Paris.")]


def test_trl_implicit_prompt_standard_moves_the_space_into_the_completions():
    row = {"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"}
    assert load_preferences([row], format="trl")[0] == {"prompt": "Q: 2+2? A:", "chosen": " 4", "rejected": " 5"}


def test_trl_string_prompt_next_to_message_lists_is_replaced_by_the_implicit_prompt():
    row = {"prompt": "Capital?", "chosen": [user("Capital?"), assistant("Paris")], "rejected": [user("Capital?"), assistant("Rome")]}
    assert load_preferences([row], format="trl")[0] == {
        "prompt": [user("Capital?")], "chosen": [assistant("Paris")], "rejected": [assistant("Rome")],
    }


# --------------------------------------------------------------------------- hh


def test_hh_single_turn():
    row = {
        "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.",
        "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5.",
    }
    assert load_preferences([row], format="hh")[0] == {
        "prompt": [user("What is 2+2?")], "chosen": [assistant("4.")], "rejected": [assistant("5.")],
    }


def test_hh_multi_turn_shared_turns_become_the_prompt():
    prefix = "\n\nHuman: I need a pasta recipe.\n\nAssistant: Sure, what ingredients do you have?\n\nHuman: Tomatoes and garlic."
    row = {
        "chosen": prefix + "\n\nAssistant: Make a simple tomato-garlic sauce and toss it with spaghetti.",
        "rejected": prefix + "\n\nAssistant: I don't know.",
        "split_hint": "harmless",
    }
    out = load_preferences([row], format="hh")[0]
    assert out == {
        "prompt": [user("I need a pasta recipe."), assistant("Sure, what ingredients do you have?"), user("Tomatoes and garlic.")],
        "chosen": [assistant("Make a simple tomato-garlic sauce and toss it with spaghetti.")],
        "rejected": [assistant("I don't know.")],
        "split_hint": "harmless",
    }


def test_hh_divergence_inside_a_human_turn_backs_the_prompt_up_to_the_last_shared_user_turn():
    row = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Tell a joke\n\nAssistant: Why did the cat sit on the laptop?",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Tell me a joke\n\nAssistant: No.",
    }
    out = load_preferences([row], format="hh")[0]
    assert out["prompt"] == [user("Hi")]
    assert out["chosen"] == [assistant("Hello"), user("Tell a joke"), assistant("Why did the cat sit on the laptop?")]
    assert out["rejected"] == [assistant("Hello"), user("Tell me a joke"), assistant("No.")]


def test_hh_text_without_turn_markers_is_an_unparseable_transcript():
    with pytest.raises(InvalidRowError, match=r"row 0, field 'chosen': unparseable transcript"):
        load_preferences([{"chosen": "just text", "rejected": "\n\nHuman: a\n\nAssistant: b"}], format="hh")


# --------------------------------------------------------------------------- ultrafeedback


def test_ultrafeedback_raw_completions_sorted_by_rating_best_first():
    row = {
        "source": "evol_instruct",
        "instruction": "Name a primary colour.",
        "completions": [
            {"model": "m1", "response": "Green.", "overall_score": 3.5},
            {"model": "m2", "response": "Red.", "overall_score": 8.0},
            {"model": "m3", "response": "Blue.", "overall_score": 7.25},
        ],
    }
    ds = load_preferences([row], format="ultrafeedback")
    assert ds.column_names == ["prompt", "completions", "scores", "source"]
    assert ds[0] == {"prompt": "Name a primary colour.", "completions": ["Red.", "Blue.", "Green."], "scores": [8.0, 7.25, 3.5], "source": "evol_instruct"}


def test_ultrafeedback_rating_option_selects_the_score_key():
    row = {"instruction": "Hi", "completions": [{"response": "a", "overall_score": 1, "fine-grained_score": 4}, {"response": "b", "overall_score": 2, "fine-grained_score": 3}]}
    assert load_preferences([row], format="ultrafeedback")[0]["completions"] == ["b", "a"]
    assert load_preferences([row], format="ultrafeedback", rating="fine-grained_score")[0]["completions"] == ["a", "b"]


def test_ultrafeedback_binarized_message_lists_with_scores():
    row = {
        "prompt": "Is water wet?",
        "prompt_id": "abc",
        "chosen": [user("Is water wet?"), assistant("Water makes things wet.")],
        "rejected": [user("Is water wet?"), assistant("No.")],
        "score_chosen": 8.5,
        "score_rejected": 4.0,
    }
    ds = load_preferences([row], format="ultrafeedback")
    assert ds[0] == {
        "prompt": [user("Is water wet?")],
        "chosen": [assistant("Water makes things wet.")],
        "rejected": [assistant("No.")],
        "score_chosen": 8.5,
        "score_rejected": 4.0,
        "prompt_id": "abc",
    }


def test_ultrafeedback_without_known_columns_names_what_it_needs():
    with pytest.raises(ValueError, match="needs a 'completions' column"):
        load_preferences([{"prompt": "x"}], format="ultrafeedback")


# --------------------------------------------------------------------------- shp


def test_shp_labels_pick_chosen_and_scores_follow():
    rows = [
        {"post_id": "p1", "history": "Why is the sky blue?", "human_ref_A": "Rayleigh scattering.", "human_ref_B": "Paint.", "labels": 1, "score_A": 40, "score_B": 3},
        {"post_id": "p2", "history": "Best pasta shape?", "human_ref_A": "Cubes.", "human_ref_B": "Penne holds sauce well.", "labels": 0, "score_A": 1, "score_B": 12},
    ]
    ds = load_preferences(rows, format="shp")
    assert ds.column_names == ["prompt", "chosen", "rejected", "score_chosen", "score_rejected", "post_id", "labels"]
    assert ds[0] == {"prompt": "Why is the sky blue?", "chosen": "Rayleigh scattering.", "rejected": "Paint.", "score_chosen": 40.0, "score_rejected": 3.0, "post_id": "p1", "labels": 1}
    assert ds[1] == {"prompt": "Best pasta shape?", "chosen": "Penne holds sauce well.", "rejected": "Cubes.", "score_chosen": 12.0, "score_rejected": 1.0, "post_id": "p2", "labels": 0}


def test_shp_label_other_than_0_or_1_is_rejected():
    row = {"history": "q", "human_ref_A": "a", "human_ref_B": "b", "labels": 2}
    with pytest.raises(InvalidRowError, match=r"row 0, field 'labels': label is not 0 or 1"):
        load_preferences([row], format="shp")


# --------------------------------------------------------------------------- ranked / scored


def test_ranked_in_rank_order_and_with_an_explicit_ranking():
    in_order = {"prompt": "Rank these", "completions": ["best", "middle", "worst"]}
    assert load_preferences([in_order], format="ranked")[0] == in_order
    shuffled = {"prompt": "Rank these", "completions": ["middle", "worst", "best"], "ranking": [2, 0, 1], "scores": [5, 1, 9]}
    out = load_preferences([shuffled], format="ranked")[0]
    assert out == {"prompt": "Rank these", "completions": ["best", "middle", "worst"], "scores": [9.0, 5.0, 1.0]}


def test_scored_sorts_by_score_and_keeps_ties_in_source_order():
    row = {"prompt": "Say hi", "responses": ["hey", "hello there", "yo", "greetings"], "scores": [0.5, 0.9, 0.5, 0.1]}
    assert load_preferences([row], format="scored")[0] == {
        "prompt": "Say hi", "completions": ["hello there", "hey", "yo", "greetings"], "scores": [0.9, 0.5, 0.5, 0.1],
    }


# --------------------------------------------------------------------------- column_map and sources


def test_column_map_renames_before_the_adapter_and_rejects_unknown_columns():
    rows = [{"question": "2+2?", "good": "4", "bad": "5"}]
    ds = load_preferences(rows, format="trl", column_map={"question": "prompt", "good": "chosen", "bad": "rejected"})
    assert ds[0] == {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
    with pytest.raises(ValueError, match=r"column_map names column\(s\) \['answer'\]"):
        load_preferences(rows, format="trl", column_map={"answer": "chosen"})


ROWS = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}, {"prompt": "3+3?", "chosen": "6", "rejected": "7"}]


def test_file_sources_json_jsonl_csv_parquet(tmp_path):
    (tmp_path / "rows.json").write_text(json.dumps(ROWS))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "rows.csv").write_text("prompt,chosen,rejected\n2+2?,4,5\n3+3?,6,7\n")
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "rows.parquet"))
    for name in ("rows.json", "rows.jsonl", "rows.parquet"):
        assert load_preferences(tmp_path / name).to_list() == ROWS, name
    # CSV cells are text: "4" stays the string "4"
    assert load_preferences(str(tmp_path / "rows.csv")).to_list() == ROWS
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        load_preferences(tmp_path / "rows.txt")


def test_dataset_datasetdict_and_split_mapping_sources(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])})
    out = load_preferences(dd)
    assert isinstance(out, datasets.DatasetDict) and {k: len(v) for k, v in out.items()} == {"train": 2, "test": 1}
    assert load_preferences(dd, split="test").to_list() == ROWS[:1]
    assert load_preferences(dd["train"]).to_list() == ROWS
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert load_preferences({"train": str(tmp_path / "train.jsonl")}, split="train").to_list() == ROWS
    with pytest.raises(ValueError, match="split 'validation' not in the source"):
        load_preferences(dd, split="validation")
    with pytest.raises(ValueError, match="this source has no splits"):
        load_preferences(ROWS, split="train")


def test_csv_keeps_text_as_text_and_parses_score_columns(tmp_path):
    (tmp_path / "shp.csv").write_text("history,human_ref_A,human_ref_B,labels,score_A,score_B\nPick one,1,2,0,3,10\n")
    assert load_preferences(tmp_path / "shp.csv", format="shp").to_list() == [
        {"prompt": "Pick one", "chosen": "2", "rejected": "1", "score_chosen": 10.0, "score_rejected": 3.0, "labels": 0}
    ]
    (tmp_path / "nan.csv").write_text("prompt,chosen,rejected,score_chosen,score_rejected\nq,a,b,nan,1\n")
    with pytest.raises(InvalidRowError, match=r"nan.csv, line 2 \(row 0\), field 'score_chosen': score is NaN or infinite"):
        load_preferences(tmp_path / "nan.csv")


def test_misused_sources_column_maps_and_options_fail_with_a_hint():
    with pytest.raises(ValueError, match="pass rows as a list of dicts"):
        load_preferences({"prompt": "q", "chosen": "a", "rejected": "b"})
    with pytest.raises(ValueError, match=r"would overwrite existing column\(s\) \['chosen'\]"):
        load_preferences([{"prompt": "q", "chosen": "a", "better": "c", "rejected": "b"}], column_map={"better": "chosen"})
    # swapping two columns is fine: both are mapped
    swapped = load_preferences([{"prompt": "q", "chosen": "a", "rejected": "b"}], column_map={"chosen": "rejected", "rejected": "chosen"})
    assert swapped[0] == {"prompt": "q", "chosen": "b", "rejected": "a"}
    with pytest.raises(ValueError, match=r"format 'trl' takes no option\(s\) \['rating'\]; it accepts: none"):
        load_preferences([{"prompt": "q", "chosen": "a", "rejected": "b"}], format="trl", rating="x")
