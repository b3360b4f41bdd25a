"""Ties never become training preferences: dropped by default, kept only for soft-label losses."""

from __future__ import annotations

import json

import pytest

from alignlab.data.datamodules import PreferenceDataModule
from alignlab.utils.checks import check_train_config
from alignlab.utils.config import ConfigError
from conftest import compose


def _pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "The film", "chosen": " was great", "rejected": " was bad", "p_chosen": 1.0},
        {"prompt": "The plot", "chosen": " moved fast", "rejected": " dragged on", "p_chosen": 0.8},
        {"prompt": "The cast", "chosen": " was fine", "rejected": " was okay", "p_chosen": 0.5, "tie": True},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_tied_pairs_are_dropped_unless_kept_for_a_soft_loss(tmp_path):
    path = _pairs(tmp_path)
    dropped, _ = PreferenceDataModule(train_path=path, val_path=path).read_rows()
    assert [r["prompt"] for r in dropped] == ["The film", "The plot"]
    kept, _ = PreferenceDataModule(train_path=path, val_path=path, keep_ties=True).read_rows()
    assert [r["p_chosen"] for r in kept] == [1.0, 0.8, 0.5]


@pytest.mark.parametrize(
    "overrides, ok",
    [
        (["experiment=dpo_tiny"], False),  # sigmoid DPO reads no soft label
        (["experiment=dpo_tiny", "algo.loss_type=soft"], True),
        (["experiment=reward_tiny"], True),  # the reward model reads p_chosen by default
        (["experiment=reward_tiny", "algo.soft_labels=false"], False),
    ],
)
def test_keeping_ties_needs_a_soft_label_loss(tmp_path, overrides, ok):
    cfg = compose([*overrides, "data.keep_ties=true", f"paths.output_dir={tmp_path}"])
    if ok:
        check_train_config(cfg)
    else:
        with pytest.raises(ConfigError, match="keep_ties"):
            check_train_config(cfg)
