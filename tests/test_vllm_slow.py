"""A real vLLM server (CPU build, ``make vllm``) with the bundled SmolLM2, started by alignlab's launcher
before the run (the run's pre-flight check pings the judge's server): RLOO trains through it with the LoRA
adapter hot-loaded at each update, and the same server judges the rollouts (``judge=openai_compatible``
inside a direct-RLAIF reward). Skipped only when the vLLM environment is absent; any failure fails."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.models.vllm_engine import REPO, RolloutSpec, VLLMClient, VLLMServer, free_port

pytestmark = pytest.mark.slow

try:
    RolloutSpec(engine="vllm").interpreter()
    VLLM_MISSING = None
except FileNotFoundError as e:
    VLLM_MISSING = str(e)


@pytest.mark.skipif(VLLM_MISSING is not None, reason=f"no vLLM environment: {VLLM_MISSING}")
@pytest.mark.timeout(1500)
def test_rloo_through_vllm_with_hot_loaded_adapters_and_the_same_server_as_judge(tmp_path, monkeypatch):
    from alignlab.models.bundled import ensure_smollm2

    spec = RolloutSpec(engine="vllm", port=free_port())
    server = VLLMServer(
        spec, str(ensure_smollm2()), "float32", lora_rank=16, log_path=tmp_path / "server.log"
    )
    server.start()
    try:
        run(tmp_path, monkeypatch, server)
    finally:
        server.stop()
    assert server.proc is None


def run(tmp_path, monkeypatch, server):
    from alignlab.models.completion import completion_logprobs
    from alignlab.models.generation import left_pad
    from alignlab.models.vllm_rollout import logprob_gap
    from alignlab.train import train
    from conftest import compose

    url = server.base_url
    # the judge compares each completion with a fixed reference completion of its prompt
    refs = tmp_path / "refs.jsonl"
    prompts = [
        json.loads(line)["prompt"] for line in (REPO / "src/alignlab/resources/prompts_toy.jsonl").open()
    ]
    refs.write_text("".join(json.dumps({"prompt": p, "completion": " was fine."}) + "\n" for p in prompts))
    loads, unloads = [], []
    real_load, real_unload = VLLMClient.load_adapter, VLLMClient.unload_adapter
    monkeypatch.setattr(VLLMClient, "load_adapter", lambda s, n, p: (loads.append(n), real_load(s, n, p))[1])
    monkeypatch.setattr(VLLMClient, "unload_adapter", lambda s, n: (unloads.append(n), real_unload(s, n))[1])
    cfg = compose(
        [
            "algo=rloo",
            "model=smollm2_135m",
            "peft=lora",
            "data=prompts_toy",
            "data.batch_size=2",
            "algo.k=2",
            "algo.max_new_tokens=8",
            "algo.kl_coef=0.0",
            "algo.optimizer.lr=2e-2",  # big steps: a stale adapter on the server would show in the gap
            "reward@algo.reward=judge_pairwise",
            "judge@algo.reward.judge=openai_compatible",
            f"algo.reward.judge.base_url={url}",
            "algo.reward.judge.model=alignlab-base",
            "algo.reward.judge.api_key_env=null",
            f"algo.reward.judge.cache_path={tmp_path / 'judge.sqlite'}",
            f"algo.reward.references={refs}",
            "algo.reward.reference_model=null",
            "algo.rollout.engine=vllm",
            f"algo.rollout.base_url={url}",
            f"algo.rollout.sync_dir={tmp_path / 'sync'}",
            "trainer=cpu",
            "trainer.max_steps=3",
            "trainer.limit_val_batches=0",
            "trainer.gradient_clip_val=null",
            "trainer.enable_progress_bar=false",
            "logger=csv",
            "callbacks=none",
            "optimized_metric=null",
            f"paths.output_dir={tmp_path / 'run'}",
        ]
    )
    metrics, objects = train(cfg)
    module = objects["module"]
    engine = module.rollout_engine
    # 3 rollout batches: the adapter of versions 0, 1, 2 hot-loaded in turn, each previous one unloaded
    assert loads == ["alignlab-base-lora-0", "alignlab-base-lora-1", "alignlab-base-lora-2"]
    # ... and the last one unloaded when fit ended (the server was given, so it keeps running)
    assert unloads == ["alignlab-base-lora-0", "alignlab-base-lora-1", "alignlab-base-lora-2"]
    # the same server judged every completion (a direct-RLAIF reward through judge=openai_compatible)
    judge = module.reward_fn.reward.judge
    assert module.reward_fn.reward.queries == 3 * 4 and judge.stats.calls >= 3 * 4
    assert module.reward_fn.reward.invalid < 3 * 4  # some verdicts were read from the server's answers
    # the engine's log-probs were the trainer's (fp32 both sides), measured every batch
    print("engine/trainer log-prob gap (fp32):", metrics["rollout/engine_logp_gap"])
    assert 0 <= metrics["rollout/engine_logp_gap"] < 1e-3
    assert server.proc.poll() is None  # the run leaves a server it did not start running
    # one more batch after one more change of the adapter (the judge's rewards may leave the trained one
    # near zero): the server samples the new adapter, not the base model
    policy, tok = module.policy, module.tokenizer
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[:2] for _ in range(2)]
    gen = engine.sample(policy, tok, ids, module.sampling, version=99, group=2)
    ctx, cmask = left_pad(ids, tok.pad_token_id)
    qr, att = torch.cat([ctx, gen.completion_ids], 1), torch.cat([cmask, gen.completion_mask], 1)
    with torch.no_grad():
        trained = completion_logprobs(policy.eval(), qr, att, ctx.shape[1])
        with policy.disable_adapter():
            base = completion_logprobs(policy, qr, att, ctx.shape[1])
    assert logprob_gap(gen.engine_logprobs, trained, gen.completion_mask) < 1e-3
    assert logprob_gap(gen.engine_logprobs, base, gen.completion_mask) > 1e-2


@pytest.mark.skipif(VLLM_MISSING is not None, reason=f"no vLLM environment: {VLLM_MISSING}")
@pytest.mark.timeout(900)
def test_full_fine_tuning_weights_reload_in_place_on_a_real_server(tmp_path):
    """No LoRA: the engine saves the full weights and the server reloads them in place (/collective_rpc
    reload_weights, then /reset_prefix_cache); a large change of the weights shows up in its samples."""
    from alignlab.models import ModelSpec
    from alignlab.models.completion import completion_logprobs
    from alignlab.models.generation import SamplingConfig, left_pad
    from alignlab.models.vllm_rollout import VLLMRolloutEngine, logprob_gap

    lm = ModelSpec(source="smollm2_135m", dtype="float32").load()
    policy, tok = lm.model.eval(), lm.tokenizer
    ids = [tok("Movie review: The film was", add_special_tokens=False)["input_ids"]] * 4
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0)

    def gap(gen) -> float:
        ctx, cmask = left_pad(ids, tok.pad_token_id)
        qr, att = torch.cat([ctx, gen.completion_ids], 1), torch.cat([cmask, gen.completion_mask], 1)
        with torch.no_grad():
            mine = completion_logprobs(policy, qr, att, ctx.shape[1])
        return logprob_gap(gen.engine_logprobs, mine, gen.completion_mask).item()

    engine = VLLMRolloutEngine(RolloutSpec(engine="vllm", port=free_port(), sync_dir=str(tmp_path / "sync")))
    try:
        assert gap(engine.sample(policy, tok, ids, cfg, version=0, group=4)) < 1e-3
        with torch.no_grad():  # "an update": every MLP output projection 1.5x
            for layer in policy.model.layers:
                layer.mlp.down_proj.weight.mul_(1.5)
        gen = engine.sample(policy, tok, ids, cfg, version=1, group=4)
        assert engine.syncs == 2 and (tmp_path / "sync" / "weights" / "config.json").exists()
        assert gap(gen) < 1e-3  # sampled by the reloaded weights
        with torch.no_grad():
            for layer in policy.model.layers:
                layer.mlp.down_proj.weight.div_(1.5)
        assert gap(gen) > 1e-2  # ... which differ from the old ones
    finally:
        engine.close()
    assert engine.server is None
