"""One objective for every controller, from the plant's batch record."""

from __future__ import annotations

import math

import pytest

from conf.contract.process import ProductSpecification
from controller.scoring import FAILED_BATCH_H, LIMIT_PENALTY_H, MAX_EXCESS, SPEC_PENALTY_H, score_batch

SPEC = ProductSpecification(d43_tolerance_rel=0.05, max_cv=0.10, max_fines_mass_fraction=0.01)
GOOD = {"batch_state": "completed", "batch_time_h": 3.0, "d43_um": 340.0, "cv": 0.07, "fines_mass_fraction": 0.001,
        "yield": 1.0, "peak_sigma": 0.012, "peak_sigma_controlled": 0.011, "time_limit_hit": False}


def score(**changes):
    return score_batch({**GOOD, **changes}, 340.0, SPEC, 0.015)


def test_an_on_spec_batch_costs_its_batch_time_per_unit_yield():
    s = score()
    assert s.on_spec and not s.hard_violation and s.cost == pytest.approx(3.0) and s.size_error_um == 0.0
    assert score(batch_time_h=2.5).cost < s.cost  # faster is cheaper
    assert score(**{"yield": 0.8}).cost == pytest.approx(3.0 / 0.8)  # less product per batch is dearer


def test_leaving_the_release_window_costs_in_proportion_and_is_capped():
    inside = score(d43_um=340.0 * 1.049)
    assert inside.on_spec and inside.cost == pytest.approx(3.0)
    twice = score(d43_um=340.0 * 1.10)  # 2x the tolerance: one tolerance outside
    assert not twice.on_spec and twice.cost == pytest.approx(3.0 + SPEC_PENALTY_H * 1.0)
    assert score(cv=0.15).cost == pytest.approx(3.0 + SPEC_PENALTY_H * 0.5)
    scrap = score(fines_mass_fraction=1.0)  # 100x its maximum: scrap, counted at the cap
    assert scrap.cost == pytest.approx(3.0 + SPEC_PENALTY_H * MAX_EXCESS)
    assert math.isnan(score_batch(GOOD, 0.0, SPEC, 0.015).size_error_um)  # no target: size not judged


def test_a_yield_floor_where_the_specification_sets_one_is_judged_like_the_window():
    import dataclasses

    floor = dataclasses.replace(SPEC, max_yield_loss=0.02)  # at most 2 % left in the liquor
    assert score_batch({**GOOD, "yield": 0.985}, 340.0, floor, 0.015).on_spec
    short = score_batch({**GOOD, "yield": 0.95}, 340.0, floor, 0.015)  # 5 % left: 1.5 allowances over
    assert not short.on_spec and short.cost == pytest.approx(3.0 / 0.95 + SPEC_PENALTY_H * 1.5)
    # without a floor (the default) the same batch is on specification, dearer only per yield
    assert score(**{"yield": 0.95}).on_spec and ProductSpecification().max_yield_loss == 1.0
    with pytest.raises(ValueError, match="max_yield_loss"):
        ProductSpecification(max_yield_loss=0.0)


def test_the_limit_is_judged_from_the_seed_charge_and_a_failed_batch_pays():
    over = score(peak_sigma_controlled=0.018)
    assert over.hard_violation and over.cost == pytest.approx(3.0 + LIMIT_PENALTY_H * 0.2)
    before_seeds = score(peak_sigma=0.03)  # before the seeds, the recipe's: not the controller's
    assert not before_seeds.hard_violation
    legacy = {k: v for k, v in GOOD.items() if k != "peak_sigma_controlled"}
    assert score_batch({**legacy, "peak_sigma": 0.03}, 340.0, SPEC, 0.015).hard_violation
    failed = score(time_limit_hit=True, **{"yield": 0.0})
    assert not failed.on_spec and failed.cost == pytest.approx(3.0 / 0.5 + FAILED_BATCH_H)
    unreadable = score(d43_um=None, cv="bad")
    assert not unreadable.on_spec and math.isfinite(unreadable.cost)
