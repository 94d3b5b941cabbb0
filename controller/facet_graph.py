"""The facet-scale graph of the crystal population, kept current from imaging (pure).

An in-situ imaging probe reports the habit its shape analysis sees: per facet family slot, the
family's Miller indices (as 100 h + 10 k + l, :func:`conf.contract.codes.decode_hkl`) and its
area fraction. Facet normal growth rates are a laboratory measurement, not an in-line signal,
so nothing here reads one. The graph the model needs has one node per face:

1. the faces are those of the families seen (a family the probe does not see is left out);
2. each family's observed area fraction is shared equally by its faces, and renormalised over
   the families seen;
3. the observed-rate feature is what it is in training (:func:`models.data.generate`): the
   face rates of the material at the training reference condition, a laboratory
   characterisation. The agent has the network's own, so the graph is built in two passes as
   the material's habit is (:class:`controller.kinetics_service.KineticsService`): first with
   the rates unknown (the feature's floor, equal growth for the geometry), then the network's
   face rates at the reference condition on that graph (``reference_rates``), averaged per
   family, give the rate feature and the kinetic Wulff geometry (faces' adjacency) of the
   final graph; a geometry that would drop a family the probe sees falls back to equal
   growth, which keeps every face of the families seen;
4. surface energy and impurity affinity per family come from the material
   (:func:`models.graphs.facet_family_properties`), not from the probe;
5. cluster -> facet edges join each outer cluster of the material graph to the faces it lies
   under (:func:`models.graphs.cross_edges`).

The result is a :class:`models.graphs.Query` without conditions or targets, ready for
:meth:`models.msgnn.KineticsPredictor.query`. Nothing usable in the reading gives ``None``
(the caller falls back to the material's own habit, or holds). Slots whose signals are not
valid this cycle are dropped before (:func:`imaging_from_values` with ``ok``), so a stale
last-good value never reaches the model.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from conf.contract.codes import N_FACET_SLOTS, decode_hkl
from conf.contract.morphology import Habit, kinetic_wulff
from conf.contract.signals import facet_slot_signals
from models.graphs import Query, facet_features, facet_query

__all__ = ["ReferenceRates", "facet_graph_from_imaging", "imaging_from_values"]

#: The network's face growth rates (um/min) at the training reference condition on a facet
#: graph: Query with F faces -> (F,) (e.g. ``KineticsService.reference_face_rates``).
ReferenceRates = Callable[[Query], np.ndarray]

# The observed-rate feature's floor, um/min (models.graphs.facet_features): "rate unknown".
_UNKNOWN_RATE_UM_PER_MIN = 1e-4


def imaging_from_values(values: Mapping[str, float], ok: Mapping[str, bool] | None = None, *,
                        slots: int = N_FACET_SLOTS) -> list[tuple[float, float]]:
    """(hkl code, area fraction) per slot from the plant's tag values: the observed habit.

    A validated signal that is not ok keeps its last good value in ``values`` (the state
    estimator holds it and says how old it is); fed to the model, a stale facet reading would
    describe crystals that are no longer there. So with ``ok``, a slot either of whose two
    signals is not ok, or is missing from ``ok``, is dropped: the model then sees the families
    that are measured now, or none (and the caller falls back, e.g. to the material's habit).

    Args:
        values: tag name -> value, with ``facet_{j}_hkl`` and ``facet_{j}_area_fraction`` for
            j = 1..slots (:func:`conf.contract.signals.facet_slot_signals`).
        ok: tag name -> whether the signal is valid this cycle; None keeps every slot (the
            caller vouches for the values).
        slots: number of facet slots of the probe.

    Returns:
        One (hkl code, area fraction) per slot kept, in slot order (at most ``slots``; missing
        values are NaN).
    """
    readings = []
    for j in range(1, slots + 1):
        names = facet_slot_signals(j)
        if ok is not None and not all(ok.get(n, False) for n in names):
            continue
        code, fraction = (float(values.get(n, math.nan)) for n in names)
        readings.append((code, fraction))
    return readings


def facet_graph_from_imaging(
    imaging: Sequence[tuple[float, float]],
    family_properties: Mapping[tuple[int, int, int], tuple[float, float]],
    cluster_direction: np.ndarray,
    reference_rates: ReferenceRates | None = None,
) -> Query | None:
    """Facet graph of the observed habit (see the module docstring).

    Args:
        imaging: (hkl code, area fraction) per slot (:func:`imaging_from_values`).
        family_properties: hkl -> (surface energy J/m^2, impurity Langmuir per ppm).
        cluster_direction: unit directions of the material graph's clusters, (C, 3).
        reference_rates: the network's face rates at the reference condition on a graph
            (:data:`ReferenceRates`); None leaves the rate feature unknown (its floor) and the
            geometry at equal growth. Answers that are not finite and positive for every face
            count as unknown.

    Returns:
        The graph, or None when no slot names a known family with a positive area fraction.
    """
    seen: dict[tuple[int, int, int], float] = {}
    for code, fraction in imaging:
        hkl = decode_hkl(code)
        if hkl is None or hkl not in family_properties or hkl in seen:
            continue
        if not (math.isfinite(fraction) and fraction > 0.0):
            continue
        seen[hkl] = float(fraction)
    if not seen:
        return None
    hkls = list(seen)
    # Equal growth keeps every face of the families seen (the probe sees them all).
    equal = kinetic_wulff(hkls, [1.0] * len(hkls))
    unknown = np.full(len(hkls), _UNKNOWN_RATE_UM_PER_MIN)
    first = _graph(equal, hkls, seen, unknown, family_properties, cluster_direction)
    if reference_rates is None:
        return first
    face_rates = np.asarray(reference_rates(first), dtype=float).reshape(-1)
    if face_rates.shape != (equal.num_faces,) or not np.all(np.isfinite(face_rates) & (face_rates > 0)):
        return first
    family_rates = np.array([face_rates[equal.face_family == f].mean() for f in range(len(hkls))])
    habit = kinetic_wulff(hkls, family_rates)
    if not habit.present_families.all():
        habit = equal  # the reference habit grows out a family the crystals show: keep the crystals'
    return _graph(habit, hkls, seen, family_rates, family_properties, cluster_direction)


def _graph(habit: Habit, hkls: list, seen: Mapping[tuple[int, int, int], float], family_rates: np.ndarray,
           family_properties: Mapping[tuple[int, int, int], tuple[float, float]],
           cluster_direction: np.ndarray) -> Query:
    """The facet graph of ``habit`` (over ``hkls``) with the observed family area fractions and
    the given family rate feature (um/min, one per family)."""
    present = habit.face_family
    total = sum(seen[h] for h in hkls)
    family_fraction = np.array([seen[h] / total for h in hkls])
    faces_per_family = np.bincount(present, minlength=len(hkls))
    area = family_fraction[present] / np.maximum(faces_per_family[present], 1)
    area = area / area.sum()
    surface = np.array([family_properties[hkls[f]][0] for f in present])
    langmuir = np.array([family_properties[hkls[f]][1] for f in present])
    fx = facet_features(habit.normals, area, np.asarray(family_rates, dtype=float)[present], surface, langmuir)
    return facet_query(fx, habit.normals, habit.adjacency, cluster_direction)
