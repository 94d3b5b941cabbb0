"""Bayesian hyperparameter optimisation (BHPO) with a BoTorch GP and expected improvement.

Search space (:class:`SearchSpace`): real parameters (optionally on a log scale), integers
(optionally log-spaced) and categoricals. For the GP every point is encoded to the unit cube:
reals and integers by their (log-)position in their range, integers restricted to the encoded
values of their integers (discrete dimensions), categoricals as integer codes with a
categorical kernel (``MixedSingleTaskGP``; ``SingleTaskGP`` when there are none).

One BO iteration fits the GP to all finished trials (losses negated and standardised, so
larger is better), builds ``qLogExpectedImprovement`` at the best value so far and maximises it
with ``optimize_acqf_mixed_alternating`` (discrete and categorical dimensions searched as
such, continuous ones by L-BFGS). The q proposals run in parallel through any
``concurrent.futures.Executor`` (a local process pool by default; a cluster engine's executor
can take over). Random search and a scrambled Sobol sequence are the comparisons, on the same
budget.

Every finished trial is appended to a JSON-lines log as soon as it returns, so an interrupted
search resumes from its log: finished trials are not repeated.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = [
    "METHODS",
    "Param",
    "SearchSpace",
    "Trial",
    "propose_bo",
    "run_search",
    "plot_regret",
    "best_so_far",
]

METHODS = ("bo", "random", "sobol")


@dataclass(frozen=True)
class Param:
    """One hyperparameter.

    Attributes:
        name: key in the trial's config.
        kind: ``real``, ``int`` or ``cat``.
        low: lower bound (real, int).
        high: upper bound (real, int), inclusive.
        log: place the values on a log scale (real, int).
        choices: values of a categorical.
    """

    name: str
    kind: str
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    choices: tuple = ()

    def __post_init__(self) -> None:
        if self.kind not in ("real", "int", "cat"):
            raise ValueError(f"{self.name}: kind must be real, int or cat, got {self.kind!r}")
        if self.kind == "cat":
            if len(self.choices) < 2:
                raise ValueError(f"{self.name}: a categorical needs at least two choices")
        elif not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"{self.name}: need low < high (and low > 0 on a log scale), got {self.low}, {self.high}")

    def _to_unit(self, value: float) -> float:
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def _from_unit(self, u: float) -> float:
        u = min(max(float(u), 0.0), 1.0)
        if self.log:
            return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return self.low + u * (self.high - self.low)

    def encode(self, value: Any) -> float:
        if self.kind == "cat":
            return float(self.choices.index(value))
        return self._to_unit(float(value))

    def decode(self, x: float) -> Any:
        if self.kind == "cat":
            return self.choices[int(round(min(max(x, 0), len(self.choices) - 1)))]
        if self.kind == "int":
            return int(round(self._from_unit(x)))
        return self._from_unit(x)

    def grid(self) -> list[float]:
        """Encoded values an integer or categorical can take."""
        if self.kind == "cat":
            return [float(i) for i in range(len(self.choices))]
        return sorted({self._to_unit(v) for v in range(int(self.low), int(self.high) + 1)})


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of :class:`Param`; one encoded dimension per parameter."""

    params: tuple[Param, ...]

    @property
    def dim(self) -> int:
        return len(self.params)

    def bounds(self) -> torch.Tensor:
        upper = [len(p.choices) - 1 if p.kind == "cat" else 1.0 for p in self.params]
        return torch.tensor([[0.0] * self.dim, upper], dtype=torch.float64)

    def encode(self, config: dict) -> np.ndarray:
        return np.array([p.encode(config[p.name]) for p in self.params], dtype=float)

    def decode(self, x: Sequence[float]) -> dict:
        return {p.name: p.decode(v) for p, v in zip(self.params, x)}

    def from_unit_cube(self, u: np.ndarray) -> dict:
        """A config from a point of [0, 1]^d (random and Sobol search)."""
        x = [float(v) * (len(p.choices) - 1e-9) - 0.5 + 1e-9 if p.kind == "cat" else float(v)
             for p, v in zip(self.params, u)]
        return self.decode(x)

    @property
    def cat_dims(self) -> dict[int, list[float]]:
        return {i: p.grid() for i, p in enumerate(self.params) if p.kind == "cat"}

    @property
    def int_dims(self) -> dict[int, list[float]]:
        return {i: p.grid() for i, p in enumerate(self.params) if p.kind == "int"}


# ----------------------------------------------------------------------------- proposals
def propose_bo(space: SearchSpace, configs: Sequence[dict], losses: Sequence[float], q: int, seed: int) -> list[dict]:
    """q new configs by qLogEI on a GP of the finished trials (lower loss is better)."""
    from botorch.acquisition.logei import qLogExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import MixedSingleTaskGP, SingleTaskGP
    from botorch.optim.optimize_mixed import optimize_acqf_mixed_alternating
    from gpytorch.mlls import ExactMarginalLogLikelihood

    torch.manual_seed(seed)
    x = torch.tensor(np.stack([space.encode(c) for c in configs]), dtype=torch.float64)
    y = -torch.tensor(np.asarray(losses, dtype=float), dtype=torch.float64).unsqueeze(-1)
    cat = list(space.cat_dims)
    if cat:
        model = MixedSingleTaskGP(x, y, cat_dims=cat)
    else:
        model = SingleTaskGP(x, y)
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    acq = qLogExpectedImprovement(model, best_f=float(y.max()))
    candidates, _ = optimize_acqf_mixed_alternating(
        acq, bounds=space.bounds(), discrete_dims=space.int_dims or None, cat_dims=space.cat_dims or None,
        q=q, raw_samples=256, num_restarts=8,
    )
    return [space.decode(row.tolist()) for row in candidates]


def _unit_points(method: str, space: SearchSpace, n: int, seed: int, skip: int = 0) -> list[dict]:
    if method == "sobol":
        engine = torch.quasirandom.SobolEngine(space.dim, scramble=True, seed=seed)
        if skip:
            engine.fast_forward(skip)
        u = engine.draw(n).double().numpy()
    else:
        rng = np.random.default_rng([seed, skip])
        u = rng.random((n, space.dim))
    return [space.from_unit_cube(row) for row in u]


# ----------------------------------------------------------------------------- the search loop
@dataclass
class Trial:
    """One evaluated configuration.

    Attributes:
        index: position in its search (0-based).
        method: bo, random or sobol (bo's initial design is marked ``sobol-init``).
        config: hyperparameters.
        loss: validation loss (inf if the trial failed).
        wall_s: wall time of the evaluation.
        error: why it failed, else empty.
    """

    index: int
    method: str
    config: dict
    loss: float
    wall_s: float
    error: str = ""


def read_log(path: Path) -> list[Trial]:
    """Trials of a JSON-lines log; a torn last line (killed mid-write) is ignored."""
    if not path.is_file():
        return []
    trials = []
    for line in path.read_text().splitlines():
        try:
            raw = json.loads(line)
            trials.append(Trial(**raw))
        except (json.JSONDecodeError, TypeError):
            continue
    return trials


def _append(path: Path, trial: Trial) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(asdict(trial)) + "\n")
        fh.flush()


def _timed_call(objective: Callable[[dict], float], config: dict) -> tuple[float, float, str]:
    t0 = time.perf_counter()
    try:
        loss = float(objective(config))
        error = "" if math.isfinite(loss) else "non-finite loss"
    except Exception as exc:  # a failing configuration is a result, not a crash of the search
        loss, error = math.inf, f"{type(exc).__name__}: {exc}"
    return loss, time.perf_counter() - t0, error


def run_search(
    objective: Callable[[dict], float],
    space: SearchSpace,
    method: str,
    budget: int,
    log_path: str | Path,
    q: int = 2,
    n_init: int = 4,
    seed: int = 0,
    executor: Executor | None = None,
    progress: bool = False,
) -> list[Trial]:
    """Run (or resume) one search until ``budget`` trials are in its log.

    Args:
        objective: config -> validation loss; must be picklable for a process pool (a
            module-level function or a ``functools.partial`` of one).
        space: the search space.
        method: ``bo``, ``random`` or ``sobol``.
        budget: total trials.
        log_path: JSON-lines trial log (appended; read back to resume).
        q: trials proposed and evaluated together.
        n_init: Sobol trials before the first GP (bo).
        seed: seed of the proposals.
        executor: runs trials; default a process pool of ``q`` workers.
        progress: progress bar.

    Returns:
        All trials of the search, in order.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    log_path = Path(log_path)
    trials = read_log(log_path)
    own_pool = executor is None
    if executor is None:
        import multiprocessing

        # spawn, not fork: a process that already ran torch's OpenMP thread pool can hang a forked
        # child the first time the child enters a parallel region.
        executor = ProcessPoolExecutor(max_workers=max(1, q), mp_context=multiprocessing.get_context("spawn"))
    pool = executor
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=budget, initial=min(len(trials), budget), unit="trial", desc=f"tune ({method})", leave=False)
    try:
        while len(trials) < budget:
            done = len(trials)
            n = min(q, budget - done)
            if method == "bo" and done >= n_init:
                finite = [t for t in trials if math.isfinite(t.loss)]
                worst = max((t.loss for t in finite), default=1.0)
                # Failed trials count as the worst seen, so the GP steers away from them.
                losses = [t.loss if math.isfinite(t.loss) else worst for t in trials]
                configs = propose_bo(space, [t.config for t in trials], losses, n, seed + done)
                label = "bo"
            elif method == "bo":
                n = min(n, n_init - done)
                configs = _unit_points("sobol", space, n, seed, skip=done)
                label = "sobol-init"
            else:
                configs = _unit_points(method, space, n, seed, skip=done)
                label = method
            futures = [pool.submit(_timed_call, objective, c) for c in configs]
            for k, (config, fut) in enumerate(zip(configs, futures)):
                loss, wall, error = fut.result()
                trial = Trial(done + k, label, config, loss, wall, error)
                _append(log_path, trial)
                trials.append(trial)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(best=f"{min(t.loss for t in trials):.4g}")
    finally:
        if bar is not None:
            bar.close()
        if own_pool:
            pool.shutdown(cancel_futures=True)
    return trials[:budget]


def best_so_far(trials: Sequence[Trial]) -> np.ndarray:
    """Running minimum of the loss, (len(trials),)."""
    return np.minimum.accumulate(np.array([t.loss for t in trials], dtype=float))


def plot_regret(curves: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Best validation loss after n trials, one line per method (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        curve = np.asarray(curve, dtype=float)
        if curve.ndim == 2:  # several seeds: median and range
            med = np.median(curve, axis=0)
            x = np.arange(1, med.size + 1)
            ax.plot(x, med, label=f"{name} (median)")
            ax.fill_between(x, curve.min(0), curve.max(0), alpha=0.2)
        else:
            ax.plot(np.arange(1, curve.size + 1), curve, label=name)
    ax.set_xlabel("trials")
    ax.set_ylabel("best validation loss so far")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
