"""Batch-to-batch learning (controller/campaign.py): the recipe-level GP on a synthetic campaign
(pure, no plant), and a short campaign on the simulated plant through the benchmark harness."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conf.contract.process import ProductSpecification
from controller.campaign import OUTCOMES, Prior, next_charge, observed_outcomes, outcome_cost, summarise_campaign

SPEC = ProductSpecification()
TARGET_UM, LIMIT = 340.0, 0.015
SCALE = (0.1, 0.2, 0.02, 0.005, 0.02, 0.002)


def grown_d43_um(seed_rel):
    """SYNTHETIC: seeds of 100 um that grow by the mass balance alone (339 um at the recipe's charge)."""
    return 100.0 * (1.0 + 37.96 / np.asarray(seed_rel, dtype=float)) ** (1.0 / 3.0)


def outcomes(seed_rel, hours: float, offset: float = 0.0):
    d43 = grown_d43_um(np.asarray(seed_rel, dtype=float) * (1.0 + offset))
    ones = np.ones_like(d43)
    return np.stack([d43, hours * ones, 0.07 * ones, 0.001 * ones, 0.96 * ones, 0.013 * ones], axis=-1)


def model_prior() -> Prior:
    x = np.linspace(0.5, 2.0, 31)
    return Prior(x, outcomes(x, 3.0))


def test_the_first_batch_takes_the_model_s_best_charge():
    prior = model_prior()
    choice = next_charge(prior, [], np.zeros((0, 6)), TARGET_UM, SPEC, LIMIT, SCALE)
    cost = outcome_cost(prior.outcomes, TARGET_UM, SPEC, LIMIT)
    assert choice.index == int(np.argmin(cost)) and choice.acquisition.size == 0
    assert abs(grown_d43_um(choice.seed_mass_rel) - TARGET_UM) <= 0.05 * TARGET_UM  # inside the window


def run_synthetic_campaign(batches: int, offset: float, rng_seed: int = 0):
    """A campaign on a SYNTHETIC plant whose seed lot holds (1 + offset) of what it is counted as
    and whose batches take 10 % longer than the model says; d43 measured with 2 um noise."""
    prior, rng = model_prior(), np.random.default_rng(rng_seed)
    tried, observed, costs = [], [], []
    for k in range(batches):
        choice = next_charge(prior, tried, observed, TARGET_UM, SPEC, LIMIT, SCALE, mc_samples=128, seed=k)
        truth = outcomes(choice.seed_mass_rel, 3.3, offset)
        truth[0] += rng.normal(0.0, 2.0)
        tried.append(choice.index)
        observed.append(truth)
        costs.append(float(outcome_cost(truth, TARGET_UM, SPEC, LIMIT)))
    return prior, tried, costs


def test_a_persistent_seed_charge_error_is_learned_within_a_few_batches():
    prior, tried, costs = run_synthetic_campaign(5, offset=-0.3)
    charges = prior.seed_mass_rel[tried]
    assert costs[0] > 1.5 * costs[-1]  # the first batch is off spec (d43 too large), the last is not
    # the plant's seeds hold 70 % of the count: the charge that makes 340 um is ~1/0.7 of the recipe's
    d43_last = grown_d43_um(charges[-1] * 0.7)
    assert abs(d43_last - TARGET_UM) <= 0.05 * TARGET_UM, (charges, costs)
    assert charges[-1] > charges[0]


def test_without_a_mismatch_the_campaign_stays_near_the_model_s_choice():
    prior, tried, costs = run_synthetic_campaign(4, offset=0.0)
    charges = prior.seed_mass_rel[tried]
    # it explores where the model says the cost is flat (inside the size window), not outside it
    assert all(abs(grown_d43_um(c) - TARGET_UM) <= 0.06 * TARGET_UM for c in charges), charges
    assert max(costs) < 4.0


def test_the_choice_is_deterministic_for_its_inputs():
    prior = model_prior()
    observed = [outcomes(1.0, 3.3, -0.3)]
    one = next_charge(prior, [10], observed, TARGET_UM, SPEC, LIMIT, SCALE, mc_samples=64, seed=3)
    two = next_charge(prior, [10], observed, TARGET_UM, SPEC, LIMIT, SCALE, mc_samples=64, seed=3)
    assert one.index == two.index and np.allclose(one.expected_cost, two.expected_cost)


def test_a_batch_with_a_missing_outcome_still_teaches_the_others():
    prior = model_prior()
    observed = outcomes(1.0, 3.3, -0.3)
    observed[2] = math.nan  # no CV in the record
    choice = next_charge(prior, [10], [observed], TARGET_UM, SPEC, LIMIT, SCALE, mc_samples=64)
    assert prior.seed_mass_rel[choice.index] > 1.0 and np.all(np.isfinite(choice.expected_cost))


def test_the_next_charge_stays_in_the_trust_region_around_the_incumbent_and_the_first_can_be_the_recipe():
    prior = model_prior()
    recipe = int(np.argmin(np.abs(prior.seed_mass_rel - 1.0)))
    first = next_charge(prior, [], np.zeros((0, 6)), TARGET_UM, SPEC, LIMIT, SCALE, first=recipe)
    assert first.seed_mass_rel == pytest.approx(1.0)
    observed = [outcomes(1.0, 3.3, -0.3)]  # off size: the model's best lies at 1.43 x, out of one step
    free = next_charge(prior, [recipe], observed, TARGET_UM, SPEC, LIMIT, SCALE, mc_samples=64)
    bound = next_charge(prior, [recipe], observed, TARGET_UM, SPEC, LIMIT, SCALE, mc_samples=64, max_step_rel=0.2)
    assert abs(bound.seed_mass_rel - 1.0) <= 0.2 + 1e-9 and bound.seed_mass_rel > 1.0
    assert free.seed_mass_rel > 1.2


def test_candidates_need_not_be_evenly_spaced():
    x = np.array([0.5, 0.875, 1.0, 1.25, 1.625, 2.0])  # the recipe's charge added to an even grid
    prior = Prior(x, outcomes(x, 3.0))
    choice = next_charge(prior, [2], [outcomes(1.0, 3.3, -0.3)], TARGET_UM, SPEC, LIMIT, SCALE, mc_samples=64)
    assert np.all(np.isfinite(choice.expected_cost)) and choice.seed_mass_rel > 1.0
    # the posterior mean at the batch run is the batch's cost, not a neighbour's
    assert choice.expected_cost[2] == pytest.approx(float(outcome_cost(outcomes(1.0, 3.3, -0.3), TARGET_UM, SPEC,
                                                                       LIMIT)), rel=0.2)


def test_a_bad_forecast_is_refused():
    x = np.linspace(0.5, 2.0, 3)
    with pytest.raises(ValueError, match="non-finite"):
        Prior(x, np.full((3, 6), math.nan))
    with pytest.raises(ValueError, match="ascend"):
        Prior(x[::-1], outcomes(x, 3.0))
    with pytest.raises(ValueError, match="outcomes"):
        Prior(x, np.ones((3, 5)))


def test_observed_outcomes_read_a_batch_record():
    record = {"d43_um": 350.0, "batch_time_h": 2.5, "cv": 0.07, "fines_mass_fraction": 0.001, "yield": 0.95,
              "peak_sigma": 0.02, "peak_sigma_controlled": 0.014}
    assert observed_outcomes(record).tolist() == [350.0, 2.5, 0.07, 0.001, 0.95, 0.014]
    assert math.isnan(observed_outcomes({"d43_um": 1.0})[1])
    assert len(OUTCOMES) == 6


def test_the_summary_compares_the_arms_batch_by_batch():
    learned = [{"cost": 8.0, "on_spec": False, "seed_mass_g": 40.0}, {"cost": 3.0, "on_spec": True,
                                                                      "seed_mass_g": 57.0}]
    without = [{"cost": 8.2, "on_spec": False, "seed_mass_g": 40.0}, {"cost": 7.9, "on_spec": False,
                                                                      "seed_mass_g": 40.0}]
    s = summarise_campaign(learned, without)
    assert s["campaign"]["last_vs_first"] == pytest.approx(3.0 / 8.0)
    assert s["last_batch_vs_without"] == pytest.approx(3.0 / 7.9)
    assert s["campaign"]["spec_compliance"] == 0.5 and s["without_learning"]["spec_compliance"] == 0.0


def test_a_batch_predicted_to_reach_the_time_limit_is_charged_as_failed():
    o = outcomes(1.0, 3.0)
    assert outcome_cost(o, TARGET_UM, SPEC, LIMIT, time_limit_h=5.0) == pytest.approx(
        outcome_cost(o, TARGET_UM, SPEC, LIMIT))
    assert outcome_cost(o, TARGET_UM, SPEC, LIMIT, time_limit_h=3.0) == pytest.approx(
        outcome_cost(o, TARGET_UM, SPEC, LIMIT) + 8.0)


def test_a_short_campaign_runs_both_arms_on_the_simulated_plant(tmp_path, tiny_checkpoint):
    """Two batches per arm through the benchmark harness (the agent on the tiny checkpoint, whose
    kinetics are meaningless: the mechanics are checked, not what the campaign learns)."""
    import json

    from conf.schema import load_config
    from controller.campaign import run_campaign_benchmark

    overrides = [f"bench_campaign.output_dir={tmp_path}", "bench_campaign.batches=2", "bench_campaign.candidates=5",
                 f"bench_campaign.checkpoint={tiny_checkpoint}", "bench_campaign.mc_samples=32"]
    summary = run_campaign_benchmark(load_config(overrides, simulator=True), overrides)
    learned, without = summary["campaign"], summary["without_learning"]
    assert len(learned["cost_per_batch"]) == len(without["cost_per_batch"]) == 2
    assert all(math.isfinite(c) for c in learned["cost_per_batch"] + without["cost_per_batch"])
    assert without["seed_mass_g_per_batch"] == [40.0, 40.0]
    assert learned["seed_mass_g_per_batch"][0] == pytest.approx(40.0)  # the campaign starts from the recipe
    assert 1.0 in summary["prior"]["seed_mass_rel"] and len(summary["prior"]["seed_mass_rel"]) == 6
    assert abs(learned["seed_mass_g_per_batch"][1] / 40.0 - 1.0) <= 0.25 + 1e-9  # within the trust region
    batches = json.loads((tmp_path / "batches.json").read_text())
    assert [b["seed"] for b in batches["campaign"]] == [b["seed"] for b in batches["without_learning"]] == [0, 1]
    assert all(b["batch_time_limit_h"] > 0 for b in batches["campaign"])
    assert (tmp_path / "campaign.png").stat().st_size > 1000 and (tmp_path / "logs" / "campaign_02.sqlite").is_file()
