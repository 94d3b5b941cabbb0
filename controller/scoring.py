"""One objective for every controller, scored on the plant's batch record (the truth).

What a plant judges a batch by: how long it took for the product it made (throughput: batch
time per unit of yield, the yield counted against the actual final temperature), whether the
product is inside its release window (size around the target, CV and fines maxima: the
process's :class:`conf.contract.process.ProductSpecification`), and whether the crystalliser
stayed inside its metastable limit (the true peak supersaturation). In hours, lower is better::

    cost = batch_time_h / yield
         + SPEC_PENALTY_H x (size, CV and fines excess over their window, each relative to it
                             and counted up to MAX_EXCESS)
         + LIMIT_PENALTY_H x (peak sigma over the metastable limit, relative to it, from the
                              seed charge on: before it the recipe runs for every controller)
         + FAILED_BATCH_H  (the batch hit its time limit or did not complete)

An off-specification batch costs about as much as running it again (the penalties are of the
order of a batch time), so a controller cannot buy speed with product quality. Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BatchScore", "FAILED_BATCH_H", "LIMIT_PENALTY_H", "SPEC_PENALTY_H", "score_batch"]

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
    excess = 0.0
    size_error = abs(d43 - target_um) if target_um > 0 else math.nan
    if target_um > 0:
        tolerance = specification.d43_tolerance_rel * target_um
        excess += min(max(size_error / tolerance - 1.0, 0.0), MAX_EXCESS) if math.isfinite(size_error) else MAX_EXCESS
    for value, most in ((cv, specification.max_cv), (fines, specification.max_fines_mass_fraction)):
        excess += min(max(value / most - 1.0, 0.0), MAX_EXCESS) if math.isfinite(value) else MAX_EXCESS
    limit_excess = max(peak / metastable_sigma_limit - 1.0, 0.0) if math.isfinite(peak) else 0.0
    throughput = (hours if math.isfinite(hours) else 0.0) / max(yield_ if math.isfinite(yield_) else 0.0, MIN_YIELD)
    cost = throughput + SPEC_PENALTY_H * excess + LIMIT_PENALTY_H * limit_excess + (FAILED_BATCH_H if failed else 0.0)
    return BatchScore(cost=float(cost), on_spec=excess == 0.0 and not failed, hard_violation=limit_excess > 0.0,
                      size_error_um=float(size_error), throughput_h=float(throughput), spec_excess=float(excess),
                      limit_excess=float(limit_excess))
