"""One objective for every controller, scored on the plant's batch record (the truth).

What a plant judges a batch by: how long it took for the product it made (throughput: batch
time per unit of yield, the yield counted against the actual final temperature), whether the
product is inside its release window (size around the target, CV and fines maxima: the
process's :class:`conf.contract.process.ProductSpecification`), and whether the crystalliser
stayed inside its metastable limit (the true peak supersaturation). In hours, lower is better::

    cost = batch_time_h / yield
         + SPEC_PENALTY_H x (size, CV and fines excess over their window, and the solute left in
                             the liquor over its most where the specification sets one, each
                             relative to it and counted up to MAX_EXCESS)
         + LIMIT_PENALTY_H x (peak sigma over the metastable limit, relative to it, from the
                              seed charge on: before it the recipe runs for every controller)
         + FAILED_BATCH_H  (the batch hit its time limit or did not complete)

An off-specification batch costs about as much as running it again (the penalties are of the
order of a batch time), so a controller cannot buy speed with product quality. Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["BatchScore", "FAILED_BATCH_H", "LIMIT_PENALTY_H", "SPEC_PENALTY_H", "batch_cost_h", "score_batch"]

#: Hours charged per unit of relative excess over the release window (a batch 1x its tolerance
#: outside it costs 4 h: reworking it is a second batch).
SPEC_PENALTY_H = 4.0
#: A term's excess counts up to this: a batch far outside its window is scrap however far.
MAX_EXCESS = 2.0
#: Hours charged per unit of relative excess of the true peak supersaturation over the limit.
LIMIT_PENALTY_H = 4.0
#: Hours charged for a batch that hit its time limit or did not complete.
FAILED_BATCH_H = 8.0
#: Yield below which throughput is counted at this floor (a failed batch costs its penalties,
#: not an unbounded throughput).
MIN_YIELD = 0.5


@dataclass(frozen=True)
class BatchScore:
    """A batch judged by :func:`score_batch`.

    Attributes:
        cost: the objective, hours (lower is better).
        on_spec: the product is inside its release window and the batch completed.
        hard_violation: the true peak supersaturation passed the metastable limit.
        size_error_um: |d43 - target| (NaN without a target).
        throughput_h: batch time per unit yield.
        spec_excess: the relative excess over the window, summed over size, CV and fines.
        limit_excess: the relative excess of the peak over the limit.
    """

    cost: float
    on_spec: bool
    hard_violation: bool
    size_error_um: float
    throughput_h: float
    spec_excess: float
    limit_excess: float


def _number(record: dict, key: str) -> float:
    value = record.get(key)
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def score_batch(record: dict, target_um: float, specification, metastable_sigma_limit: float) -> BatchScore:
    """Score one batch record (``plant_sim`` batch report keys: d43_um, cv, fines_mass_fraction,
    yield, batch_time_h, peak_sigma_controlled or peak_sigma, batch_state, time_limit_hit).

    Args:
        record: the batch record.
        target_um: the product's d43 target (0: none, the size is not judged).
        specification: a :class:`conf.contract.process.ProductSpecification`.
        metastable_sigma_limit: the true metastable limit (ln S).
    """
    d43, cv, fines = _number(record, "d43_um"), _number(record, "cv"), _number(record, "fines_mass_fraction")
    yield_, hours = _number(record, "yield"), _number(record, "batch_time_h")
    # What the supervisor controls: from the seed charge on (the recipe's approach to seeding is
    # every controller's); a record without it, the whole batch.
    peak = _number(record, "peak_sigma_controlled")
    if not math.isfinite(peak):
        peak = _number(record, "peak_sigma")
    failed = bool(record.get("time_limit_hit")) or record.get("batch_state", "completed") != "completed"
    size_error = abs(d43 - target_um) if target_um > 0 else math.nan
    cost, throughput, excess, limit_excess = (float(v) for v in batch_cost_h(
        hours, yield_, d43, cv, fines, peak, target_um, specification, metastable_sigma_limit, failed))
    return BatchScore(cost=float(cost), on_spec=excess == 0.0 and not failed, hard_violation=limit_excess > 0.0,
                      size_error_um=float(size_error), throughput_h=float(throughput), spec_excess=float(excess),
                      limit_excess=float(limit_excess))


def batch_cost_h(hours, yield_, d43_um, cv, fines, peak_sigma, target_um: float, specification,
                 metastable_sigma_limit: float, failed=False):
    """The objective of the module docstring on arrays (any broadcastable shapes, numpy or
    numbers): what :func:`score_batch` charges a record, and what the agent's proposer charges
    a predicted batch, so that both judge by one formula.

    Args:
        hours: batch time, h.
        yield_: yield (fraction).
        d43_um, cv, fines: product size, CV and fines mass fraction (NaN: not known, charged
            as a term at its cap).
        peak_sigma: peak supersaturation from the seed charge on (NaN: not charged).
        target_um: the d43 target (0: the size is not judged).
        specification: a :class:`conf.contract.process.ProductSpecification`.
        metastable_sigma_limit: the metastable limit (ln S).
        failed: the batch hit its time limit or did not complete.

    Returns:
        (cost h, throughput h, spec excess, limit excess), numpy arrays of the broadcast shape.
    """
    def excess_over(value, most):
        value = np.asarray(value, dtype=float)
        return np.where(np.isfinite(value), np.clip(value / most - 1.0, 0.0, MAX_EXCESS), MAX_EXCESS)

    excess = excess_over(cv, specification.max_cv) + excess_over(fines, specification.max_fines_mass_fraction)
    max_loss = getattr(specification, "max_yield_loss", 1.0)
    if max_loss < 1.0:  # a yield floor: the solute left in the liquor is judged like the window
        excess = excess + excess_over(1.0 - np.asarray(yield_, dtype=float), max_loss)
    if target_um > 0:
        tolerance = specification.d43_tolerance_rel * target_um
        excess = excess + excess_over(np.abs(np.asarray(d43_um, dtype=float) - target_um), tolerance)
    peak = np.asarray(peak_sigma, dtype=float)
    limit_excess = np.where(np.isfinite(peak), np.maximum(peak / metastable_sigma_limit - 1.0, 0.0), 0.0)
    hours = np.asarray(hours, dtype=float)
    yield_ = np.asarray(yield_, dtype=float)
    throughput = np.where(np.isfinite(hours), hours, 0.0) / np.maximum(np.where(np.isfinite(yield_), yield_, 0.0),
                                                                        MIN_YIELD)
    cost = (throughput + SPEC_PENALTY_H * excess + LIMIT_PENALTY_H * limit_excess
            + np.where(np.asarray(failed, dtype=bool), FAILED_BATCH_H, 0.0))
    return cost, throughput, excess, limit_excess
