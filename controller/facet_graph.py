"""The facet-scale graph of the crystal population, kept current from imaging (pure).

The imaging probe reports, per facet family slot, the family's Miller indices (as
100 h + 10 k + l), its area fraction and its observed normal growth rate. The graph the model
needs has one node per face:

1. the faces and their adjacency come from the kinetic Wulff habit of the observed family
   rates (a family the probe does not see, or whose rate is unusable, is left out; if no
   rate is usable the families grow equally, which keeps every face of the seen families);
2. each family's observed area fraction is shared equally by its faces on that habit, and
   renormalised over the families seen;
3. surface energy and impurity affinity per family come from the material
   (:func:`models.data.facet_family_properties`), not from the probe;
4. cluster -> facet edges join each outer cluster of the material graph to the faces it lies
   under (:func:`models.data.cross_edges`).

The result is a :class:`models.data.Query` without conditions or targets, ready for
:meth:`models.msgnn.KineticsPredictor.query`. Nothing usable in the reading gives ``None``
(the caller holds).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

from models.data import Query, cross_edges, facet_features
from plant_sim.morphology import kinetic_wulff

__all__ = ["decode_hkl", "facet_graph_from_imaging", "imaging_from_values"]


def decode_hkl(code: float) -> tuple[int, int, int] | None:
    """100 h + 10 k + l -> (h, k, l); None for 0, NaN or a code that is not a family."""
    if not math.isfinite(code) or code <= 0 or code != int(code) or code > 999:
        return None
    c = int(code)
    return (c // 100, (c // 10) % 10, c % 10)


def imaging_from_values(values: Mapping[str, float], slots: int = 4) -> list[tuple[float, float, float]]:
    """(hkl code, area fraction, growth rate um/min) per slot from the plant's tag values."""
    return [(values.get(f"facet_{j}_hkl", math.nan), values.get(f"facet_{j}_area_fraction", math.nan),
             values.get(f"facet_{j}_growth_rate_um_per_min", math.nan)) for j in range(1, slots + 1)]


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
    cross, cross_attr = cross_edges(np.asarray(cluster_direction, dtype=float), habit.normals)
    return Query(
        material_index=0,
        facet_x=torch.tensor(fx, dtype=torch.float32),
        facet_index=torch.tensor(np.asarray(habit.adjacency), dtype=torch.long),
        cross_index=torch.tensor(cross, dtype=torch.long),
        cross_attr=torch.tensor(cross_attr, dtype=torch.float32),
        conditions=torch.zeros(4),
        raw_conditions=torch.zeros(4, dtype=torch.float64),
        y=torch.zeros(3),
        facet_y=torch.zeros(fx.shape[0]),
    )
