"""Inference precision (sampling, judging, evaluation follow trainer=cpu's bf16 rule) and the cheaper KL
pass of evaluation (log pi read from the decoding steps, one reference forward)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignlab.data.collate import join
from alignlab.evaluate import completion_kl, evaluate, evaluate_policy
from alignlab.models import LoraSpec, ModelSpec, apply_peft
from alignlab.models.generation import SamplingConfig, sample
from alignlab.models.logprobs import token_logprobs
from alignlab.models.reference import ReferenceModel, inference_spec, load_policy, precision_name
from alignlab.utils import precision as prec
from conftest import compose
from test_evaluate import PROMPTS, FakeTask


@pytest.fixture
def cpu_precision_is(monkeypatch):
    """Set ``$ALIGNLAB_CPU_PRECISION`` for one test (the suite pins 32-true), restored afterwards."""

    def set_to(value: str) -> None:
        monkeypatch.setenv("ALIGNLAB_CPU_PRECISION", value)
        prec.cpu_precision.cache_clear()

    yield set_to
    prec.cpu_precision.cache_clear()  # monkeypatch restores the variable after this teardown: clear again
    monkeypatch.undo()
    prec.cpu_precision.cache_clear()


def trained_lora(model, std: float = 1.0, seed: int = 0):
    """A LoRA policy away from its reference (lora_B drawn from N(0, std), a trained adapter's stand-in)."""
    policy = apply_peft(model, LoraSpec(r=4, alpha=8))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return policy.eval()


# -- the rule -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("forced", "dtype", "device", "expected"),
    [
        ("bf16-mixed", "auto", "cpu", "bfloat16"),  # native (or forced) bf16: bf16 weights
        ("32-true", "auto", "cpu", "auto"),  # fp32 everywhere; the spec (and its identity) unchanged
        ("bf16-mixed", "float32", "cpu", "float32"),  # a dtype the user named is kept
        ("bf16-mixed", "auto", "cuda", "auto"),  # on GPU auto already means bf16 where the card has it
    ],
)
def test_inference_spec_follows_the_trainers_cpu_precision(cpu_precision_is, forced, dtype, device, expected):
    cpu_precision_is(forced)
    spec = ModelSpec(source="tiny", dtype=dtype)
    got = inference_spec(spec, device)
    assert got.dtype == expected
    assert (got is spec) == (expected == dtype)  # unchanged means the same object


def test_precision_name_counts_elements():
    m = torch.nn.Sequential(torch.nn.Linear(2, 1).to(torch.bfloat16), torch.nn.Linear(4, 4))
    assert precision_name(m) == "fp32"  # 3 bf16 elements first, then 20 fp32 ones
    m[1].to(torch.bfloat16)
    assert precision_name(m) == "bf16"


def test_load_policy_in_bf16_casts_the_adapter_too(cpu_precision_is, tmp_path, tiny_lm):
    apply_peft(tiny_lm.model, LoraSpec(r=4, alpha=8)).save_pretrained(tmp_path / "adapter")
    spec = ModelSpec(source="tiny", cache_dir=str(tmp_path))
    cpu_precision_is("bf16-mixed")
    loaded = load_policy(spec, tmp_path / "adapter", "cpu")
    dtypes = {p.dtype for p in loaded.model.parameters()}
    assert loaded.precision == "bf16" and dtypes == {torch.bfloat16}  # lora_A/B too, not only the base
    cpu_precision_is("32-true")
    loaded = load_policy(spec, tmp_path / "adapter", "cpu")
    assert loaded.precision == "fp32" and {p.dtype for p in loaded.model.parameters()} == {torch.float32}


def test_local_judge_loads_in_the_inference_precision(cpu_precision_is):
    from alignlab.judges.gold import GoldJudge
    from alignlab.judges.local import LocalJudge
    from alignlab.label import local_judge_precision

    cpu_precision_is("32-true")
    judge = LocalJudge({"source": "tiny"}, device="cpu")
    before = judge.identity()
    assert local_judge_precision(judge) == "fp32" and judge.identity() == before  # fp32 caches stay valid
    cpu_precision_is("bf16-mixed")
    judge = LocalJudge({"source": "tiny"}, device="cpu")
    assert local_judge_precision(judge) == "bf16"
    assert judge.identity() != before  # bf16 answers are cached apart from fp32 ones
    assert next(judge.lm().model.parameters()).dtype == torch.bfloat16
    assert local_judge_precision(GoldJudge()) is None


# -- the KL pass ----------------------------------------------------------------------------------------
def test_step_logprobs_closed_form():
    """Two decoding steps over a 2-token vocabulary: log softmax of each step's logits at the token taken."""
    from alignlab.models.generation import step_logprobs

    steps = [
        torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]),
        torch.tensor([[0.0, math.log(4.0)], [5.0, 1.0]]),
    ]
    completion = torch.tensor([[1, 1], [0, 1]])  # (B, L)
    mask = torch.tensor([[1, 1], [1, 0]])  # the second row stopped after its first token
    expected = torch.tensor([[math.log(1 / 2), math.log(4 / 5)], [math.log(3 / 4), 0.0]])
    torch.testing.assert_close(step_logprobs(steps, completion, mask), expected)


def test_sampled_logps_are_the_forward_logps(tiny_lm):
    """log pi(y_t) read from the decoding steps equals a full forward's, token by token (fp32)."""
    policy = trained_lora(tiny_lm.model)
    ids = [tiny_lm.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    # sampling at temperature 0.7 with top-k: the logps are still pi's at temperature 1
    for cfg in (
        SamplingConfig(max_new_tokens=10),
        SamplingConfig(max_new_tokens=10, temperature=0.7, top_k=5),
    ):
        gen = sample(policy, tiny_lm.tokenizer, ids, cfg, generator_seed=1, lean_lora=True, return_logps=True)
        comps = [c[m.bool()].tolist() for c, m in zip(gen.completion_ids, gen.completion_mask)]
        with torch.no_grad():
            lp, mask = token_logprobs(policy, *join(ids, comps, 0))  # (B, T-1)
        for i, (p, c) in enumerate(zip(ids, comps)):
            forward = lp[i, len(p) - 1 : len(p) - 1 + len(c)]  # the completion's positions
            torch.testing.assert_close(gen.completion_logps[i, : len(c)], forward, atol=1e-5, rtol=0)
            assert gen.completion_logps[i, len(c) :].abs().sum() == 0  # 0 past the completion
        assert (gen.completion_logps * gen.completion_mask).sum() < 0


def test_new_kl_equals_the_old_paths_kl(tiny_lm):
    policy = trained_lora(tiny_lm.model)
    cfg = SamplingConfig(max_new_tokens=12)
    ids = [tiny_lm.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    gen = sample(policy, tiny_lm.tokenizer, ids, cfg, generator_seed=0, lean_lora=True, return_logps=True)
    args = (policy, ReferenceModel(policy), ids, gen.completion_ids, gen.completion_mask, 0)
    old = completion_kl(*args)
    new = completion_kl(*args, policy_logps=gen.completion_logps)
    torch.testing.assert_close(new, old, atol=1e-5, rtol=0)
    assert old.abs().max() > 0.5  # a policy away from its reference: the comparison is not 0 == 0
    # the whole evaluation: the same samples, per-prompt KLs equal to 1e-5
    kw = dict(batch_size=3, return_samples=True)
    m_old, s_old = evaluate_policy(
        policy, tiny_lm.tokenizer, FakeTask(), PROMPTS, cfg, reuse_sampling_logps=False, **kw
    )
    m_new, s_new = evaluate_policy(policy, tiny_lm.tokenizer, FakeTask(), PROMPTS, cfg, **kw)
    assert s_new.completions == s_old.completions
    torch.testing.assert_close(torch.tensor(s_new.kl), torch.tensor(s_old.kl), atol=1e-5, rtol=0)
    assert m_new["precision"] == m_old["precision"] == "fp32"


def test_new_kl_skips_the_policy_forward(tiny_lm):
    """One reference forward per batch and no policy forward (counted on the model's forward calls)."""
    policy = trained_lora(tiny_lm.model)
    calls = {"policy": 0, "reference": 0}
    base = policy.get_base_model()
    lora = next(m for m in policy.modules() if hasattr(m, "lora_A"))  # a LoRA layer: knows if it is off

    def count(module, args, kwargs):
        # decoding steps pass a KV cache; the KL's forwards run the whole sequence without one
        if kwargs.get("use_cache") is False:
            calls["reference" if lora.disable_adapters else "policy"] += 1

    handle = base.transformer.register_forward_pre_hook(count, with_kwargs=True)
    try:
        cfg = SamplingConfig(max_new_tokens=6)
        for reuse in (False, True):
            calls.update(policy=0, reference=0)
            evaluate_policy(
                policy, tiny_lm.tokenizer, FakeTask(), PROMPTS, cfg, batch_size=5, reuse_sampling_logps=reuse
            )
            assert calls == {"policy": 0 if reuse else 1, "reference": 1}
    finally:
        handle.remove()


# -- the apps record their precision ---------------------------------------------------------------------
def test_evaluate_app_records_bf16(cpu_precision_is, tmp_path, tiny_lm):
    """The policy and the win-rate judge (an in-process LM) both evaluate in bf16 and say so."""
    trained_lora(tiny_lm.model, std=0.5).save_pretrained(tmp_path / "policy")
    reference = tmp_path / "reference.jsonl"
    reference.write_text(
        "".join(json.dumps({"prompt": p, "completion": " fine"}) + "\n" for p in PROMPTS[:3])
    )
    cpu_precision_is("bf16-mixed")
    cfg = compose(
        [
            "model=tiny", "model.dtype=auto", "~task", "+task._target_=test_evaluate.FakeTask",
            f"policy_path={tmp_path / 'policy'}", "n_prompts=3", "sampling.max_new_tokens=6", "n_bootstrap=100",
            f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path}", "judge=smollm2_135m",
            "judge.model.source=tiny", f"win_rate.reference_samples={reference}",
        ],
        config_name="evaluate",
    )  # fmt: skip
    evaluate(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["precision"] == "bf16" and math.isfinite(saved["kl"]) and saved["kl"] != 0
    assert saved["judge_precision"] == "bf16" and saved["win_rate_pairs"] == 3


def test_sample_app_records_its_precision(cpu_precision_is, tmp_path):
    from alignlab.sample import sample as sample_app

    for forced, expected in (("32-true", "fp32"), ("bf16-mixed", "bf16")):
        cpu_precision_is(forced)
        out = tmp_path / forced
        cfg = compose(
            [
                "task=sentiment_toy", "model=tiny", "model.dtype=auto", "n_prompts=2", "batch_size=2",
                "sampling.max_new_tokens=4", "progress=false", f"paths.output_dir={out}",
                f"paths.cache_dir={tmp_path}",
            ],
            config_name="sample",
        )  # fmt: skip
        report = sample_app(cfg)
        assert report["precision"] == expected
        assert json.loads((out / "samples.report.json").read_text())["precision"] == expected


def test_label_app_records_its_precision(cpu_precision_is, tmp_path):
    from alignlab.label import label

    cpu_precision_is("bf16-mixed")
    cfg = compose(
        [
            "task=sentiment_toy", "model=tiny", "model.dtype=auto", "n_prompts=4", "batch_size=4",
            "sampling.max_new_tokens=4", "progress=false", "keep_ties=true", f"paths.output_dir={tmp_path}",
            f"paths.cache_dir={tmp_path}",
        ],
        config_name="label",
    )  # fmt: skip
    report = label(cfg)
    saved = json.loads((tmp_path / "pairs.report.json").read_text())
    assert report["precision"] == saved["precision"] == "bf16"  # the policy sampled the pairs in bf16
    assert saved["judge_precision"] is None  # the gold judge runs no model
