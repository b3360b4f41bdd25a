"""Reward model: learns the toy pairs, reads the last real token, saves and reloads by path;
reward functions: running normalisation and clipping with checkpointable state."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.rewards.base import CharFractionReward, NormalizedReward
from alignlab.train import train
from conftest import compose


def test_reward_model_learns_toy_pairs_and_reloads(tmp_path):
    cfg = compose(
        [
            "experiment=reward_tiny",
            f"paths.output_dir={tmp_path}",
            "trainer.enable_progress_bar=false",
            "trainer.max_steps=40",
            "trainer.val_check_interval=20",
        ]
    )
    metrics, objs = train(cfg)
    module = objs["module"]
    assert metrics["val/accuracy"] >= 0.875, metrics  # 8 held-out pairs; chance is 0.5
    assert metrics["val/margin"] > 0.5 and metrics["train/loss"] < 0.3, metrics
    assert (tmp_path / "calibration" / "step_000040.png").stat().st_size > 1000
    saved = tmp_path / "policy"
    assert json.loads((saved / "reward_config.json").read_text())["base_model"]["source"] == "tiny"

    # the reward function built from the directory ranks the held-out pairs the same way
    from alignlab.rewards.reward_model import RewardModelReward

    rm = RewardModelReward(str(saved))
    dm = objs["datamodule"]
    items = list(dm.val_set)
    prompts, chosen_txt, rejected_txt = _texts(items, module.tokenizer)
    chosen, rejected = rm(prompts, chosen_txt), rm(prompts, rejected_txt)
    assert (chosen > rejected).float().mean().item() >= 0.875
    # and gives exactly the module's scores
    batch = dm.collator()(items)
    module.eval()
    with torch.no_grad():
        direct = module.score(batch["chosen_input_ids"], batch["chosen_attention_mask"])
    assert torch.allclose(direct, chosen, atol=1e-4)


def _texts(items, tok):
    dec = lambda ids: tok.decode(ids[:-1])  # noqa: E731  (drop the EOS the formatter appended)
    return (
        [x["prompt"] for x in items],
        [dec(x["chosen_ids"]) for x in items],
        [dec(x["rejected_ids"]) for x in items],
    )


def test_score_is_read_at_last_real_token_whatever_the_padding(tiny_lm):
    from alignlab.modules.reward import RewardModule

    module = RewardModule(tiny_lm.model, tiny_lm.tokenizer).eval()
    eos = tiny_lm.tokenizer.eos_token_id
    seq = torch.tensor([[72, 101, 108, 108, 111, eos]])
    with torch.no_grad():
        alone = module.score(seq, torch.ones_like(seq))
        # padded with EOS ids (pad == eos, as for SmolLM2): the mask, not the ids, says where it ends
        padded = torch.cat([seq, torch.full((1, 4), eos)], 1)
        mask = torch.cat([torch.ones_like(seq), torch.zeros(1, 4, dtype=torch.long)], 1)
        assert torch.allclose(module.score(padded, mask), alone, atol=1e-5)
        assert not torch.allclose(module.score(padded, torch.ones_like(padded)), alone, atol=1e-5)


def test_lora_reward_model_roundtrip(tmp_path):
    cfg = compose(
        [
            "experiment=reward_tiny",
            "peft=lora",
            f"paths.output_dir={tmp_path}",
            "logger=none",
            "callbacks=none",
            "trainer.max_steps=3",
            "trainer.enable_progress_bar=false",
        ]
    )
    _, objs = train(cfg)
    assert (tmp_path / "policy" / "adapter_config.json").exists()
    from alignlab.rewards.reward_model import RewardModelReward

    rm = RewardModelReward(str(tmp_path / "policy"))
    module = objs["module"].eval()
    assert any(
        p.abs().sum() > 0 for n, p in module.policy.named_parameters() if "lora_B" in n
    )  # adapter trained
    items = list(objs["datamodule"].val_set)
    batch = objs["datamodule"].collator()(items)
    with torch.no_grad():
        direct = module.score(batch["rejected_input_ids"], batch["rejected_attention_mask"])
    prompts, _, rejected = _texts(items, module.tokenizer)
    assert torch.allclose(rm(prompts, rejected), direct, atol=1e-4)


def test_reward_model_path_errors(tmp_path):
    from alignlab.rewards.reward_model import RewardModelReward

    with pytest.raises(FileNotFoundError, match="not a reward model directory"):
        RewardModelReward(str(tmp_path))


def test_normalized_reward_running_stats_clip_and_state():
    base = CharFractionReward("a")
    assert base(["p", "p", "p"], ["aa", "ab", ""]).tolist() == [1.0, 0.5, 0.0]
    norm = NormalizedReward(base, normalize=True, clip=1.0)
    seen = []
    for batch in (["aaaa", "abbb"], ["bbbb", "aabb", "a"]):
        out = norm(["p"] * len(batch), batch)
        seen += base(["p"] * len(batch), batch).tolist()
        ref = (torch.tensor(seen[-len(batch) :]) - torch.tensor(seen).mean()) / torch.tensor(seen).std()
        assert torch.allclose(out, ref.clamp(-1, 1), atol=1e-6)
    assert norm.moments.count == 5 and norm.moments.mean == pytest.approx(sum(seen) / 5)
    restored = NormalizedReward(CharFractionReward("a"), normalize=True, clip=1.0)
    restored.load_state_dict(norm.state_dict())
    assert restored(["p"], ["ab"]).item() == pytest.approx(norm(["p"], ["ab"]).item())
    with pytest.raises(ValueError, match="positive"):
        NormalizedReward(base, clip=0.0)
