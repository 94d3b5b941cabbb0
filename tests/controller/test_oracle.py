"""The oracle: the best profile with the plant known, cached per scenario content and seed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conf.schema import load_config
from controller.oracle import (
    OracleResult,
    OracleSettings,
    cache_key,
    oracle_cached,
    profile_path,
    simulate_profile,
    solve_oracle,
)
from controller.scoring import score_batch

NOMINAL = ["process.target_mean_size_um=340"]
FAST = OracleSettings(max_evaluations=25, max_restarts=0)


def _cost(cfg, record):
    return score_batch(record, 340.0, cfg.process.specification, cfg.proposer.metastable_sigma_limit).cost


def test_a_profile_is_monotone_from_the_programme_start_to_the_final_temperature():
    temps = profile_path(49.0, 20.0, 120.0, [1.0, 3.0, 0.5, 2.0])
    assert temps[0] == 49.0 and temps[-1] == pytest.approx(20.0) and len(temps) == 5
    assert all(b < a for a, b in zip(temps, temps[1:]))
    assert temps[1] == pytest.approx(49.0 - 29.0 * 1.0 / 6.5)


def test_the_oracle_beats_the_recipe_s_profile_and_improves_a_poor_start():
    cfg = load_config(NOMINAL, simulator=True)
    linear = _cost(cfg, simulate_profile(cfg, profile_path(49.0, 20.0, 145.0, [1.0] * 6), 145.0, FAST.step_s))
    # a poor design: crash cooling first (through the metastable limit), then crawling
    poor = OracleResult(145.0, profile_path(49.0, 20.0, 145.0, [20.0, 1.0, 1.0, 1.0, 1.0, 1.0]), np.inf, np.inf, {},
                        0, 0.0)
    as_given = solve_oracle(cfg, dataclasses.replace(FAST, max_evaluations=1), start=poor)  # the start alone
    assert as_given.record["peak_sigma_controlled"] > cfg.proposer.metastable_sigma_limit  # it crosses the limit
    improved = solve_oracle(cfg, FAST, start=poor)
    assert improved.penalized_cost < 0.5 * as_given.penalized_cost and improved.evaluations <= FAST.max_evaluations + 2
    best = solve_oracle(cfg, FAST)
    assert best.cost <= linear and best.penalized_cost == best.cost  # the linear recipe is one of its starts
    assert best.record["peak_sigma_controlled"] <= cfg.proposer.metastable_sigma_limit * (1 - FAST.limit_margin_rel)
    assert all(b <= a + 1e-9 for a, b in zip(best.temperatures_c, best.temperatures_c[1:]))
    assert 0.0 <= best.final_hold_min <= 30.0  # its own hold, no longer than the recipe's


def test_restarts_from_the_best_point_go_on_where_the_simplex_stopped():
    """Nelder-Mead's simplex collapses short of the optimum: a restart from the best point with a
    fresh simplex may only gain, and the restarts stay within their budget."""
    cfg = load_config(NOMINAL, simulator=True)
    poor = OracleResult(145.0, profile_path(49.0, 20.0, 145.0, [20.0, 1.0, 1.0, 1.0, 1.0, 1.0]), np.inf, np.inf, {},
                        0, 0.0)
    once = solve_oracle(cfg, FAST, start=poor)
    restarted = solve_oracle(cfg, dataclasses.replace(FAST, max_restarts=2), start=poor)
    assert restarted.penalized_cost <= once.penalized_cost
    assert once.evaluations < restarted.evaluations <= 3 * (FAST.max_evaluations + 2)


def test_the_oracle_is_cached_per_scenario_content_and_seed(tmp_path, monkeypatch):
    cfg = load_config(NOMINAL, simulator=True)
    other_seed = load_config([*NOMINAL, "scenario.seed=5"], simulator=True)
    assert cache_key(cfg, FAST) == cache_key(load_config(NOMINAL, simulator=True), FAST)
    assert cache_key(cfg, FAST) != cache_key(other_seed, FAST)
    assert cache_key(cfg, FAST) != cache_key(cfg, dataclasses.replace(FAST, knots=8))
    assert cache_key(cfg, FAST) != cache_key(cfg, dataclasses.replace(FAST, max_restarts=2))
    calls = []

    def fake_solve(c, settings, start=None):
        calls.append(c)
        return OracleResult(100.0, (49.0, 30.0, 20.0), 2.5, 2.5, {"d43_um": 339.0}, 3, 0.1)

    monkeypatch.setattr("controller.oracle.solve_oracle", fake_solve)
    first, cached = oracle_cached(cfg, tmp_path, FAST)
    again, cached_again = oracle_cached(cfg, tmp_path, FAST)
    assert (cached, cached_again) == (False, True) and again == first and len(calls) == 1
    (tmp_path / f"{cache_key(cfg, FAST)}.json").write_text("{broken")
    _, cached_broken = oracle_cached(cfg, tmp_path, FAST)
    assert not cached_broken and len(calls) == 2  # an unreadable entry is solved again
