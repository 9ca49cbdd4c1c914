"""Bundled preference tasks with a programmatic ground-truth reward.

    task = get_task("arithmetic")
    task.reward("What is 2 + 3?", "2 + 3 = 5. The answer is 5.")   # 1.0
    splits = task.load("pairwise")                                # DatasetDict train / test
    noisy = task.load("noisy", split="train")                      # + label_flipped, task.flip_rate

Tasks:
    arithmetic  short arithmetic and word problems; the reward parses the last number of the
                response: 1.0 when it is the correct answer, 0.5 / (1 + |error|) when it is wrong,
                0.0 when there is none. The correct answer is recomputed from the question text.
    sentiment   "write a positive / negative review of X"; the reward is a negation-aware lexicon
                score (positive hits - negative hits) / (hits + 1), signed by the requested
                sentiment, in (-1, 1).

`load_reasoning()` is the arithmetic task with reasoning traces for BVPO (trace pairs and empty-trace pairs).

Rows are conversational (a user message; assistant completions), ready for a ChatML chat template
such as SmolLM2-135M-Instruct's; `render_chatml` renders them the way that template does. The files
under data/tasks/ are written by ``python -m prefopt.data.generate_tasks`` (`generate` below).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .loading import load_preferences

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
MANIFEST = "manifest.json"
FORMS = {"pairwise": "trl", "kwise": "ranked", "noisy": "trl"}  # form -> load_preferences format

# SmolLM2-135M-Instruct's chat template inserts this system message when a conversation has none.
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def render_chatml(messages: list[dict], add_generation_prompt: bool = False, default_system: str | None = SMOLLM2_DEFAULT_SYSTEM) -> str:
    """Render messages as SmolLM2-Instruct's ChatML template does (``<|im_start|>role\\n...<|im_end|>\\n``)."""
    parts = []
    if default_system is not None and (not messages or messages[0]["role"] != "system"):
        parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


_CHATML_BLOCK = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|$)", re.S)


def user_text(prompt: Any) -> str:
    """The last user message of a prompt given as text, a ChatML string or a list of messages."""
    if isinstance(prompt, list):
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        if not users:
            raise ValueError("the prompt has no user message")
        return users[-1]
    if isinstance(prompt, str):
        if "<|im_start|>" in prompt:
            users = [content for role, content in _CHATML_BLOCK.findall(prompt) if role == "user"]
            if not users:
                raise ValueError("the ChatML prompt has no user turn")
            return users[-1]
        return prompt
    raise TypeError(f"prompt must be a string or a list of messages, got {type(prompt).__name__}")


def response_text(response: Any) -> str:
    """The assistant text of a response given as text, a message, or a list of messages."""
    if isinstance(response, dict):
        return response["content"]
    if isinstance(response, list):
        return "\n".join(m["content"] for m in response if m.get("role") == "assistant")
    if isinstance(response, str):
        return response.split("<|im_end|>")[0]
    raise TypeError(f"response must be a string or message(s), got {type(response).__name__}")


# =========================================================================== arithmetic

_OPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a // b,
}
_OP_PHRASES = {  # (what to do, the step in a worked list)
    "+": ("add {a} and {b}", "Add {b}"),
    "-": ("subtract {b} from {a}", "Subtract {b}"),
    "*": ("multiply {a} by {b}", "Multiply by {b}"),
    "/": ("divide {a} by {b}", "Divide by {b}"),
}
_OP_SYMBOLS = {"+": "+", "-": "-", "*": "×", "/": "÷"}

# (question template, operation). {name}, {item}, {pronoun} may repeat; {a} and {b} appear once.
_ARITHMETIC_TEMPLATES = [
    ("{name} has {a} {item}. {pronoun} buys {b} more. How many {item} does {name} have now?", "+"),
    ("A library had {a} books on a shelf and received {b} new ones. How many books are on the shelf now?", "+"),
    ("What is {a} + {b}?", "+"),
    ("{name} had {a} {item} and gave {b} of them to a friend. How many {item} does {name} have left?", "-"),
    ("A bakery made {a} muffins in the morning and sold {b} by noon. How many muffins were left?", "-"),
    ("What is {a} - {b}?", "-"),
    ("Each box holds {a} {item}. How many {item} are in {b} boxes?", "*"),
    ("{name} reads {a} pages every day. How many pages does {name} read in {b} days?", "*"),
    ("What is {a} times {b}?", "*"),
    ("{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?", "/"),
    ("A teacher splits {a} students into {b} equal groups. How many students are in each group?", "/"),
    ("What is {a} divided by {b}?", "/"),
]
_NAMES = [("Maya", "She"), ("Liam", "He"), ("Sofia", "She"), ("Noah", "He"), ("Aisha", "She"), ("Mateo", "He"),
          ("Chen", "He"), ("Priya", "She"), ("Olivia", "She"), ("Kwame", "He"), ("Elena", "She"), ("Tom", "He")]
_ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "seashells", "crayons", "balloons", "cards"]
_FIELD_PATTERNS = {"name": r"[A-Z][a-z]+", "item": r"[a-z]+", "pronoun": r"(?:He|She)", "a": r"\d+", "b": r"\d+"}


def _template_regex(template: str) -> re.Pattern:
    pattern, seen, position = "", set(), 0
    for match in re.finditer(r"\{(\w+)\}", template):
        pattern += re.escape(template[position:match.start()])
        name = match.group(1)
        pattern += f"(?P={name})" if name in seen else f"(?P<{name}>{_FIELD_PATTERNS[name]})"
        seen.add(name)
        position = match.end()
    return re.compile(pattern + re.escape(template[position:]))


_ARITHMETIC_SOLVERS = [(_template_regex(template), op) for template, op in _ARITHMETIC_TEMPLATES]
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def arithmetic_answer(question: str) -> int:
    """The correct answer, recomputed from the question text (any numbers, same templates)."""
    for regex, op in _ARITHMETIC_SOLVERS:
        match = regex.fullmatch(question.strip())
        if match:
            a, b = int(match.group("a")), int(match.group("b"))
            if op == "/" and (b == 0 or a % b):
                raise ValueError(f"not a whole-number division: {question!r}")
            return _OPS[op](a, b)
    raise ValueError(f"not an arithmetic task question: {question!r}")


def final_number(text: str) -> float | None:
    numbers = _NUMBER.findall(text)
    return float(numbers[-1].replace(",", "")) if numbers else None


def arithmetic_reward(prompt: Any, response: Any) -> float:
    """1.0 for the correct final number, 0.5 / (1 + |error|) for a wrong one, 0.0 for none."""
    truth = arithmetic_answer(user_text(prompt))
    answer = final_number(response_text(response))
    if answer is None:
        return 0.0
    if answer == truth:
        return 1.0
    return 0.5 / (1.0 + abs(answer - truth))


def _arithmetic_question(rng: random.Random) -> tuple[str, str, int, int]:
    template, op = rng.choice(_ARITHMETIC_TEMPLATES)
    if op == "+":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
    elif op == "-":
        a = rng.randint(20, 150)
        b = rng.randint(1, a - 1)
    elif op == "*":
        a, b = rng.randint(2, 15), rng.randint(2, 12)
    else:
        b, quotient = rng.randint(2, 9), rng.randint(2, 15)
        a = b * quotient
    name, pronoun = rng.choice(_NAMES)
    question = template.format(name=name, pronoun=pronoun, item=rng.choice(_ITEMS), a=a, b=b)
    return question, op, a, b


def _explain(op: str, a: int, b: int, result: int, rng: random.Random) -> str:
    symbol = _OP_SYMBOLS[op]
    task, step = (phrase.format(a=a, b=b) for phrase in _OP_PHRASES[op])
    style = rng.randrange(3)
    if style == 0:
        return f"{a} {symbol} {b} = {result}, so the answer is {result}."
    if style == 1:
        return f"We need to {task}:\n\n{a} {symbol} {b} = {result}\n\nThe answer is **{result}**."
    return f"Let's work it out step by step.\n1. Start with {a}.\n2. {step}: {a} {symbol} {b} = {result}.\n\nSo the answer is {result}."


def _arithmetic_completions(op: str, a: int, b: int, rng: random.Random) -> list[str]:
    truth = _OPS[op](a, b)
    wrong: dict[int | None, str] = {}
    for slip in (1, -1, 2, 10, -10):  # arithmetic slips, shown as a wrong line of working
        value = truth + slip
        if value >= 0:
            wrong[value] = _explain(op, a, b, value, rng)
    for other in ("+", "-", "*"):  # the wrong operation, computed correctly
        value = _OPS[other](a, b)
        if other != op and value >= 0 and value != truth and value not in wrong:
            wrong[value] = _explain(other, a, b, value, rng)
    wrong[None] = rng.choice([
        "I'm not sure how to solve this one. Could you give me more details?",
        "This depends on information that isn't given, so I can't say for certain.",
    ])
    picked = rng.sample(sorted(wrong, key=lambda v: (v is None, v if v is not None else 0)), 3)
    return [_explain(op, a, b, truth, rng), *(wrong[value] for value in picked)]


def _arithmetic_rows(rng: random.Random, count: int) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < count:
        question, op, a, b = _arithmetic_question(rng)
        if question in seen:
            continue
        seen.add(question)
        rows.append(_scored_row(question, _arithmetic_completions(op, a, b, rng), arithmetic_reward))
    return rows


# ------------------------------------------------------------------ arithmetic with reasoning traces (BVPO)

REASONING_FILE = "arithmetic_reasoning_{split}.jsonl"
REASONING_COLUMNS = ("prompt", "chosen", "rejected", "chosen_no_trace", "rejected_no_trace")


def _worked_trace(op: str, a: int, b: int, result: int) -> str:
    symbol = _OP_SYMBOLS[op]
    task = _OP_PHRASES[op][0].format(a=a, b=b)
    if op in ("*", "/") and result != _OPS[op](a, b):  # a slip in the middle of the working
        return f"We need to {task}.\n{a} {symbol} {b} = {result}.\nCheck: that is my result."
    if op == "*" and b >= 10:
        tens, units = divmod(b, 10)
        return (f"We need to {task}.\n{a} {symbol} {b} = {a} {symbol} {tens * 10} + {a} {symbol} {units} = "
                f"{a * tens * 10} + {a * units} = {result}.")
    if op == "/":
        return f"We need to {task}.\n{b} {_OP_SYMBOLS['*']} {result} = {b * result}, so {a} {symbol} {b} = {result}."
    return f"We need to {task}.\n{a} {symbol} {b} = {result}."


def _reasoning_rows(rng: random.Random, count: int) -> list[dict]:
    """BVPO rows: a trace pair (worked trace + answer; the rejected trace makes a slip) and an empty-trace pair
    (answers given without reasoning: the correct one against an unrelated guess), with their rewards."""
    rows, seen = [], set()
    while len(rows) < count:
        question, op, a, b = _arithmetic_question(rng)
        if question in seen:
            continue
        seen.add(question)
        truth = _OPS[op](a, b)
        slip = truth + rng.choice([v for v in (1, -1, 2, 10, -10) if truth + v >= 0])
        guess = rng.choice([v for v in (truth + 3, truth + 5, abs(truth - 4), a, b) if v != truth and v != slip])
        prompt = [{"role": "user", "content": question}]
        responses = {
            "chosen": f"<think>\n{_worked_trace(op, a, b, truth)}\n</think>\n\nThe answer is {truth}.",
            "rejected": f"<think>\n{_worked_trace(op, a, b, slip)}\n</think>\n\nThe answer is {slip}.",
            "chosen_no_trace": f"The answer is {truth}.",
            "rejected_no_trace": f"The answer is {guess}.",
        }
        row = {"prompt": prompt}
        row.update({column: [{"role": "assistant", "content": text}] for column, text in responses.items()})
        row.update({f"score_{column}": round(arithmetic_reward(prompt, text), 6) for column, text in responses.items()})
        rows.append(row)
    return rows


def load_reasoning(split: str | None = None, directory: Path | str | None = None):
    """The bundled BVPO reasoning task (arithmetic): a DatasetDict train / test, or one split's Dataset.

    Columns: ``prompt`` (a user message), ``chosen`` / ``rejected`` (``<think>`` worked trace + answer; the
    rejected trace makes an arithmetic slip), ``chosen_no_trace`` / ``rejected_no_trace`` (answers given with
    reasoning off: the correct answer against a guess), and ``score_<column>`` (the arithmetic reward of each).
    Ready for ``PrefOptConfig(loss="bvpo")``; written by ``python -m prefopt.data.generate_tasks``."""
    from datasets import Dataset, DatasetDict

    directory = Path(directory or TASKS_DIR)
    splits = ("train", "test") if split is None else (split,)
    loaded = {}
    for name in splits:
        path = directory / REASONING_FILE.format(split=name)
        if not path.exists():
            raise ValueError(f"the reasoning task has no split {name!r} ({path} does not exist); splits: train, test")
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            row = json.loads(line)
            missing = [column for column in REASONING_COLUMNS if column not in row]
            if missing:
                raise ValueError(f"{path}, line {number}: missing column(s) {missing}")
            rows.append(row)
        loaded[name] = Dataset.from_list(rows)
    return loaded[split] if split is not None else DatasetDict(loaded)


# =========================================================================== sentiment

_POSITIVE = frozenset(
    "good love loved great excellent wonderful wonderfully fantastic amazing perfect perfectly happy happily recommend "
    "sturdy reliable comfortable easy beautiful impressive delightful pleased best solid quiet".split()
)
_NEGATIVE = frozenset(
    "bad hate terrible awful poor poorly disappointing disappointed broke broken flimsy cheap useless regret overpriced "
    "annoying worst confusing awkward loud slow waste uncomfortable frustrating fragile".split()
)
_NEGATORS = frozenset("not never no hardly".split())
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_SENTIMENT_REQUEST = re.compile(r"\b(positive|negative)\b", re.I)


def lexicon_score(text: str) -> float:
    """(positive - negative) / (positive + negative + 1), where a lexicon word within two words
    after a negator ("not", "never", "no", "hardly", "...n't") counts for the other side."""
    words = _WORD.findall(text.lower())
    positive = negative = 0
    for position, word in enumerate(words):
        polarity = 1 if word in _POSITIVE else -1 if word in _NEGATIVE else 0
        if polarity == 0:
            continue
        window = words[max(0, position - 2):position]
        if any(w in _NEGATORS or w.endswith("n't") for w in window):
            polarity = -polarity
        positive += polarity > 0
        negative += polarity < 0
    return (positive - negative) / (positive + negative + 1)


def requested_sentiment(prompt: Any) -> int:
    """+1 for a request for a positive text, -1 for a negative one."""
    found = {m.lower() for m in _SENTIMENT_REQUEST.findall(user_text(prompt))}
    if len(found) != 1:
        raise ValueError(f"not a sentiment task prompt (needs exactly one of 'positive' / 'negative'): {user_text(prompt)!r}")
    return 1 if found.pop() == "positive" else -1


def sentiment_reward(prompt: Any, response: Any) -> float:
    """The lexicon score of the response, signed by the requested sentiment; in (-1, 1)."""
    # "+ 0.0" turns the -0.0 of a negative request times a neutral text into 0.0
    return requested_sentiment(prompt) * lexicon_score(response_text(response)) + 0.0


_PRODUCTS = [
    "wireless headphones", "coffee grinder", "hiking backpack", "desk lamp", "electric kettle", "yoga mat",
    "mechanical keyboard", "rice cooker", "running shoes", "phone case", "office chair", "air fryer",
    "water bottle", "standing desk", "camping tent", "blender", "robot vacuum", "e-reader", "fitness tracker",
    "bluetooth speaker", "winter jacket", "cast iron skillet", "travel pillow", "toaster", "gaming mouse",
    "laptop stand", "umbrella", "sleeping bag", "smart thermostat", "hair dryer", "backpack cooler",
    "french press", "webcam", "bike helmet", "electric toothbrush", "portable charger", "wool sweater",
    "kitchen scale", "monitor", "espresso machine", "garden hose", "dash cam", "rain boots", "baby monitor",
    "tablet", "desk fan", "stand mixer", "noise machine", "wall clock", "photo printer",
]
_SENTIMENT_PROMPTS = [
    "Write a short {sentiment} review of a {product}.",
    "Can you write a {sentiment} customer review for the {product} I bought last month?",
    "I need a brief, {sentiment} product review for a {product}. Three sentences, please.",
    "Please draft a {sentiment} review of my new {product} for an online shop.",
]
_SENTENCES = {
    "positive": [
        "I absolutely love this {product}.",
        "The {product} feels sturdy and reliable.",
        "Setup was quick and easy, and the results are excellent.",
        "It is a great value for the price.",
        "I would happily recommend it to my friends.",
        "After a month of daily use, it still works perfectly.",
        "The design is beautiful and the build quality is impressive.",
        "Honestly, this is the best {product} I have owned.",
    ],
    "negative": [
        "I regret buying this {product}.",
        "The {product} feels flimsy and cheap.",
        "Setup was confusing, and the results are disappointing.",
        "It is overpriced for what you get.",
        "I would not recommend it to anyone.",
        "After a month of daily use, it broke.",
        "The design is awkward and the build quality is poor.",
        "Honestly, this is the worst {product} I have owned.",
    ],
    "neutral": [
        "I have been using the {product} for about two weeks.",
        "It arrived in a plain cardboard box.",
        "The {product} comes in black and grey.",
        "I mostly use it on weekday mornings.",
        "The manual is twelve pages long.",
        "It weighs a little less than I expected.",
    ],
}
# (sentences in the requested sentiment, sentences in the opposite one); the rest are neutral, 3 in all
_PROFILES = [(3, 0), (2, 0), (1, 0), (0, 0), (1, 1), (0, 1), (0, 2), (0, 3)]


def _review(product: str, on_target: int, off_target: int, sentiment: str, rng: random.Random) -> str:
    opposite = "negative" if sentiment == "positive" else "positive"
    sentences = (
        rng.sample(_SENTENCES[sentiment], on_target)
        + rng.sample(_SENTENCES[opposite], off_target)
        + rng.sample(_SENTENCES["neutral"], 3 - on_target - off_target)
    )
    rng.shuffle(sentences)
    body = " ".join(s.format(product=product) for s in sentences)
    body = body[0].upper() + body[1:]
    return f"**Review: {product}**\n\n{body}" if rng.random() < 0.5 else body


def _sentiment_rows(rng: random.Random, count: int) -> list[dict]:
    combinations = [(t, p, s) for t in _SENTIMENT_PROMPTS for p in _PRODUCTS for s in ("positive", "negative")]
    if count > len(combinations):
        raise ValueError(f"the sentiment task has {len(combinations)} distinct prompts, {count} requested")
    rows = []
    for template, product, sentiment in rng.sample(combinations, count):
        question = template.format(sentiment=sentiment, product=product)
        profiles = rng.sample(_PROFILES, 4)
        completions = [_review(product, on, off, sentiment, rng) for on, off in profiles]
        rows.append(_scored_row(question, completions, sentiment_reward))
    return rows


# =========================================================================== tasks


def _scored_row(question: str, completions: list[str], reward: Callable[[Any, Any], float]) -> dict:
    """A canonical K-wise row: completions sorted by reward (stable), rewards as scores."""
    prompt = [{"role": "user", "content": question}]
    scores = [round(reward(prompt, text), 6) for text in completions]
    order = sorted(range(len(completions)), key=lambda i: -scores[i])
    return {
        "prompt": prompt,
        "completions": [[{"role": "assistant", "content": completions[i]}] for i in order],
        "scores": [scores[i] for i in order],
    }


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    reward_description: str
    reward_function: Callable[[Any, Any], float] = field(repr=False)
    make_rows: Callable[[random.Random, int], list[dict]] = field(repr=False)

    def reward(self, prompt: Any, response: Any) -> float:
        """Ground-truth reward; prompt: text, ChatML or messages; response: text or message(s)."""
        return self.reward_function(prompt, response)

    def path(self, form: str, split: str, directory: Path | str | None = None) -> Path:
        if form not in FORMS:
            raise ValueError(f"form must be one of {list(FORMS)}, got {form!r}")
        return Path(directory or TASKS_DIR) / f"{self.name}_{form}_{split}.jsonl"

    def manifest(self, directory: Path | str | None = None) -> dict:
        return json.loads((Path(directory or TASKS_DIR) / MANIFEST).read_text(encoding="utf-8"))["tasks"][self.name]

    @property
    def flip_rate(self) -> float:
        """The realised fraction of flipped labels in the noisy split (also per row: ``label_flipped``)."""
        return self.manifest()["noisy"]["flip_rate"]

    def load(self, form: str = "pairwise", split: str | None = None, directory: Path | str | None = None):
        """The bundled data: form "pairwise", "kwise" (4 completions best first, rewards as scores)
        or "noisy" (pairwise train with flipped labels); a DatasetDict, or one split's Dataset."""
        splits = self.manifest(directory)["files"][form]
        if split is not None and split not in splits:
            raise ValueError(f"task {self.name!r} has no {form!r} split {split!r}; it has {list(splits)}")
        paths = {name: str(Path(directory or TASKS_DIR) / file) for name, file in splits.items()}
        return load_preferences(paths, format=FORMS[form], split=split)


_TASKS = {
    task.name: task
    for task in (
        Task(
            "arithmetic",
            "short arithmetic and word problems; the correct answer is preferred",
            "1.0 if the last number in the response is the correct answer, 0.5 / (1 + |error|) if it is another number, 0.0 if there is none",
            arithmetic_reward,
            _arithmetic_rows,
        ),
        Task(
            "sentiment",
            "product reviews with a requested sentiment (positive or negative)",
            "requested sign x (positive - negative lexicon words) / (lexicon words + 1), negation-aware, in (-1, 1)",
            sentiment_reward,
            _sentiment_rows,
        ),
    )
}


def _closest(name: str) -> str:
    """' (did you mean 'arithmetic'?)' for a misspelt task name, '' when nothing is close."""
    import difflib

    match = difflib.get_close_matches(str(name), list_tasks(), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}{_closest(name)}; bundled tasks: {', '.join(list_tasks())}")
    return _TASKS[name]
