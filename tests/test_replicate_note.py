"""The report says what its intervals over seeds cover, read off the runs (issue 25: a seed is a full
replicate only when it draws its own preference data), and the labeller's agreement per seed."""

from __future__ import annotations

from alignlab.compare_verdict import audit_cell, replicate_note


def _run(method, labeller, seed, acc, variant=None):
    return {"method": method, "labeller": labeller, "seed": seed, "variant": variant or {},
            "label_audit": {"gold_accuracy": acc, "gold_kappa": 2 * acc - 1}}  # fmt: skip


def test_per_seed_draws_are_named_as_covered():
    runs = [_run("dpo", "gold", s, 0.80 + 0.01 * s) for s in range(3)]
    runs += [_run("rlaif_dpo", "tuned", s, 0.70 + 0.02 * s) for s in range(3)]
    note = replicate_note(runs)
    assert "each seed drew its own preference pairs" in note and "conditional" not in note


def test_one_shared_draw_is_named_as_conditional():
    runs = [_run("dpo", "gold", s, 0.93) for s in range(3)] + [
        _run("rloo", "gold", s, 0.93) for s in range(3)
    ]
    note = replicate_note(runs)
    assert "conditional on that one draw" in note


def test_a_mix_is_said_and_sweep_points_or_one_seed_say_nothing():
    mixed = [_run("dpo", "gold", 0, 0.9), _run("dpo", "gold", 1, 0.9), _run("dpo", "gold", 2, 0.8)]
    assert "partly conditions" in replicate_note(mixed)
    assert replicate_note([_run("dpo", "gold", 0, 0.9)]) == ""
    # a sweep point relabels nothing: it does not count as a seed's draw
    assert (
        replicate_note([_run("dpo", "gold", 0, 0.9), _run("dpo", "gold", 1, 0.8, {"algo": {"beta": 0.3}})])
        == ""
    )


def test_audit_cell_shows_each_seed():
    runs = [_run("rlaif_dpo", "tuned", s, a) for s, a in ((0, 0.70), (1, 0.66), (2, 0.74))]
    cell = audit_cell(runs)
    assert cell.startswith("70% (κ +0.40)") and "s0 70%, s1 66%, s2 74%" in cell
    assert audit_cell([_run("dpo", "gold", 0, 0.9)]) == ""  # the gold labeller audits itself: no cell
