"""PPO's value function initialised from the reward model (Ouyang et al. 2022, InstructGPT; Huang et al.
2024, "The N+ implementation details of RLHF with PPO").

The reward model is a backbone (a LoRA adapter on the base, or full weights) with a scalar head
(``alignlab.models.heads``). What is copied depends on where PPO's values come from:

    value_model=separate, LoRA policy     the reward model's adapter becomes the value adapter, its head the
                                          value head (the InstructGPT initialisation)
    value_model=separate, full weights    a trainable copy of the reward model's backbone (LoRA merged), its
                                          head the value head
    value_model=shared                    the head only: the values are read from the policy's own hidden
                                          states, which are not the reward model's
"""

from __future__ import annotations

import copy

from torch import nn

from alignlab.models.heads import ScalarHead, hidden_size
from alignlab.models.peft import is_peft

VALUE_INITS = ("random", "reward_model")


def reward_model_parts(reward) -> tuple[nn.Module, ScalarHead]:
    """The (backbone, head) of a reward-model reward function; a clear error for any other reward."""
    from alignlab.rewards.reward_model import RewardModelReward

    if not isinstance(reward, RewardModelReward):
        raise ValueError(
            f"algo.value_init=reward_model copies the reward model into the value function, but the reward is "
            f"{getattr(reward, 'name', type(reward).__name__)}: use reward=reward_model (reward.path=DIR), "
            "or algo.value_init=random"
        )
    return reward.model, reward.head


def check_compatible(policy, rm_model, rm_head: ScalarHead) -> None:
    """The reward model must read the policy's token ids and hidden width."""
    width, rm_width = hidden_size(policy), int(rm_head.summary.in_features)
    vocab = getattr(policy.config, "vocab_size", None)
    rm_vocab = getattr(rm_model.config, "vocab_size", None)
    if width != rm_width or vocab != rm_vocab:
        raise ValueError(
            f"algo.value_init=reward_model: the reward model (hidden {rm_width}, vocabulary {rm_vocab}) is "
            f"not on the policy's base (hidden {width}, vocabulary {vocab}); train the reward model on the "
            "policy's model, or algo.value_init=random"
        )


def copy_head(value_head: ScalarHead, rm_head: ScalarHead) -> None:
    """The value head takes the reward head's weights (cast to the value head's dtype)."""
    value_head.load_state_dict({k: v.detach().clone() for k, v in rm_head.state_dict().items()})


def copy_adapter(policy, rm_model, adapter_name: str) -> None:
    """Add ``adapter_name`` to the LoRA ``policy`` as a trainable copy of the reward model's adapter."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    if not is_peft(rm_model):
        raise ValueError(
            "algo.value_init=reward_model with a LoRA policy and value_model=separate needs a LoRA reward "
            "model (its adapter becomes the value adapter); train it with peft=lora, or value_model=shared"
        )
    config = copy.deepcopy(rm_model.peft_config[rm_model.active_adapter])
    config.inference_mode = False
    policy.add_adapter(adapter_name, config)
    state = get_peft_model_state_dict(rm_model, adapter_name=rm_model.active_adapter)
    result = set_peft_model_state_dict(policy, state, adapter_name=adapter_name)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(
            f"algo.value_init=reward_model: the reward adapter's {missing[0]} has no place on the policy"
        )


def backbone_copy(rm_model, like) -> nn.Module:
    """A trainable full-weight copy of the reward model's backbone (a LoRA adapter merged into it)."""
    model = copy.deepcopy(rm_model)
    if is_peft(model):
        model = model.merge_and_unload()
    dtype = next(like.parameters()).dtype
    return model.to(dtype).train().requires_grad_(True)
