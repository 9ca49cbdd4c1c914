"""prefopt.training.reference_cache: a damaged cache file is reported with its path, removed and recomputed."""

import logging
import os
import pickle

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers_trainer import config_kwargs, kwise_dataset, make_model, make_tokenizer, pair_dataset
from prefopt import PrefOptConfig, Trainer
from prefopt.training import reference_cache
from prefopt.losses import get_loss, list_losses

KEY = "0123456789abcdef"


def _store(tmp_path, payload: bytes) -> str:
    path = reference_cache.cache_path(str(tmp_path), KEY)
    with open(path, "wb") as handle:
        handle.write(payload)
    return path


def _saved_bytes(value) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


GOOD = torch.tensor([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]])

DAMAGED = {
    "truncated": _saved_bytes(GOOD)[:-40],
    "empty": b"",
    "garbage": b"\x00\xffnot a torch file at all" * 10,
    "a pickled object": pickle.dumps({"not": "a tensor"}),
    "an arbitrary class": pickle.dumps(logging.Formatter()),
    "a dict of tensors": _saved_bytes({"values": GOOD}),
    "wrong rows": _saved_bytes(GOOD[:2]),
    "wrong width": _saved_bytes(torch.zeros(3, 4)),
    "one dimension": _saved_bytes(GOOD.flatten()),
    "integers": _saved_bytes(GOOD.long()),
    "NaN": _saved_bytes(torch.tensor([[-1.0, float("nan")], [-3.0, -4.0], [-5.0, -6.0]])),
    "inf": _saved_bytes(torch.tensor([[-1.0, -2.0], [float("-inf"), -4.0], [-5.0, -6.0]])),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED))
def test_a_damaged_file_is_a_reported_miss_and_is_removed(tmp_path, caplog, damage):
    path = _store(tmp_path, DAMAGED[damage])
    with caplog.at_level(logging.WARNING, logger="prefopt.training.reference_cache"):
        assert reference_cache.load(str(tmp_path), KEY, num_rows=3, width=2) is None
    (message,) = [record.getMessage() for record in caplog.records]
    assert path in message and "recomputing" in message
    assert "weights_only=False" not in message and "weights_only" not in message
    assert not os.path.exists(path)


def test_a_good_file_loads_and_shape_is_checked_only_where_asked(tmp_path):
    reference_cache.save(str(tmp_path), KEY, GOOD)
    assert torch.equal(reference_cache.load(str(tmp_path), KEY, num_rows=3, width=2), GOOD)
    assert torch.equal(reference_cache.load(str(tmp_path), KEY), GOOD)
    assert reference_cache.load(str(tmp_path), "missing", num_rows=3, width=2) is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=600), cut=st.integers(min_value=0, max_value=2000))
def test_random_bytes_or_any_prefix_of_a_good_file_never_load_and_never_raise(tmp_path, payload, cut):
    good = _saved_bytes(GOOD)
    for candidate in (payload, good[: min(cut, len(good) - 1)]):
        _store(tmp_path, candidate)
        assert reference_cache.load(str(tmp_path), KEY, num_rows=3, width=2) is None


def _precomputing_trainer(tmp_path, dataset, loss="dpo"):
    return Trainer(
        make_model(), train_dataset=dataset, processing_class=make_tokenizer(),
        args=PrefOptConfig(loss=loss, **config_kwargs(tmp_path, precompute_ref_log_probs=True, max_steps=1)),
    )


@pytest.mark.parametrize("kwise", [False, True], ids=["pairs", "kwise"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong rows", "NaN"])
def test_the_trainer_recomputes_a_damaged_cache_and_stores_a_good_one(tmp_path, caplog, kwise, damage):
    loss = next(n for n in list_losses() if get_loss(n).kwise) if kwise else "dpo"
    make_data = (lambda: kwise_dataset(4)) if kwise else pair_dataset
    column = "ref_logps" if kwise else "ref_chosen_logps"
    first = _precomputing_trainer(tmp_path, make_data(), loss)
    expected = first.train_dataset[column]
    path = reference_cache.cache_path(first.args.ref_logps_cache_dir, first.reference_fingerprint(first.train_dataset))
    good = open(path, "rb").read()
    replacement = {"truncated": good[: len(good) // 2], "garbage": os.urandom(len(good)),
                   "wrong rows": _saved_bytes(torch.zeros(1, 2)),
                   "NaN": _saved_bytes(torch.full(torch.load(path, weights_only=True).shape, float("nan")))}[damage]
    with open(path, "wb") as handle:
        handle.write(replacement)

    with caplog.at_level(logging.WARNING, logger="prefopt.training.reference_cache"):
        second = _precomputing_trainer(tmp_path, make_data(), loss)
    assert second.reference_cache.misses == 1 and any(path in r.getMessage() for r in caplog.records)
    assert second.train_dataset[column] == expected
    third = _precomputing_trainer(tmp_path, make_data(), loss)  # the recomputed file is good again
    assert third.reference_cache.hits == 1
