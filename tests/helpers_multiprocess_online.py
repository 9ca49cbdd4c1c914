"""Two INPO rounds of prefopt.online.train_online on a tiny model; run alone or under `accelerate launch`
(tests/test_multiprocess.py).

    python tests/helpers_multiprocess_online.py OUT PER_DEVICE_BATCH
Plain SGD: Adam turns a gradient entry's summation-order difference near zero into a full +-lr step, which
would hide a real mismatch between the runs behind a loose tolerance.
Writes OUT/result.pt (main process): the round history, each round's pairs, the logged training losses and the
trained weights. Sampling, ranking and evaluation run on the main process; every process trains on the saved
round data.
"""

import json
import sys
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers_trainer import config_kwargs, make_model, make_tokenizer  # noqa: E402

from prefopt import PrefOptConfig  # noqa: E402
from prefopt.online import OnlineConfig, train_online  # noqa: E402
from prefopt.rewards import FunctionReward  # noqa: E402

GLOBAL_BATCH, ROUNDS = 4, 2
PROMPTS = ["say", "tell", "please say", "say please", "tell please", "please", "say say", "tell say"]


def good_share(prompt, response) -> float:
    """The share of "good", plus a deterministic tie-breaker (crc32, the same in every process) so that every
    prompt gives a pair and the 8 pairs split evenly over 2 processes."""
    words = response.split()
    return words.count("good") / max(1, len(words)) + 1e-3 * zlib.crc32(response.encode()) / 2**32


def main(output: str, per_device_batch: int) -> None:
    settings = config_kwargs(Path(output), output_dir=output, per_device_train_batch_size=per_device_batch, max_steps=-1,
                             num_train_epochs=2, learning_rate=1e-3, optim="sgd", seed=0, data_seed=0, dataloader_drop_last=True)
    assert len(PROMPTS) % GLOBAL_BATCH == 0
    result = train_online(make_model(), make_tokenizer(), PROMPTS, loss="inpo", reward=FunctionReward(good_share),
                          args=PrefOptConfig(**settings), rounds=ROUNDS, samples_per_prompt=4,
                          config=OnlineConfig(max_new_tokens=6, eval_samples_per_prompt=4))
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        rounds = [json.loads((Path(output) / f"round-{t}" / "round_data.json").read_text())["rows"] for t in range(1, ROUNDS + 1)]
        weights = {name: value.detach().cpu() for name, value in result.model.state_dict().items()}
        torch.save({"history": result.history, "rows": rounds, "weights": weights, "processes": state.num_processes},
                   Path(output) / "result.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
