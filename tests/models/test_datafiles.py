"""Users' data on disk: the exporter and the validating loader agree; every problem is named."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from models.data import DataSettings, generate
from models.datafiles import DataFormatError, load_dataset, write_dataset


@pytest.fixture(scope="module")
def small():
    return generate(DataSettings(materials=("NaCl", "Cu"), variants_per_material=2, conditions_per_variant=2, seed=4))


@pytest.fixture()
def written(tmp_path, small):
    return write_dataset(small, tmp_path / "ds")


def test_round_trip_reproduces_every_model_input(small, written):
    loaded = load_dataset(written)
    assert not loaded.synthetic and len(loaded) == len(small)
    for a, b in zip(small.materials, loaded.materials):
        torch.testing.assert_close(a.atom_x, b.atom_x, atol=1e-5, rtol=1e-5)
        assert torch.equal(a.bond_index, b.bond_index)
        torch.testing.assert_close(a.cluster_x, b.cluster_x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.descriptors, b.descriptors, atol=1e-4, rtol=1e-5)
    for a, b in zip(small.queries, loaded.queries):
        torch.testing.assert_close(a.facet_x, b.facet_x, atol=1e-5, rtol=1e-5)
        assert torch.equal(a.facet_index, b.facet_index) and torch.equal(a.cross_index, b.cross_index)
        torch.testing.assert_close(a.y, b.y)
        torch.testing.assert_close(a.facet_y, b.facet_y)


def _edit_csv(path, row_index, field, value):
    rows = list(csv.DictReader(path.open()))
    rows[row_index][field] = value
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_bad_values_name_file_row_and_field(written):
    _edit_csv(written / "samples.csv", 2, "temperature_c", "warm")
    _edit_csv(written / "samples.csv", 3, "facet_R_um_per_min", "1.0;2.0")
    _edit_csv(written / "materials.csv", 3, "family", "hexagonal")
    with pytest.raises(DataFormatError) as info:
        load_dataset(written)
    text = str(info.value)
    assert "samples.csv row 4: field temperature_c: 'warm' is not a number" in text
    assert "samples.csv row 5: field facet_R_um_per_min: 2 rates for" in text
    assert "materials.csv row 5: field family: 'hexagonal'" in text


def test_a_corrupt_structure_or_json_is_named(written):
    (written / "structures" / "m0000.extxyz").write_text("this is not a structure\n")
    (written / "facets" / "f00000.json").write_text("{not json")
    with pytest.raises(DataFormatError) as info:
        load_dataset(written)
    text = str(info.value)
    assert "m0000.extxyz is not a readable structure" in text
    assert "f00000.json: not valid JSON" in text


def test_missing_files_and_columns(tmp_path, written):
    with pytest.raises(DataFormatError, match="not found"):
        load_dataset(tmp_path / "nowhere")
    (written / "samples.csv").write_text("sample_id,material_id\n0,x\n")
    with pytest.raises(DataFormatError, match="missing columns"):
        load_dataset(written)


def test_cluster_entries_are_checked(written):
    path = written / "clusters" / "m0001.json"
    raw = json.loads(path.read_text())
    raw["clusters"][3]["vacancy_fraction"] = 1.5
    raw["clusters"] = raw["clusters"][:26] + [{"vacancy_fraction": "lots"}]
    path.write_text(json.dumps(raw))
    with pytest.raises(DataFormatError) as info:
        load_dataset(written)
    text = str(info.value)
    assert "m0001.json clusters[3]: field vacancy_fraction: must be < 1" in text
    assert "clusters[26]: field vacancy_fraction: 'lots' is not a number" in text


def test_an_explicit_cluster_assignment_is_used(written, small):
    path = written / "clusters" / "m0000.json"
    raw = json.loads(path.read_text())
    n_atoms = small.materials[0].atom_x.shape[0]
    raw["assignment"] = [i % 4 for i in range(n_atoms)]
    raw["clusters"] = raw["clusters"][:4]
    path.write_text(json.dumps(raw))
    loaded = load_dataset(written)
    assert loaded.materials[0].cluster_x.shape[0] == 4
    shutil.rmtree(written)
