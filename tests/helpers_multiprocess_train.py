"""Train a tiny model with prefopt.Trainer; run alone or under `accelerate launch` (tests/test_multiprocess.py).

    python tests/helpers_multiprocess_train.py OUT CACHE PER_DEVICE_BATCH
Writes OUT/result.pt (main process): the trained weights and the logged training losses.
K-wise data, a ranking loss that needs the reference, reference log-probs precomputed into CACHE.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers_trainer import config_kwargs, kwise_dataset, make_model, make_tokenizer  # noqa: E402

from prefopt import PrefOptConfig, Trainer  # noqa: E402
from prefopt.losses import get_loss, list_losses  # noqa: E402

GLOBAL_BATCH, STEPS = 4, 3


def main(output: str, cache: str, per_device_batch: int) -> None:
    loss = next(name for name in list_losses() if get_loss(name).kwise and get_loss(name).needs_reference)
    settings = config_kwargs(
        Path(output), per_device_train_batch_size=per_device_batch, max_steps=STEPS, ref_logps_cache_dir=cache,
        precompute_ref_log_probs=True, seed=0, data_seed=0, learning_rate=1e-2, dataloader_drop_last=True,
    )
    trainer = Trainer(make_model(), train_dataset=kwise_dataset(16), processing_class=make_tokenizer(),
                      args=PrefOptConfig(loss=loss, **settings))
    trainer.train()
    if trainer.accelerator.is_main_process:
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        weights = {name: value.detach().cpu() for name, value in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
        reference = torch.tensor([sum(row) for row in trainer.train_dataset["ref_logps"]])
        torch.save({"losses": losses, "weights": weights, "reference": reference, "loss": loss,
                    "processes": trainer.accelerator.num_processes, "misses": trainer.reference_cache.misses}, Path(output) / "result.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
