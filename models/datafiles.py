"""Users' own multi-scale data on disk: the format, a validating loader and an exporter.

A dataset is a directory::

    materials.csv       one row per material in one defect state
    structures/         atomic structures, extended XYZ (.extxyz/.xyz) or CIF, read with ase
    clusters/           cluster assignment and defect descriptors per material (JSON)
    facets/             facet graphs of observed habits (JSON)
    samples.csv         one row per measured sample

``materials.csv`` columns:

- ``material_id`` (unique), ``material`` (name), ``family`` (structure family, one of
  rocksalt, cesiumchloride, fluorite, zincblende, diamond, fcc, bcc),
- ``structure_file`` (relative path; a periodic supercell, vacancies removed; an extended XYZ
  file may carry a per-atom ``displacement_angstrom`` array),
- ``clusters_file`` (relative path, may be empty: then the 3 x 3 x 3 voxel grid and no defects),
- ``lattice_energy_kj_per_mol`` (> 0), ``density_kg_per_m3`` (> 0), ``formula_units`` (> 0,
  formula units in the supercell had it no vacancies).

A clusters file::

    {"assignment": [0, 0, 3, ...],             # optional: cluster of each atom (else voxels)
     "clusters": [{"dislocation_density_per_m2": 1e13, "vacancy_fraction": 0.05,
                   "planar_defect": 0}, ...]}  # one entry per cluster

A facets file (the faces of the observed habit)::

    {"facets": [{"normal": [1, 0, 0], "area_fraction": 0.2,
                 "observed_growth_rate_um_per_min": 1.3, "surface_energy_j_per_m2": 0.17,
                 "impurity_langmuir_per_ppm": 0.02}, ...],
     "adjacency": [[0, 1], [1, 0], ...]}        # face pairs sharing an edge

``samples.csv`` columns: ``sample_id``, ``material_id``, ``facets_file``, ``temperature_c``,
``driving_force`` (sigma = ln S, > 0), ``impurity_ppm`` (>= 0), ``stirring_rpm`` (> 0),
``G_um_per_min`` (> 0), ``log10_B``, ``lambda`` (> 0) and ``facet_R_um_per_min`` (one positive
rate per face of the facets file, in its order, separated by ``;``).

Every problem is reported with the file, the row or entry and the field, in one
:class:`DataFormatError`.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch

from models.graphs import (
    FAMILIES,
    MaterialGraph,
    MultiScaleDataset,
    Query,
    cross_edges,
    facet_features,
    material_graph_from_atoms,
    normalise_conditions,
)

__all__ = ["DataFormatError", "load_dataset", "write_dataset"]

MATERIAL_COLUMNS = ("material_id", "material", "family", "structure_file", "clusters_file",
                    "lattice_energy_kj_per_mol", "density_kg_per_m3", "formula_units")
SAMPLE_COLUMNS = ("sample_id", "material_id", "facets_file", "temperature_c", "driving_force", "impurity_ppm",
                  "stirring_rpm", "G_um_per_min", "log10_B", "lambda", "facet_R_um_per_min")
_LOG10_DISLOCATION = (12.0, 15.0)


class DataFormatError(ValueError):
    """A dataset that does not follow the format; the message names file, row and field."""


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def raise_if_any(self, root: Path) -> None:
        if self.items:
            shown = "\n  ".join(self.items[:20])
            more = f"\n  ... and {len(self.items) - 20} more" if len(self.items) > 20 else ""
            raise DataFormatError(f"dataset {root} has {len(self.items)} problem(s):\n  {shown}{more}")


def _number(problems: _Problems, where: str, field: str, raw, positive=False, non_negative=False):
    try:
        value = float(raw)
    except (TypeError, ValueError):
        problems.add(where, f"field {field}: {raw!r} is not a number")
        return None
    if not math.isfinite(value):
        problems.add(where, f"field {field}: {raw!r} is not finite")
        return None
    if positive and not value > 0:
        problems.add(where, f"field {field}: must be > 0, got {value}")
        return None
    if non_negative and not value >= 0:
        problems.add(where, f"field {field}: must be >= 0, got {value}")
        return None
    return value


def _read_csv(path: Path, columns: tuple[str, ...], problems: _Problems) -> list[tuple[int, dict]]:
    if not path.is_file():
        problems.add(str(path), "file not found")
        return []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            problems.add(str(path), f"missing columns {missing}; expected {list(columns)}")
            return []
        return [(n, row) for n, row in enumerate(reader, start=2)]  # row 1 is the header


def _read_json(path: Path, problems: _Problems):
    if not path.is_file():
        problems.add(str(path), "file not found")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        problems.add(str(path), f"not valid JSON ({exc})")
        return None


def _dislocation_rel(density_per_m2: float) -> float:
    if density_per_m2 <= 0:
        return 0.0
    lo, hi = _LOG10_DISLOCATION
    return float(min(max((math.log10(density_per_m2) - lo) / (hi - lo), 0.0), 1.0))


def _load_material(root: Path, where: str, row: dict, problems: _Problems) -> MaterialGraph | None:
    import ase.io

    family = row["family"].strip()
    if family not in FAMILIES:
        problems.add(where, f"field family: {family!r} is not one of {list(FAMILIES)}")
    energy = _number(problems, where, "lattice_energy_kj_per_mol", row["lattice_energy_kj_per_mol"], positive=True)
    density = _number(problems, where, "density_kg_per_m3", row["density_kg_per_m3"], positive=True)
    fu = _number(problems, where, "formula_units", row["formula_units"], positive=True)
    structure_path = root / row["structure_file"].strip()
    try:
        atoms = ase.io.read(structure_path)
    except FileNotFoundError:
        problems.add(where, f"field structure_file: {structure_path} not found")
        return None
    except Exception as exc:  # ase raises many types for unreadable files
        problems.add(where, f"field structure_file: {structure_path} is not a readable structure ({exc})")
        return None
    if not all(atoms.pbc) or abs(atoms.cell.volume) < 1e-6:
        problems.add(where, f"field structure_file: {structure_path} needs a periodic 3-D cell")
        return None
    assignment = None
    n_clusters = 27
    clusters = None
    clusters_file = row["clusters_file"].strip()
    if clusters_file:
        path = root / clusters_file
        raw = _read_json(path, problems)
        if raw is None:
            return None
        if "assignment" in raw:
            assignment = np.asarray(raw["assignment"])
            if assignment.shape != (len(atoms),) or assignment.dtype.kind not in "iu":
                problems.add(str(path), f"assignment: needs one integer cluster per atom ({len(atoms)} atoms)")
                return None
            n_clusters = int(assignment.max()) + 1
        clusters = raw.get("clusters")
        if not isinstance(clusters, list) or len(clusters) != n_clusters:
            problems.add(str(path), f"clusters: needs a list of {n_clusters} entries (one per cluster)")
            return None
    defects = {k: np.zeros(n_clusters) for k in ("dislocation", "vacancy", "planar")}
    for k, entry in enumerate(clusters or []):
        spot = f"{root / clusters_file} clusters[{k}]"
        if not isinstance(entry, dict):
            problems.add(spot, "must be an object")
            continue
        rho = _number(problems, spot, "dislocation_density_per_m2", entry.get("dislocation_density_per_m2", 0.0),
                      non_negative=True)
        vac = _number(problems, spot, "vacancy_fraction", entry.get("vacancy_fraction", 0.0), non_negative=True)
        planar = _number(problems, spot, "planar_defect", entry.get("planar_defect", 0), non_negative=True)
        if vac is not None and vac >= 1.0:
            problems.add(spot, f"field vacancy_fraction: must be < 1, got {vac}")
        defects["dislocation"][k] = _dislocation_rel(rho or 0.0)
        defects["vacancy"][k] = vac or 0.0
        defects["planar"][k] = 1.0 if planar else 0.0
    if None in (energy, density, fu) or family not in FAMILIES:
        return None
    displacement = atoms.arrays.get("displacement_angstrom")
    try:
        return material_graph_from_atoms(row["material_id"], row["material"], family, atoms, energy, fu, density,
                                         defects, displacement, assignment)
    except ValueError as exc:
        problems.add(where, str(exc))
        return None


def _load_facets(root: Path, name: str, problems: _Problems, cache: dict):
    if name in cache:
        return cache[name]
    path = root / name
    raw = _read_json(path, problems)
    out = None
    if raw is not None:
        facets = raw.get("facets") if isinstance(raw, dict) else None
        if not isinstance(facets, list) or not facets:
            problems.add(str(path), "facets: needs a non-empty list")
        else:
            rows, ok = [], True
            for k, f in enumerate(facets):
                spot = f"{path} facets[{k}]"
                normal = np.asarray(f.get("normal", []), dtype=float) if isinstance(f, dict) else np.zeros(0)
                if normal.shape != (3,) or not np.isfinite(normal).all() or np.linalg.norm(normal) == 0:
                    problems.add(spot, "field normal: needs three finite numbers, not all zero")
                    ok = False
                    continue
                vals = [_number(problems, spot, key, f.get(key), **kw) for key, kw in (
                    ("area_fraction", {"non_negative": True}),
                    ("observed_growth_rate_um_per_min", {"non_negative": True}),
                    ("surface_energy_j_per_m2", {"non_negative": True}),
                    ("impurity_langmuir_per_ppm", {"non_negative": True}),
                )]
                if None in vals:
                    ok = False
                    continue
                rows.append((normal / np.linalg.norm(normal), *vals))
            adjacency = np.asarray(raw.get("adjacency", []), dtype=int).reshape(-1, 2).T if ok else None
            if ok and adjacency.size and (adjacency.min() < 0 or adjacency.max() >= len(rows)):
                problems.add(str(path), f"adjacency: face indices must lie in 0..{len(rows) - 1}")
                ok = False
            if ok:
                normals = np.stack([r[0] for r in rows])
                fx = facet_features(normals, np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
                                    np.array([r[3] for r in rows]), np.array([r[4] for r in rows]))
                out = (normals, fx, adjacency)
    cache[name] = out
    return out


def load_dataset(directory: str | Path) -> MultiScaleDataset:
    """Read and validate a dataset directory (module docstring).

    Raises:
        DataFormatError: listing every problem with its file, row (or entry) and field.
    """
    root = Path(directory)
    problems = _Problems()
    if not root.is_dir():
        raise DataFormatError(f"dataset directory {root} not found")
    material_rows = _read_csv(root / "materials.csv", MATERIAL_COLUMNS, problems)
    sample_rows = _read_csv(root / "samples.csv", SAMPLE_COLUMNS, problems)
    materials: list[MaterialGraph] = []
    index: dict[str, int] = {}
    for n, row in material_rows:
        where = f"{root / 'materials.csv'} row {n}"
        mid = row["material_id"].strip()
        if not mid or mid in index:
            problems.add(where, f"field material_id: {mid!r} is empty or repeated")
            continue
        graph = _load_material(root, where, row, problems)
        if graph is not None:
            index[mid] = len(materials)
            materials.append(graph)
    queries: list[Query] = []
    facet_cache: dict = {}
    for n, row in sample_rows:
        where = f"{root / 'samples.csv'} row {n}"
        mid = row["material_id"].strip()
        facets = _load_facets(root, row["facets_file"].strip(), problems, facet_cache)
        t = _number(problems, where, "temperature_c", row["temperature_c"])
        sigma = _number(problems, where, "driving_force", row["driving_force"], positive=True)
        imp = _number(problems, where, "impurity_ppm", row["impurity_ppm"], non_negative=True)
        rpm = _number(problems, where, "stirring_rpm", row["stirring_rpm"], positive=True)
        g = _number(problems, where, "G_um_per_min", row["G_um_per_min"], positive=True)
        log_b = _number(problems, where, "log10_B", row["log10_B"])
        lam = _number(problems, where, "lambda", row["lambda"], positive=True)
        rates = []
        for k, part in enumerate(str(row["facet_R_um_per_min"]).split(";")):
            rates.append(_number(problems, where, f"facet_R_um_per_min[{k}]", part, positive=True))
        if mid not in index:
            problems.add(where, f"field material_id: {mid!r} is not a loaded material of materials.csv")
            continue
        if facets is None or None in (t, sigma, imp, rpm, g, log_b, lam) or None in rates:
            continue
        normals, fx, adjacency = facets
        if len(rates) != fx.shape[0]:
            problems.add(where, f"field facet_R_um_per_min: {len(rates)} rates for {fx.shape[0]} faces in "
                                f"{row['facets_file'].strip()}")
            continue
        m = materials[index[mid]]
        cross, cross_attr = cross_edges(m.cluster_direction.numpy().astype(float), normals)
        queries.append(Query(
            material_index=index[mid],
            facet_x=torch.tensor(fx, dtype=torch.float32),
            facet_index=torch.tensor(adjacency, dtype=torch.long),
            cross_index=torch.tensor(cross, dtype=torch.long),
            cross_attr=torch.tensor(cross_attr, dtype=torch.float32),
            conditions=torch.tensor(normalise_conditions(t, sigma, imp, rpm), dtype=torch.float32),
            raw_conditions=torch.tensor([t, sigma, imp, rpm], dtype=torch.float64),
            y=torch.tensor([g, log_b, lam], dtype=torch.float32),
            facet_y=torch.tensor(rates, dtype=torch.float32),
        ))
    if not sample_rows and not problems.items:
        problems.add(str(root / "samples.csv"), "no samples")
    problems.raise_if_any(root)
    return MultiScaleDataset(materials, queries, synthetic=False, description=f"loaded from {root}")


def write_dataset(dataset: MultiScaleDataset, directory: str | Path) -> Path:
    """Write ``dataset`` in the format above (extended XYZ structures). Returns the directory."""
    import ase.io

    from models.graphs import CLUSTER_FEATURES, FACET_FEATURES, FLAT_MATERIAL

    root = Path(directory)
    for sub in ("structures", "clusters", "facets"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ci = {name: CLUSTER_FEATURES.index(name) for name in CLUSTER_FEATURES}
    with (root / "materials.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(MATERIAL_COLUMNS)
        for k, m in enumerate(dataset.materials):
            if m.atoms is None:
                raise ValueError(f"material {m.key} has no atoms to export")
            stem = f"m{k:04d}"
            ase.io.write(root / "structures" / f"{stem}.extxyz", m.atoms, format="extxyz")
            cx = m.cluster_x.numpy().astype(float)
            clusters = [{
                "dislocation_density_per_m2": 0.0 if row[ci["dislocation_density_rel"]] <= 0 else
                10 ** (_LOG10_DISLOCATION[0] + row[ci["dislocation_density_rel"]] * (_LOG10_DISLOCATION[1] - _LOG10_DISLOCATION[0])),
                "vacancy_fraction": row[ci["vacancy_fraction_x10"]] / 10.0,
                "planar_defect": int(row[ci["planar_defect"]] > 0.5),
            } for row in cx]
            (root / "clusters" / f"{stem}.json").write_text(json.dumps({"clusters": clusters}))
            d = dict(zip(FLAT_MATERIAL, m.descriptors.tolist()))
            writer.writerow([m.key, m.material, m.family, f"structures/{stem}.extxyz", f"clusters/{stem}.json",
                             repr(d["lattice_energy_mj_per_mol"] * 1000.0), repr(d["density_g_per_cm3"] * 1000.0),
                             repr(_formula_units(m))])
    fi = {name: FACET_FEATURES.index(name) for name in FACET_FEATURES}
    with (root / "samples.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(SAMPLE_COLUMNS)
        written: dict[int, str] = {}
        for n, q in enumerate(dataset.queries):
            key = id(q.facet_x)
            if key not in written:
                name = f"facets/f{len(written):05d}.json"
                fx = q.facet_x.numpy().astype(float)
                facets = [{
                    "normal": row[0:3].tolist(),
                    "area_fraction": float(row[fi["area_fraction"]]),
                    "observed_growth_rate_um_per_min": float(10 ** row[fi["log10_observed_rate_um_per_min"]]),
                    "surface_energy_j_per_m2": float(row[fi["surface_energy_j_per_m2"]]),
                    "impurity_langmuir_per_ppm": float(row[fi["impurity_langmuir_per_ppm_x10"]] / 10.0),
                } for row in fx]
                (root / name).write_text(json.dumps({"facets": facets, "adjacency": q.facet_index.T.tolist()}))
                written[key] = name
            raw = q.raw_conditions.tolist()
            y = q.y.tolist()
            writer.writerow([n, dataset.materials[q.material_index].key, written[key], *map(repr, raw),
                             *map(repr, y), ";".join(repr(float(r)) for r in q.facet_y.tolist())])
    return root


def _formula_units(m: MaterialGraph) -> float:
    """Formula units of a generated supercell had it no vacancies: Z x (cell length / a)^3."""
    from conf.contract.materials import MATERIALS

    mat = MATERIALS.get(m.material)
    if mat is None:
        raise ValueError(f"cannot infer the formula units of {m.key}: {m.material!r} is not in the materials database")
    reps = round(float(np.linalg.norm(m.atoms.cell.array[0])) / mat.lattice_constant_angstrom)
    return float(mat.formula_units_per_cell * reps**3)
