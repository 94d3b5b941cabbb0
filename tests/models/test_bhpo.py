"""BHPO: encoding of mixed search spaces, the BoTorch proposal, logs that resume, the executor."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from models.bhpo import Param, SearchSpace, best_so_far, plot_regret, propose_bo, read_log, run_search

SPACE = SearchSpace((
    Param("lr", "real", 1e-4, 1e-1, log=True),
    Param("width", "int", 8, 128, log=True),
    Param("layers", "int", 1, 4),
    Param("pool", "cat", choices=("mean", "attention", "max")),
))


def quadratic(config: dict) -> float:
    """Minimum 0 at lr = 1e-2, width = 32, layers = 3, pool = attention."""
    return ((math.log10(config["lr"]) + 2.0) ** 2 + (math.log2(config["width"]) - 5.0) ** 2 / 4
            + (config["layers"] - 3) ** 2 / 4 + (0.0 if config["pool"] == "attention" else 1.0))


def failing(config: dict) -> float:
    if config["layers"] == 4:
        raise RuntimeError("out of memory (simulated)")
    return quadratic(config)


def test_encoding_round_trips_and_respects_types():
    config = {"lr": 3e-3, "width": 48, "layers": 2, "pool": "max"}
    x = SPACE.encode(config)
    back = SPACE.decode(x)
    assert back["width"] == 48 and back["layers"] == 2 and back["pool"] == "max"
    assert back["lr"] == pytest.approx(3e-3)
    # log scale: the middle of the encoded range is the geometric mean
    assert SPACE.decode([0.5, 0.5, 0.5, 0])["lr"] == pytest.approx(math.sqrt(1e-4 * 1e-1))
    for u in np.random.default_rng(0).random((50, 4)):
        c = SPACE.from_unit_cube(u)
        assert isinstance(c["width"], int) and 8 <= c["width"] <= 128
        assert c["pool"] in ("mean", "attention", "max") and 1 <= c["layers"] <= 4


def test_bad_params_are_refused():
    with pytest.raises(ValueError, match="log"):
        Param("lr", "real", 0.0, 1.0, log=True)
    with pytest.raises(ValueError, match="two choices"):
        Param("pool", "cat", choices=("mean",))


def test_bo_proposals_are_valid_configs():
    rng = np.random.default_rng(1)
    configs = [SPACE.from_unit_cube(u) for u in rng.random((6, 4))]
    proposals = propose_bo(SPACE, configs, [quadratic(c) for c in configs], q=2, seed=0)
    assert len(proposals) == 2
    for c in proposals:
        assert set(c) == {"lr", "width", "layers", "pool"} and isinstance(c["layers"], int)


def test_bo_beats_random_search_on_a_smooth_objective(tmp_path):
    with ThreadPoolExecutor(2) as pool:
        bo = run_search(quadratic, SPACE, "bo", 12, tmp_path / "bo.jsonl", q=2, n_init=4, seed=0, executor=pool)
        rnd = run_search(quadratic, SPACE, "random", 12, tmp_path / "rnd.jsonl", q=2, seed=0, executor=pool)
    assert best_so_far(bo)[-1] < best_so_far(rnd)[-1]
    assert best_so_far(bo)[-1] < 0.5
    assert [t.method for t in bo[:4]] == ["sobol-init"] * 4 and bo[-1].method == "bo"


def test_a_search_resumes_from_its_log_without_repeating_trials(tmp_path):
    log = tmp_path / "trials.jsonl"
    calls = []

    def counted(config):
        calls.append(config)
        return quadratic(config)

    with ThreadPoolExecutor(1) as pool:
        run_search(counted, SPACE, "sobol", 5, log, q=1, seed=3, executor=pool)
        with log.open("a") as fh:
            fh.write('{"index": 5, "meth')  # a torn line from a killed run
        assert len(read_log(log)) == 5
        trials = run_search(counted, SPACE, "sobol", 8, log, q=1, seed=3, executor=pool)
    assert len(calls) == 8 and len(trials) == 8
    fresh = run_search(quadratic, SPACE, "sobol", 8, tmp_path / "fresh.jsonl", q=1, seed=3,
                       executor=ThreadPoolExecutor(1))
    assert [t.config for t in trials] == [t.config for t in fresh]  # the same sequence, resumed


def test_a_failing_trial_is_logged_and_the_search_goes_on(tmp_path):
    with ThreadPoolExecutor(2) as pool:
        trials = run_search(failing, SPACE, "bo", 8, tmp_path / "t.jsonl", q=2, n_init=4, seed=0, executor=pool)
    assert len(trials) == 8
    failed = [t for t in trials if t.error]
    assert all(math.isinf(t.loss) and "simulated" in t.error for t in failed)
    logged = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(logged) == 8


def test_the_default_executor_runs_trials_in_worker_processes(tmp_path):
    trials = run_search(quadratic, SPACE, "random", 4, tmp_path / "p.jsonl", q=2, seed=0)
    assert len(trials) == 4 and all(math.isfinite(t.loss) for t in trials)


def test_regret_plot_is_written(tmp_path):
    path = plot_regret({"bo": np.array([[3, 2, 1.0], [2, 2, 0.5]]), "random": np.array([3, 2.5, 2.0])},
                       tmp_path / "regret.png")
    assert path.stat().st_size > 1000
