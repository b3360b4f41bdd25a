"""Benchmark workers: one case for one framework in one process (run by ``scripts/bench.py --worker``).

Every worker loads the same model through alignlab's loader (same weights, dtype, LoRA settings),
builds its trainer outside the timed window, then times training steps with a callback:
  * throughput cases (dpo, reward): from the start of step ``warmup`` to the end of the last step;
  * online RL (ppo, rloo, trl_rloo): training runs for a wall-time budget, then the final policy is
    sampled on held-out prompts with one shared sampler and scored with the same reward function.
Generation is counted by wrapping ``policy.generate`` (decoded positions and seconds) in both frameworks.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

LORA = {"r": 16, "alpha": 32}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    """Peak resident set size of this process (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class StepClock:
    """Shared timing state of both frameworks' callbacks."""

    def __init__(self, warmup: int = 1, budget_s: float | None = None):
        self.warmup, self.budget_s = warmup, budget_s
        self.t_train = self.t0 = self.t1 = None
        self.steps = 0

    def begin_train(self) -> None:
        _sync()
        self.t_train = time.perf_counter()

    def begin_step(self, step: int) -> None:
        if step == self.warmup and self.t0 is None:
            _sync()
            self.t0 = time.perf_counter()

    def end_step(self) -> bool:
        """Record the end of a step; True when the wall-time budget is spent."""
        _sync()
        self.t1 = time.perf_counter()
        self.steps += 1
        return self.budget_s is not None and self.t1 - self.t_train >= self.budget_s

    @property
    def timed_steps(self) -> int:
        return self.steps - self.warmup

    @property
    def timed_seconds(self) -> float:
        return (self.t1 - self.t0) if self.t0 is not None else float("nan")


def make_lightning_timer(clock: StepClock):
    import lightning as L

    class LightningTimer(L.Callback):
        def on_train_start(self, trainer, module):
            clock.begin_train()

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            clock.begin_step(clock.steps)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if clock.end_step():
                trainer.should_stop = True

    return LightningTimer()


def make_hf_timer(clock: StepClock):
    from transformers import TrainerCallback

    class HFTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock.begin_train()

        def on_step_begin(self, args, state, control, **kw):
            clock.begin_step(clock.steps)

        def on_step_end(self, args, state, control, **kw):
            if clock.end_step():
                control.should_training_stop = True

    return HFTimer()


class GenerateCounter:
    """Wraps ``model.generate`` on an instance: decoded positions and seconds spent generating."""

    def __init__(self, model):
        self.tokens, self.seconds, self.calls = 0, 0.0, 0
        inner = model.generate

        def generate(*args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            _sync()
            t = time.perf_counter()
            out = inner(*args, **kwargs)
            _sync()
            self.seconds += time.perf_counter() - t
            seqs = out if torch.is_tensor(out) else out.sequences
            self.tokens += int(seqs.shape[0] * (seqs.shape[1] - ids.shape[1]))
            self.calls += 1
            return out

        model.generate = generate


class SampleCounter:
    """Wraps alignlab's rollout sampler (``alignlab.modules.rollout.sample``): decoded positions and the
    seconds of the whole call, so anything alignlab does around ``generate`` (swapping in lean LoRA
    layers, encoding the shared prompts, cutting at EOS, decoding the texts) counts as rollout time. Stricter than
    ``GenerateCounter``, which times ``generate`` alone (TRL's side)."""

    def __init__(self):
        import alignlab.modules.rollout as rollout

        self.tokens, self.seconds, self.calls = 0, 0.0, 0
        self._module, self._inner = rollout, rollout.sample

        def sample(*args, **kwargs):
            _sync()
            t = time.perf_counter()
            gen = self._inner(*args, **kwargs)
            _sync()
            self.seconds += time.perf_counter() - t
            self.tokens += int(gen.completion_ids.numel())
            self.calls += 1
            return gen

        rollout.sample = sample

    def close(self) -> None:
        self._module.sample = self._inner


# -- shared set-up --------------------------------------------------------------------------------------
def compose(overrides: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from alignlab.utils.hydra import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hcompose(config_name="train", overrides=overrides)


def model_name(size: str) -> str:
    return {"tiny": "tiny", "smollm2": "smollm2_135m"}[size]


def load_policy(size: str):
    from alignlab.models import LoraSpec, ModelSpec
    from alignlab.models.peft import apply_peft

    lm = ModelSpec(source=model_name(size), dtype="float32").load()
    return lm, apply_peft(lm.model, LoraSpec(r=LORA["r"], alpha=LORA["alpha"]))


def common_overrides(s: dict, out: str) -> list[str]:
    return [
        f"model={model_name(s['size'])}",
        "peft=lora",
        f"peft.r={LORA['r']}",
        f"peft.alpha={LORA['alpha']}",
        "trainer=cpu" if not torch.cuda.is_available() else "trainer=gpu",
        f"trainer.precision={'bf16-mixed' if s.get('precision') == 'bf16' else '32-true'}",
        "logger=none",
        "callbacks=none",
        "++trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "++trainer.enable_checkpointing=false",
        "++trainer.enable_model_summary=false",
        f"seed={s['seed']}",
        f"paths.output_dir={out}",
    ]


def run_alignlab(overrides: list[str], clock: StepClock, extra_callback=None):
    """alignlab's own entry point (``alignlab.train.train``) with the timing callback injected."""
    from omegaconf import OmegaConf, open_dict

    from alignlab.train import train

    cfg = compose(overrides)
    holder = {}

    # train() instantiates callbacks from cfg.callbacks; ours are live objects, so register a factory
    def factory():
        holder["cb"] = make_lightning_timer(clock)
        return holder["cb"]

    sys.modules[__name__]._bench_factory = factory
    with open_dict(cfg):
        cfg.callbacks = OmegaConf.create({"bench_timer": {"_target_": f"{__name__}._bench_factory"}})
    return train(cfg)


def pref_ids(s: dict, tokenizer) -> list[dict]:
    """The preference rows encoded by alignlab's datamodule (the ids both frameworks train on)."""
    from alignlab.data.datamodules import PreferenceDataModule

    dm = PreferenceDataModule(
        train_path=s["data"],
        val_path=s["data"],
        batch_size=s["batch_size"],
        max_length=s["max_length"],
        max_prompt_length=s["max_prompt_length"],
        use_chat_template=False,
        tokenizer=tokenizer,
    )
    dm.setup()
    return [dm.train_set[i] for i in range(len(dm.train_set))]


def pair_tokens(items: list[dict]) -> float:
    """Mean real tokens per pair: prompt + chosen and prompt + rejected."""
    return sum(2 * len(x["prompt_ids"]) + len(x["chosen_ids"]) + len(x["rejected_ids"]) for x in items) / len(
        items
    )


def hf_args(s: dict, out: str) -> dict:
    return dict(
        output_dir=out,
        per_device_train_batch_size=s.get("batch_size", 1),
        learning_rate=s["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=s.get("precision") == "bf16",
        fp16=False,
        seed=s["seed"],
        dataloader_num_workers=0,
        gradient_checkpointing=False,
    )  # TRL defaults to True; alignlab does not checkpoint


def throughput(clock: StepClock, s: dict, tokens_per_pair: float) -> dict:
    pairs = clock.timed_steps * s["batch_size"]
    return {
        "timed_steps": clock.timed_steps,
        "seconds": clock.timed_seconds,
        "pairs_per_s": pairs / clock.timed_seconds,
        "tokens_per_s": pairs * tokens_per_pair / clock.timed_seconds,
        "tokens_per_pair": tokens_per_pair,
    }


# -- DPO -------------------------------------------------------------------------------------------------
def dpo_alignlab(s: dict, out: str) -> dict:
    clock = StepClock(s["warmup_steps"])
    ov = [
        *common_overrides(s, out),
        "algo=dpo",
        "data=preference",
        f"data.train_path={s['data']}",
        f"data.val_path={s['data']}",
        "data.use_chat_template=false",
        f"data.batch_size={s['batch_size']}",
        f"data.max_length={s['max_length']}",
        f"data.max_prompt_length={s['max_prompt_length']}",
        f"algo.beta={s['beta']}",
        "algo.precompute_ref_logps=false",
        "algo.scheduler=null",
        f"algo.optimizer.lr={s['lr']}",
        f"trainer.max_steps={s['warmup_steps'] + s['steps']}",
        "trainer.gradient_clip_val=1.0",
    ]
    _, objs = run_alignlab(ov, clock)
    return throughput(clock, s, pair_tokens(list(objs["datamodule"].train_set)))


def dpo_trl(s: dict, out: str) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from alignlab.data.rows import load_rows

    lm, policy = load_policy(s["size"])
    rows, _ = load_rows(s["data"], "preference", {}, False, None)
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    args = DPOConfig(
        **hf_args(s, out),
        max_steps=s["warmup_steps"] + s["steps"],
        beta=s["beta"],
        loss_type=["sigmoid"],
        max_length=s["max_length"],
        disable_dropout=True,
    )
    clock = StepClock(s["warmup_steps"])
    trainer = DPOTrainer(
        model=policy,
        args=args,
        train_dataset=ds,
        processing_class=lm.tokenizer,
        callbacks=[make_hf_timer(clock)],
    )
    tds = trainer.train_dataset
    tokens = sum(
        2 * len(p) + len(c) + len(r)
        for p, c, r in zip(tds["prompt_ids"], tds["chosen_ids"], tds["rejected_ids"])
    ) / len(tds)
    trainer.train()
    return throughput(clock, s, tokens)


# -- reward model ----------------------------------------------------------------------------------------
def reward_alignlab(s: dict, out: str) -> dict:
    clock = StepClock(s["warmup_steps"])
    ov = [
        *common_overrides(s, out),
        "algo=reward",
        "data=preference",
        f"data.train_path={s['data']}",
        f"data.val_path={s['data']}",
        "data.use_chat_template=false",
        f"data.batch_size={s['batch_size']}",
        f"data.max_length={s['max_length']}",
        f"data.max_prompt_length={s['max_prompt_length']}",
        "algo.plot_calibration=false",
        "algo.scheduler=null",
        f"algo.optimizer.lr={s['lr']}",
        f"trainer.max_steps={s['warmup_steps'] + s['steps']}",
        "trainer.gradient_clip_val=1.0",
    ]
    _, objs = run_alignlab(ov, clock)
    return throughput(clock, s, pair_tokens(list(objs["datamodule"].train_set)))


def reward_trl(s: dict, out: str) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from alignlab.models import ModelSpec
    from alignlab.models.peft import DEFAULT_TARGETS

    lm = ModelSpec(source=model_name(s["size"]), dtype="float32").load()
    items = pref_ids(s, lm.tokenizer)
    # the same backbone weights under a sequence-classification head (TRL's reward model format)
    hf_dir = Path(out) / "hf_backbone"
    lm.model.save_pretrained(hf_dir)
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = lm.tokenizer.pad_token_id
    mtype = model.config.model_type
    peft_config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=0.0,
        task_type="SEQ_CLS",
        target_modules=DEFAULT_TARGETS[mtype],
        fan_in_fan_out=mtype == "gpt2",
    )
    ds = Dataset.from_list(
        [
            {
                "chosen_ids": x["prompt_ids"] + x["chosen_ids"],
                "rejected_ids": x["prompt_ids"] + x["rejected_ids"],
            }
            for x in items
        ]
    )
    args = RewardConfig(
        **hf_args(s, out),
        max_steps=s["warmup_steps"] + s["steps"],
        max_length=s["max_length"],
        disable_dropout=True,
        center_rewards_coefficient=None,
    )
    clock = StepClock(s["warmup_steps"])
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=ds,
        processing_class=lm.tokenizer,
        peft_config=peft_config,
        callbacks=[make_hf_timer(clock)],
    )
    trainer.train()
    return throughput(clock, s, pair_tokens(items))


# -- online RL -------------------------------------------------------------------------------------------
def reward_function(s: dict):
    from alignlab.rewards.base import CharFractionReward
    from alignlab.rewards.gold import GoldReward

    return (
        GoldReward("sentiment")
        if s["reward"] == "gold"
        else CharFractionReward("abcdefghijklmnopqrstuvwxyz ")
    )


def prompt_texts(path: str) -> list[str]:
    from alignlab.data.rows import load_rows

    rows, _ = load_rows(path, "prompts", {}, False, None)
    return [r["prompt"] for r in rows]


@torch.no_grad()
def evaluate(policy, tokenizer, s: dict, reward_fn) -> tuple[float, float]:
    """Mean reward of one seeded sample per held-out prompt (the same sampler for both frameworks) and
    its standard error."""
    from alignlab.data.tokenize import Formatter
    from alignlab.models.generation import SamplingConfig, sample

    prompts = prompt_texts(s["eval_prompts"])
    fmt = Formatter(tokenizer, use_chat_template=False)
    ids = [fmt.prompt_ids(p) for p in prompts]
    devices = [0] if torch.cuda.is_available() else []
    scores = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(1234)
        for i in range(0, len(ids), 16):
            gen = sample(policy, tokenizer, ids[i : i + 16], SamplingConfig(s["max_new_tokens"], 1.0))
            scores.append(reward_fn(prompts[i : i + 16], gen.texts).float())
    scores = torch.cat(scores)
    return float(scores.mean()), float(scores.std() / len(scores) ** 0.5) if len(scores) > 1 else 0.0


def rl_result(clock: StepClock, counter: GenerateCounter, before: float, after: tuple, s: dict) -> dict:
    after, after_se = after
    return {
        "train_seconds": clock.t1 - clock.t_train,
        "iterations": clock.steps,
        "reward_before": before,
        "reward_after": after,
        "reward_after_se": after_se,
        "eval_prompts": s.get("n_eval_prompts", 16),
        "seed": s["seed"],
        "gold_reward": after,
        "rollout_tokens": counter.tokens,
        "generate_seconds": counter.seconds,
        "rollout_tokens_per_s": counter.tokens / max(counter.seconds, 1e-9),
        "samples_per_s": clock.steps * s["prompts_per_step"] * s["k"] / (clock.t1 - clock.t_train),
    }


def rl_alignlab(s: dict, out: str, algo: str) -> dict:
    from alignlab.models.logprobs import gather_logprobs  # noqa: F401  (import cost outside the budget)

    reward = "gold" if s["reward"] == "gold" else "char_fraction"
    clock = StepClock(0, s["budget_s"])
    ov = [
        *common_overrides(s, out),
        f"algo={algo}",
        f"reward@algo.reward={reward}",
        "data=prompts_toy",
        f"data.train_path={s['prompts']}",
        f"data.val_path={s['eval_prompts']}",
        "data.use_chat_template=false",
        f"algo.max_new_tokens={s['max_new_tokens']}",
        f"algo.kl_coef={s['kl_coef']}",
        "algo.log_samples_every=0",
        f"++algo.fused_forward={str(s.get('fused_forward', False)).lower()}",
        f"algo.optimizer.lr={s['lr']}",
        "trainer.max_steps=1000000",
        "trainer.gradient_clip_val=null",
        "trainer.val_check_interval=1000000",
    ]
    if reward == "char_fraction":
        ov.append("algo.reward.chars=abcdefghijklmnopqrstuvwxyz ")
    if algo == "rloo":
        ov += [f"algo.k={s['k']}", f"data.batch_size={s['prompts_per_step']}"]
    else:  # PPO: the same number of sequences per rollout batch
        ov += [
            f"data.batch_size={s['prompts_per_step'] * s['k']}",
            f"algo.ppo_epochs={s['ppo_epochs']}",
            f"algo.num_minibatches={s['num_minibatches']}",
        ]
    # evaluate the initial policy with an identical model (same seed, same weights)
    lm, policy = load_policy(s["size"])
    reward_fn = reward_function(s)
    before, _ = evaluate(policy, lm.tokenizer, s, reward_fn)
    del lm, policy
    c = SampleCounter()
    try:
        _, objs = run_alignlab(ov, clock)
    finally:
        c.close()
    module = objs["module"]
    after = evaluate(module.policy, module.tokenizer, s, reward_fn)  # not counted: the counter is closed
    return rl_result(clock, c, before, after, s)


def trl_online_args(s: dict, out: str) -> dict:
    """What TRL's online trainers (RLOO, GRPO) share for settings ``s``: the batch of ``prompts_per_step``
    prompts x k completions, plain sampling at temperature 1, no step limit (the clock stops them)."""
    return dict(
        **{**hf_args(s, out), "per_device_train_batch_size": s["prompts_per_step"] * s["k"]},
        max_steps=10**6,
        num_generations=s["k"],
        max_completion_length=s["max_new_tokens"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        disable_dropout=True,
        log_completions=False,
    )


def rl_trl(s: dict, out: str) -> dict:
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    lm, policy = load_policy(s["size"])
    reward_fn = reward_function(s)
    before, _ = evaluate(policy, lm.tokenizer, s, reward_fn)

    def gold(prompts, completions, **kw):
        return reward_fn(list(prompts), list(completions)).tolist()

    ds = Dataset.from_list([{"prompt": p} for p in prompt_texts(s["prompts"])])
    args = RLOOConfig(**trl_online_args(s, out), beta=s["kl_coef"], num_iterations=1)
    clock = StepClock(0, s["budget_s"])
    trainer = RLOOTrainer(
        model=policy,
        reward_funcs=[gold],
        args=args,
        train_dataset=ds,
        processing_class=lm.tokenizer,
        callbacks=[make_hf_timer(clock)],
    )
    counter = GenerateCounter(trainer.model)
    trainer.train()
    gen_tokens, gen_seconds = counter.tokens, counter.seconds
    after = evaluate(trainer.model, lm.tokenizer, s, reward_fn)
    counter.tokens, counter.seconds = gen_tokens, gen_seconds
    return rl_result(clock, counter, before, after, s)


WORKERS = {
    ("dpo", "alignlab"): dpo_alignlab,
    ("dpo", "trl"): dpo_trl,
    ("reward", "alignlab"): reward_alignlab,
    ("reward", "trl"): reward_trl,
    ("rl", "alignlab-ppo"): lambda s, out: rl_alignlab(s, out, "ppo"),
    ("rl", "alignlab-rloo"): lambda s, out: rl_alignlab(s, out, "rloo"),
    ("rl", "trl-rloo"): rl_trl,
}


def run_worker(case: str, framework: str, settings: dict) -> dict:
    """Run one (case, framework) with ``settings``; returns the measurements (plus peak RSS)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(settings["seed"])
    with tempfile.TemporaryDirectory(prefix=f"bench-{case}-{framework}-") as out:
        res = WORKERS[(case, framework)](settings, out)
    res["peak_rss_mb"] = peak_rss_mb()
    return res
