"""The vLLM rollout engine against a stand-in server (tests/fake_vllm.py: a real tiny model behind the
same routes), its configuration errors, the server command line, and the mismatch correction math."""

from __future__ import annotations

import sys

import pytest
import torch

from alignlab.models import LoraSpec, ModelSpec
from alignlab.models.completion import completion_logprobs
from alignlab.models.generation import SamplingConfig
from alignlab.models.peft import apply_peft
from alignlab.models.vllm_engine import RolloutSpec, VLLMError, VLLMServer
from alignlab.models.vllm_rollout import (
    VLLMRolloutEngine,
    logprob_gap,
    prompt_runs,
    truncated_importance_weights,
)
from fake_vllm import FakeVLLM

CFG = SamplingConfig(max_new_tokens=12, temperature=0.9)


def tiny(peft: bool = True):
    lm = ModelSpec(source="tiny", dtype="float32").load()
    model = apply_peft(lm.model, LoraSpec(r=4, alpha=8)) if peft else lm.model
    return model, lm.tokenizer


def prompts(tok, k: int) -> list[list[int]]:
    ids = [
        tok("The film was", add_special_tokens=False)["input_ids"],
        tok("Plot:", add_special_tokens=False)["input_ids"],
    ]
    return [p for p in ids for _ in range(k)]


def trainer_logprobs(policy, tok, prompt_ids, gen, temperature):
    """What the trainer recomputes for the engine's samples (the rollout code's own function)."""
    from alignlab.models.generation import left_pad

    ctx, ctx_mask = left_pad(prompt_ids, tok.pad_token_id)
    qr = torch.cat([ctx, gen.completion_ids], 1)
    attn = torch.cat([ctx_mask, gen.completion_mask], 1)
    with torch.no_grad():
        return completion_logprobs(policy.eval(), qr, attn, ctx.shape[1], temperature) * gen.completion_mask


def perturb_lora(policy, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_samples_in_alignlab_layout_with_the_trainers_logprobs():
    policy, tok = tiny()
    server_model, _ = tiny(peft=False)
    with FakeVLLM(server_model, tok) as fake:
        engine = VLLMRolloutEngine(RolloutSpec(engine="vllm", base_url=fake.base_url))
        ids = prompts(tok, 3)
        gen = engine.sample(policy, tok, ids, CFG, version=0, group=3)
        requests = [b for p, b in fake.calls if p == "/v1/completions"]
    # one request, each prompt once with n = k
    assert len(requests) == 1 and requests[0]["n"] == 3 and requests[0]["prompt"] == ids[::3]
    assert gen.completion_ids.shape[0] == 6 and gen.completion_ids.shape == gen.engine_logprobs.shape
    lengths = gen.completion_mask.sum(-1)
    for row, n, stopped in zip(gen.completion_ids, lengths, gen.stopped):
        assert (row[n:] == tok.pad_token_id).all()
        assert bool(stopped) == (row[n - 1] == tok.eos_token_id)
    assert (gen.engine_logprobs * (1 - gen.completion_mask) == 0).all()
    # the engine's log-probs are the trainer's for the same tokens (layout and temperature agree)
    mine = trainer_logprobs(policy, tok, ids, gen, CFG.temperature)
    assert logprob_gap(gen.engine_logprobs, mine, gen.completion_mask) < 1e-4
    assert engine.syncs == 1 and engine.model_name == "alignlab-base-lora-0"


def test_each_update_hot_loads_a_new_adapter_and_unloads_the_old():
    policy, tok = tiny()
    server_model, _ = tiny(peft=False)
    ids = prompts(tok, 2)
    with FakeVLLM(server_model, tok) as fake:
        engine = VLLMRolloutEngine(RolloutSpec(engine="vllm", base_url=fake.base_url))
        engine.sample(policy, tok, ids, CFG, version=0, group=2)
        first_path = engine.adapter_path
        perturb_lora(policy)  # "an update"
        engine.sample(policy, tok, ids, CFG, version=0, group=2)
        assert engine.syncs == 1  # same version: nothing moved
        gen = engine.sample(policy, tok, ids, CFG, version=1, group=2)
        assert engine.syncs == 2 and list(fake.adapters) == ["alignlab-base-lora-1"]
        assert not first_path.exists()
        loads = [b["lora_name"] for p, b in fake.calls if p == "/v1/load_lora_adapter"]
        unloads = [b["lora_name"] for p, b in fake.calls if p == "/v1/unload_lora_adapter"]
    assert loads == ["alignlab-base-lora-0", "alignlab-base-lora-1"] and unloads == ["alignlab-base-lora-0"]
    # sampled from the updated policy: its log-probs match the updated trainer, not the base model
    mine = trainer_logprobs(policy, tok, ids, gen, CFG.temperature)
    assert logprob_gap(gen.engine_logprobs, mine, gen.completion_mask) < 1e-4
    with policy.disable_adapter():
        base = trainer_logprobs(policy, tok, ids, gen, CFG.temperature)
    assert logprob_gap(gen.engine_logprobs, base, gen.completion_mask) > 1e-2


def test_full_fine_tuning_reloads_weights_in_place():
    policy, tok = tiny(peft=False)
    server_model, _ = tiny(peft=False)
    ids = prompts(tok, 1)
    with torch.no_grad():
        policy.transformer.h[0].mlp.c_fc.weight.mul_(3.0)
    with FakeVLLM(server_model, tok) as fake:
        engine = VLLMRolloutEngine(RolloutSpec(engine="vllm", base_url=fake.base_url))
        gen = engine.sample(policy, tok, ids, CFG, version=5)
        rpc = [b for p, b in fake.calls if p == "/collective_rpc"]
        assert [p for p, _ in fake.calls if p in ("/collective_rpc", "/reset_prefix_cache")] == [
            "/collective_rpc",
            "/reset_prefix_cache",
        ]
    assert rpc[0]["method"] == "reload_weights" and rpc[0]["kwargs"]["weights_path"].endswith("weights")
    mine = trainer_logprobs(policy, tok, ids, gen, CFG.temperature)
    assert logprob_gap(gen.engine_logprobs, mine, gen.completion_mask) < 1e-4


def test_tokenizer_or_model_name_mismatch_is_refused():
    policy, tok = tiny()
    server_model, _ = tiny(peft=False)
    with FakeVLLM(server_model, tok, name="other") as fake:
        engine = VLLMRolloutEngine(RolloutSpec(engine="vllm", base_url=fake.base_url))
        with pytest.raises(VLLMError, match="served_model_name"):
            engine.sample(policy, tok, prompts(tok, 1), CFG, version=0)

    class Shifted:  # a server whose tokenizer splits text differently
        eos_token_id = tok.eos_token_id

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [i + 1 for i in tok(text, add_special_tokens=False)["input_ids"]]}

    with FakeVLLM(server_model, tok) as fake:
        fake.tokenizer = Shifted()
        engine = VLLMRolloutEngine(RolloutSpec(engine="vllm", base_url=fake.base_url))
        with pytest.raises(VLLMError, match="tokenizer"):
            engine.sample(policy, tok, prompts(tok, 1), CFG, version=0)


def test_prompt_runs():
    assert prompt_runs([[1], [1], [2], [2]], 2) == 2
    assert prompt_runs([[1], [2], [2], [2]], 2) == 1
    assert prompt_runs([[1], [1], [1]], 2) == 1
    assert prompt_runs([[1], [1]], 1) == 1


def test_logprob_gap_and_truncated_importance_weights_closed_form():
    engine = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    trainer = torch.tensor([[-1.5, -1.0, -9.0], [-0.5, 0.5, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # |delta| over the 4 real tokens: 0.5, 1.0, 0.0, 1.0
    assert logprob_gap(engine, trainer, mask).item() == pytest.approx(2.5 / 4)
    w = truncated_importance_weights(trainer, engine, mask, cap=2.0)
    expected = torch.tensor([[torch.exp(torch.tensor(-0.5)).item(), 2.0, 0.0], [1.0, 2.0, 0.0]])
    assert torch.allclose(w, expected)
    t = trainer.clone().requires_grad_(True)
    assert not truncated_importance_weights(t, engine, mask, cap=2.0).requires_grad


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="algo.rollout.engine"):
        RolloutSpec(engine="sglang")
    with pytest.raises(ValueError, match="tis_cap"):
        RolloutSpec(engine="vllm", tis_cap=0.5)
    with pytest.raises(FileNotFoundError, match="make vllm"):
        VLLMRolloutEngine(RolloutSpec(engine="vllm", python=str(tmp_path / "nope" / "python")))


def test_server_command_and_environment(tmp_path):
    spec = RolloutSpec(engine="vllm", python=sys.executable, port=0, extra_args=["--max-num-seqs", 8])
    server = VLLMServer(spec, "/models/x", "bfloat16", lora_rank=12, log_path=tmp_path / "log")
    cmd = server.command()
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    flag = {cmd[i]: cmd[i + 1] for i in range(3, len(cmd) - 1)}
    assert flag["--model"] == "/models/x" and flag["--dtype"] == "bfloat16"
    assert flag["--max-lora-rank"] == "16" and "--enable-lora" in cmd  # 12 rounds up to vLLM's 16
    assert flag["--logprobs-mode"] == "processed_logprobs" and flag["--served-model-name"] == "alignlab-base"
    assert cmd[-2:] == ["--max-num-seqs", "8"] and server.port > 0
    assert "--enable-lora" not in VLLMServer(spec, "/m", "float32", None).command()
    env = server.environment()
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True" and env["VLLM_SERVER_DEV_MODE"] == "1"


@pytest.mark.timeout(120)
def test_server_that_dies_at_start_reports_its_log(tmp_path):
    # our own interpreter has no vllm: the child exits at once, and the error (not a wait for the startup
    # timeout) carries its log
    spec = RolloutSpec(engine="vllm", python=sys.executable, port=0, startup_timeout_s=900)
    server = VLLMServer(spec, "/models/x", "float32", None, log_path=tmp_path / "server.log")
    with pytest.raises(VLLMError, match="No module named 'vllm'"):
        server.start()
    assert server.proc is None


def test_to_generation_cuts_after_the_first_eos_and_pads():
    from alignlab.models.vllm_rollout import to_generation

    _, tok = tiny(peft=False)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    choices = [
        {"token_ids": [50, eos, 60], "logprobs": [-1.0, -0.5, -2.0]},  # EOS mid-row: cut after it
        {"token_ids": [70, 71, 72, 73], "logprobs": [-0.1, None, -0.3, -0.4]},  # no EOS: kept whole
        {"token_ids": [], "logprobs": []},
    ]
    gen = to_generation([[5], [5], [6]], choices, tok)
    assert gen.completion_ids.tolist() == [[50, eos, pad, pad], [70, 71, 72, 73], [pad] * 4]
    assert gen.completion_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert gen.stopped.tolist() == [True, False, False]
    expected = torch.tensor([[-1.0, -0.5, 0, 0], [-0.1, 0.0, -0.3, -0.4], [0, 0, 0, 0]])
    assert torch.equal(gen.engine_logprobs, expected)
    assert gen.texts[1] == tok.decode([70, 71, 72, 73], skip_special_tokens=True)


def test_server_dtype_follows_the_trainers_compute_dtype():
    from alignlab.models.vllm_rollout import compute_dtype

    policy, _ = tiny(peft=False)
    assert compute_dtype(policy) == "float32"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what trainer precision bf16-mixed runs under
        assert compute_dtype(policy) == "bfloat16"
    assert compute_dtype(policy.to(torch.bfloat16)) == "bfloat16"


def test_close_unloads_our_adapter_from_a_given_server_and_forgets_the_sync():
    policy, tok = tiny()
    server_model, _ = tiny(peft=False)
    ids = prompts(tok, 2)
    with FakeVLLM(server_model, tok) as fake:
        engine = VLLMRolloutEngine(RolloutSpec(engine="vllm", base_url=fake.base_url))
        engine.sample(policy, tok, ids, CFG, version=3, group=2)
        path = engine.adapter_path
        engine.close()
        assert fake.adapters == {} and not path.exists() and engine.client is None
        engine.sample(policy, tok, ids, CFG, version=3, group=2)  # same version: synced again after close
        assert list(fake.adapters) == ["alignlab-base-lora-3"] and engine.syncs == 2
