"""The facet-scale graph of the crystal population, kept current from imaging (pure).

The imaging probe reports, per facet family slot, the family's Miller indices (as
100 h + 10 k + l, :func:`conf.contract.codes.decode_hkl`), its area fraction and its observed
normal growth rate. The graph the model needs has one node per face:

1. the faces and their adjacency come from the kinetic Wulff habit of the observed family
   rates (a family the probe does not see, or whose rate is unusable, is left out; if no
   rate is usable the families grow equally, which keeps every face of the seen families);
2. each family's observed area fraction is shared equally by its faces on that habit, and
   renormalised over the families seen;
3. surface energy and impurity affinity per family come from the material
   (:func:`models.graphs.facet_family_properties`), not from the probe;
4. cluster -> facet edges join each outer cluster of the material graph to the faces it lies
   under (:func:`models.graphs.cross_edges`).

The result is a :class:`models.graphs.Query` without conditions or targets, ready for
:meth:`models.msgnn.KineticsPredictor.query`. Nothing usable in the reading gives ``None``
(the caller falls back to the material's own habit, or holds). Slots whose signals are not
valid this cycle are dropped before (:func:`imaging_from_values` with ``ok``), so a stale
last-good value never reaches the model.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from conf.contract.codes import N_FACET_SLOTS, decode_hkl
from conf.contract.morphology import kinetic_wulff
from conf.contract.signals import facet_slot_signals
from models.graphs import Query, facet_features, facet_query

__all__ = ["facet_graph_from_imaging", "imaging_from_values"]


def imaging_from_values(values: Mapping[str, float], ok: Mapping[str, bool] | None = None, *,
                        slots: int = N_FACET_SLOTS) -> list[tuple[float, float, float]]:
    """(hkl code, area fraction, growth rate um/min) per slot from the plant's tag values.

    A validated signal that is not ok keeps its last good value in ``values`` (the state
    estimator holds it and says how old it is); fed to the model, a stale facet reading would
    describe crystals that are no longer there. So with ``ok``, a slot any of whose three
    signals is not ok, or is missing from ``ok``, is dropped: the model then sees the families
    that are measured now, or none (and the caller falls back, e.g. to the material's habit).

    Args:
        values: tag name -> value, with ``facet_{j}_hkl``, ``facet_{j}_area_fraction`` and
            ``facet_{j}_growth_rate_um_per_min`` for j = 1..slots.
        ok: tag name -> whether the signal is valid this cycle; None keeps every slot (the
            caller vouches for the values).
        slots: number of facet slots of the probe.

    Returns:
        One (hkl code, area fraction, growth rate um/min) per slot kept, in slot order
        (at most ``slots``; missing values are NaN).
    """
    readings = []
    for j in range(1, slots + 1):
        names = facet_slot_signals(j)
        if ok is not None and not all(ok.get(n, False) for n in names):
            continue
        readings.append(tuple(float(values.get(n, math.nan)) for n in names))
    return readings


def facet_graph_from_imaging(
    imaging: Sequence[tuple[float, float, float]],
    family_properties: Mapping[tuple[int, int, int], tuple[float, float]],
    cluster_direction: np.ndarray,
) -> Query | None:
    """Facet graph from one imaging reading (see the module docstring).

    Args:
        imaging: (hkl code, area fraction, observed growth rate um/min) per slot.
        family_properties: hkl -> (surface energy J/m^2, impurity Langmuir per ppm).
        cluster_direction: unit directions of the material graph's clusters, (C, 3).
    """
    seen: dict[tuple[int, int, int], tuple[float, float]] = {}
    for code, fraction, rate in imaging:
        hkl = decode_hkl(code)
        if hkl is None or hkl not in family_properties or hkl in seen:
            continue
        if not (math.isfinite(fraction) and fraction > 0.0):
            continue
        seen[hkl] = (float(fraction), float(rate) if math.isfinite(rate) and rate > 0 else math.nan)
    if not seen:
        return None
    hkls = list(seen)
    rates = [seen[h][1] for h in hkls]
    if any(math.isnan(r) for r in rates):
        rates = [1.0] * len(hkls)  # no usable rates: equal growth keeps every face of the families seen
    habit = kinetic_wulff(hkls, rates)
    present = habit.face_family
    total = sum(seen[h][0] for h in hkls)
    family_fraction = np.array([seen[h][0] / total for h in hkls])
    faces_per_family = np.bincount(present, minlength=len(hkls))
    area = family_fraction[present] / np.maximum(faces_per_family[present], 1)
    area = area / area.sum()
    observed = np.array([seen[hkls[f]][1] for f in present], dtype=float)
    observed = np.where(np.isfinite(observed), observed, 1e-4)
    surface = np.array([family_properties[hkls[f]][0] for f in present])
    langmuir = np.array([family_properties[hkls[f]][1] for f in present])
    fx = facet_features(habit.normals, area, observed, surface, langmuir)
    return facet_query(fx, habit.normals, habit.adjacency, cluster_direction)
