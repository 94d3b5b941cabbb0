"""The process schema: the recipe program, the process files, and one definition for all readers."""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path

import pytest

from conf.contract.instruments import DEFAULT_INSTRUMENTS, InstrumentSpec
from conf.contract.process import (
    FROM_PROCESS,
    BatchProcess,
    MaterialData,
    PowerLawPreset,
    RecipeStep,
    Seeding,
    recipe_duration_min,
    recipe_setpoint,
)
from conf.schema import ConfigError, XtalpilotConfig, load_config

CONF = Path(__file__).resolve().parents[3] / "conf"
PROCESSES = sorted(p.stem for p in (CONF / "process").glob("*.yaml"))
SCENARIOS = sorted(p.stem for p in (CONF / "scenario").glob("*.yaml"))
RECIPE = (RecipeStep(49.0, 0.5, 10.0), RecipeStep(20.0, 0.2, 30.0, antisolvent_rate_kg_per_min=0.1))
# A material nobody built in, as a site would write it: its own file, outside the repository.
UNOBTAINIUM = """\
name: unobtainium_cooling
description: a material given only as data, in a file of its own
material: Unobtainium
material_data:
  crystal_density_kg_per_m3: 1800.0
  volume_shape_factor: 0.6
  solubility_temperatures_c: [0.0, 20.0, 40.0, 60.0]
  solubility_values: [20.0, 26.0, 33.0, 41.0]      # g per 100 g water
  solubility_unit: g_per_100g
  metastable_sigma_limit: 0.03
  structure_file: structures/unobtainium.cif       # beside this file
  lattice_energy_kj_per_mol: 690.0
  kinetics: {name: guess, growth_rate_um_per_min: 50.0, growth_exponent: 1.5,
             nucleation_rate_per_kg_s: 1.0e6, nucleation_exponent: 2.0}
initial_temperature_c: 52.0
initial_saturation_temperature_c: 50.0
solvent_mass_kg: 12.0
recipe:
  - {temperature_c: 48.0, rate_k_per_min: 0.5, hold_min: 5.0}
  - {temperature_c: 25.0, rate_k_per_min: 0.3, hold_min: 10.0}
seeding: {mass_g: 25.0, mean_size_um: 80.0, std_size_um: 15.0, at_min: 8.0}
target_mean_size_um: 200.0
instruments:
  concentration_g_per_kg: {dead_time_s: 45.0}
  turbidity_ntu: {noise_std: 0.5, lag_s: 2.0}
"""


@pytest.fixture
def site_conf(tmp_path) -> list[str]:
    """Overrides that add a folder of the site's own process files to Hydra's search path."""
    import ase.io

    from conf.contract.lattice import build_atoms

    (tmp_path / "process" / "structures").mkdir(parents=True)
    (tmp_path / "process" / "unobtainium_cooling.yaml").write_text(UNOBTAINIUM)
    # SYNTHETIC: a rocksalt cell of a lattice constant no real salt has, for a made-up material.
    ase.io.write(tmp_path / "process" / "structures" / "unobtainium.cif", build_atoms("rocksalt", "NaCl", 6.0))
    return [f"hydra.searchpath=[file://{tmp_path}]"]


def test_the_recipe_ramps_holds_and_finishes():
    assert recipe_duration_min(RECIPE, 55.0) == pytest.approx(12.0 + 10.0 + 145.0 + 30.0)
    assert recipe_setpoint(RECIPE, 55.0, 6.0) == (pytest.approx(52.0), 0.0, False)
    assert recipe_setpoint(RECIPE, 55.0, 20.0) == (49.0, 0.0, False)
    t, anti, done = recipe_setpoint(RECIPE, 55.0, 22.0 + 50.0)
    assert t == pytest.approx(39.0) and anti == 0.1 and not done
    assert recipe_setpoint(RECIPE, 55.0, 500.0) == (20.0, 0.0, True)


@pytest.mark.parametrize("make", [lambda: RecipeStep(20.0, rate_k_per_min=0.0), lambda: Seeding(std_size_um=0.0),
                                  lambda: BatchProcess(solvent_mass_kg=-1.0), lambda: BatchProcess(target_mean_size_um=-1),
                                  lambda: BatchProcess(instruments={"x": {"noise_std": 1.0}})])
def test_out_of_range_values_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_the_issue_processes_exist():
    assert {"kcl_seeded_cooling", "kcl_unseeded_cooling", "kcl_msmpr", "kno3_seeded_cooling"} <= set(PROCESSES)


@pytest.mark.parametrize("process", PROCESSES)
def test_every_process_file_loads_and_validates_for_agent_and_simulator(process):
    agent = load_config([f"process={process}"], simulator=False)
    sim = load_config([f"process={process}"], simulator=True)
    assert type(agent) is XtalpilotConfig and isinstance(agent.process, BatchProcess)
    assert agent.process.name == process and agent.process.description
    assert agent.process.recipe and all(isinstance(s, RecipeStep) for s in agent.process.recipe)
    assert set(DEFAULT_INSTRUMENTS) <= set(agent.process.instruments)
    assert sim.process == agent.process  # one definition, whichever root reads it
    assert pickle.loads(pickle.dumps(sim)) == sim  # configs cross process boundaries


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_composes_and_runs_its_process(scenario):
    agent = load_config([f"scenario={scenario}"], simulator=False)
    sim = load_config([f"scenario={scenario}"], simulator=True)
    assert sim.scenario.name == scenario and agent.scenario["name"] == scenario  # unread by the agent
    assert sim.process == agent.process
    copied = [f.name for f in dataclasses.fields(sim.scenario) if f.metadata.get(FROM_PROCESS) is True]
    assert {"material", "recipe", "seeding", "initial_temperature_c", "material_data"} <= set(copied)
    for name in copied:  # the plant runs the process the agent reads, field for field
        assert getattr(sim.scenario, name) == getattr(agent.process, name), name
    assert sim.scenario.reactor.water_mass_kg == agent.process.solvent_mass_kg


def test_a_scenario_selects_its_process_and_the_command_line_wins():
    assert load_config([], simulator=False).process.name == "kcl_seeded_cooling"
    assert load_config(["scenario=unseeded_cooling"], simulator=False).process.name == "kcl_unseeded_cooling"
    assert load_config(["scenario=msmpr"], simulator=False).process.name == "kcl_msmpr"
    for order in (["scenario=kno3_as_data", "process=kcl_seeded_cooling"],
                  ["process=kcl_seeded_cooling", "scenario=kno3_as_data"]):
        cfg = load_config(order, simulator=True)
        assert cfg.process.name == "kcl_seeded_cooling" and cfg.scenario.material == "KCl"
        assert cfg.scenario.name == "kno3_as_data" and cfg.scenario.duration_min == 160.0
    cfg = load_config(["process=kno3_seeded_cooling", "scenario=fouling"], simulator=True)
    assert cfg.scenario.material == "KNO3" and cfg.scenario.fouling.start_min == 60.0


def test_a_bad_process_names_the_field_and_says_what_to_do(site_conf, tmp_path):
    bad = UNOBTAINIUM.replace("rate_k_per_min: 0.3", "rate_k_per_min: -0.3")
    (tmp_path / "process" / "bad.yaml").write_text(bad)
    for simulator in (False, True):
        with pytest.raises(ConfigError, match=r"process\.recipe\[1\]\.rate_k_per_min must be > 0"):
            load_config([*site_conf, "process=bad"], simulator=simulator)
    cases = (
        (["process.seeding.std_size_um=-1"], ["process.seeding.std_size_um", "> 0"]),
        (["process.solvent_mass_kg=nan"], ["process.solvent_mass_kg"]),
        (["process.seeding.mas_g=3"], ["mas_g"]),
        (["process.instruments.concentration_g_per_kg.noise_std=0"],
         ["process.instruments.concentration_g_per_kg.noise_std must be > 0"]),
        (["process=kno3_seeded_cooling", "process.material_data.solubility_unit=mg_per_l"],
         ["solubility_unit", "g_per_kg", "g_per_100g", "g_per_g"]),
        (["process=kno3_seeded_cooling", "process.material_data.solubility_values=[1,2]"],
         ["process.material_data", "measured points", "one of the two"]),
        (["process=kno3_seeded_cooling", "process.material_data.structure_file=' '"],
         ["process.material_data.structure_file", "path"]),
        # the keys that moved say where they went
        (["scenario.recipe.1.rate_k_per_min=0"], ["scenario.recipe", "process.recipe"]),
        (["+scenario.seeding.mass_g=3"], ["scenario.seeding", "process.seeding"]),
        (["scenario.reactor.water_mass_kg=20"], ["process.solvent_mass_kg"]),
        (["process.duration_min=60"], ["scenario.duration_min"]),
        (["process.seeding.mass_rel_std=0.3"], ["scenario.seed_mass_rel_std"]),
    )
    for override, words in cases:
        for simulator in (False, True):
            with pytest.raises(ConfigError) as info:
                load_config(override, simulator=simulator)
            assert all(w in str(info.value) for w in words), (override, simulator, str(info.value))


def test_the_instruments_are_the_defaults_but_where_the_process_names_its_own(site_conf):
    assert load_config([], simulator=False).process.instruments == DEFAULT_INSTRUMENTS
    kno3 = load_config(["process=kno3_seeded_cooling"], simulator=False).process.instruments
    atr, default = kno3["concentration_g_per_kg"], DEFAULT_INSTRUMENTS["concentration_g_per_kg"]
    assert atr == dataclasses.replace(default, max_rate_per_s=0.33)  # only the field given changes
    assert {k: v for k, v in kno3.items() if k != "concentration_g_per_kg"} == {
        k: v for k, v in DEFAULT_INSTRUMENTS.items() if k != "concentration_g_per_kg"}
    site = load_config([*site_conf, "process=unobtainium_cooling"], simulator=False).process.instruments
    assert site["concentration_g_per_kg"].dead_time_s == 45.0 and site["concentration_g_per_kg"].lag_s == default.lag_s
    assert site["turbidity_ntu"] == InstrumentSpec(0.5, lag_s=2.0)  # a signal the defaults do not know
    cli = load_config(["process.instruments.reactor_temperature_c.lag_s=8"], simulator=False).process.instruments
    assert cli["reactor_temperature_c"].lag_s == 8.0 and cli["reactor_temperature_c"].noise_std == 0.02
    built = BatchProcess(instruments={"reactor_temperature_c": InstrumentSpec(0.1)}).instruments
    assert built["reactor_temperature_c"].noise_std == 0.1 and built["jacket_temperature_c"] == DEFAULT_INSTRUMENTS[
        "jacket_temperature_c"]
    with pytest.raises(TypeError):
        built["x"] = InstrumentSpec(1.0)  # read-only


def test_the_agent_reads_the_process_s_instruments():
    from controller.agent import concentration_delay_s, validation_settings
    from conf.contract.tagmap import TagMap

    cfg = load_config(["process.instruments.concentration_g_per_kg.dead_time_s=90",
                       "process.instruments.reactor_temperature_c.noise_std=0.2"], simulator=False)
    base = load_config([], simulator=False)
    assert concentration_delay_s(cfg.agent, cfg.process.instruments) == pytest.approx(
        concentration_delay_s(base.agent, base.process.instruments) + 60.0)
    tagmap = TagMap.from_dict(cfg.plant)
    assert validation_settings(tagmap, cfg.agent, cfg.process.instruments)["reactor_temperature_c"].noise_floor == 0.2


def test_solubility_as_points_or_a_correlation_in_its_units_and_basis():
    poly = MaterialData(solubility_coefficients=(128.6, 5.88, 0.1721))
    temps, values = poly.solubility_table()
    assert temps[0] == 0.0 and temps[-1] == 100.0 and values[8] == pytest.approx(128.6 + 5.88 * 20 + 0.1721 * 400)
    per_g = MaterialData(solubility_coefficients=(0.1286, 5.88e-3, 1.721e-4), solubility_unit="g_per_g")
    assert per_g.solubility_table()[1] == pytest.approx(values)
    table = MaterialData(solubility_temperatures_c=(10.0, 30.0, 50.0), solubility_values=(300.0, 370.0, 430.0))
    assert table.solubility_table() == ((10.0, 30.0, 50.0), (300.0, 370.0, 430.0))
    per_100g = MaterialData(solubility_temperatures_c=(10.0, 30.0), solubility_values=(30.0, 37.0),
                            solubility_unit="g_per_100g")
    assert per_100g.solubility_table()[1] == pytest.approx((300.0, 370.0))
    # 25.4 % by mass of the saturated solution is 340.5 g per kg water (w / (1 - w))
    fraction = MaterialData(solubility_temperatures_c=(10.0, 30.0), solubility_values=(0.254, 0.27),
                            solubility_unit="g_per_g", solubility_basis="solution")
    assert fraction.solubility_table()[1] == pytest.approx((1000 * 0.254 / 0.746, 1000 * 0.27 / 0.73))
    for bad in (dict(), dict(solubility_temperatures_c=(10.0, 20.0), solubility_values=(1.0, 2.0),
                             solubility_coefficients=(1.0,)),
                dict(solubility_temperatures_c=(10.0,), solubility_values=(1.0,)),
                dict(solubility_temperatures_c=(20.0, 10.0), solubility_values=(1.0, 2.0)),
                dict(solubility_temperatures_c=(10.0, 20.0), solubility_values=(0.3, 1.2), solubility_unit="g_per_g",
                     solubility_basis="solution"),
                dict(solubility_coefficients=(1.0,), crystal_density_kg_per_m3=-1.0),
                dict(solubility_coefficients=(1.0,), structure_file="")):
        with pytest.raises(ValueError):
            MaterialData(**bad)
    with pytest.raises(ValueError, match="not positive"):
        MaterialData(solubility_coefficients=(10.0, -1.0)).solubility_table()
    assert math.isclose(MaterialData(solubility_coefficients=(1.0,)).volume_shape_factor, math.pi / 6)
    assert MaterialData(solubility_coefficients=(1.0,)).kinetics is None  # the prior is optional


def test_a_material_given_only_as_data_reaches_the_agent():
    from conf.contract.materials import MATERIALS
    from controller.agent import make_strategy
    from controller.kinetics_service import PriorKinetics
    from controller.rollout import MaterialConstants
    from controller.strategy import BatchRecipe, LinearCooling

    assert "KNO3" not in MATERIALS
    cfg = load_config(["process=kno3_seeded_cooling", "agent.strategy=model_predictive"], simulator=False)
    strategy = make_strategy(cfg)
    assert strategy.recipe == BatchRecipe.from_process(cfg.process, 250.0)
    assert strategy.recipe.start_temperature_c == 42.0 and strategy.recipe.seed_mass_g == 30.0
    assert strategy.recipe.target_size_um == 250.0 and strategy.recipe.solvent_mass_kg == 15.0
    assert isinstance(strategy.service, PriorKinetics)  # no structure: the prior is the model
    assert strategy.material == MaterialConstants.for_process(cfg.process, cfg.proposer.antisolvent_solubility_coefficient)
    assert strategy.material.density_kg_per_m3 == 2110.0 and strategy.material.volume_shape_factor == 1.0
    assert float(strategy.material.solubility_g_per_kg(20.0)) == pytest.approx(128.6 + 5.88 * 20 + 0.1721 * 400,
                                                                                rel=1e-6)
    assert strategy.settings.metastable_sigma_limit == 0.02 and strategy.settings.target_size_um == 250.0
    linear = make_strategy(load_config(["process=kno3_seeded_cooling", "agent.strategy=linear_cooling"],
                                       simulator=False))
    assert isinstance(linear, LinearCooling) and linear.recipe.steps == cfg.process.recipe


def test_a_material_given_only_as_data_in_a_file_of_its_own_runs_with_no_code_change(site_conf, tiny_checkpoint,
                                                                                     tmp_path):
    """A site's own process file (searched by Hydra, nothing in the repository): the agent takes
    its recipe and constants, the MS-GNN serves it from the structure file beside it, the
    simulated plant runs its solubility, density and kinetics."""
    from controller.agent import make_strategy
    from controller.kinetics_service import KineticsService
    from plant_sim.plant import Plant
    from plant_sim.simulate import simulate

    overrides = [*site_conf, "process=unobtainium_cooling"]
    strategy = make_strategy(load_config([*overrides, "agent.strategy=model_predictive",
                                          f"agent.checkpoint={tiny_checkpoint}"], simulator=False))
    assert isinstance(strategy.service, KineticsService) and strategy.service.material == "Unobtainium"
    assert strategy.service.structure.family == "rocksalt"
    assert strategy.service.estimate([], 40.0, 0.01).growth_um_per_min > 0  # answered on its own habit
    assert strategy.recipe.start_temperature_c == 52.0 and strategy.recipe.solvent_mass_kg == 12.0
    assert float(strategy.material.solubility_g_per_kg(20.0)) == pytest.approx(260.0)
    assert strategy.material.density_kg_per_m3 == 1800.0 and strategy.settings.metastable_sigma_limit == 0.03
    cfg = load_config([*overrides, "scenario.duration_min=30", "simulate.output_interval_s=30"], simulator=True)
    # anchored beside the process file, wherever the command runs
    assert cfg.process.material_data.structure_file == str(tmp_path / "process" / "structures" / "unobtainium.cif")
    plant = Plant.from_config(cfg.plant, cfg.scenario, cfg.plant_settings())
    assert plant.reactor.density_kg_per_m3 == 1800.0 and plant.reactor.volume_shape_factor == 0.6
    assert float(plant.reactor.solubility_g_per_kg(40.0)) == pytest.approx(330.0)
    assert plant.reactor.settings.water_mass_kg == 12.0
    summary = simulate(cfg, progress=False).summary
    assert summary["process"] == "unobtainium_cooling" and summary["seed_mass_charged_g"] == 25.0
    assert summary["crystal_mass_kg"] > 0.025  # the seeds grew


def test_a_material_as_data_without_a_kinetics_prior_says_what_to_give(site_conf, tmp_path):
    from controller.agent import make_strategy
    from controller.settings import SetupError
    from plant_sim.plant import Plant, PlantConfigError

    text = UNOBTAINIUM.split("  structure_file:")[0] + UNOBTAINIUM.split("nucleation_exponent: 2.0}\n")[1]
    (tmp_path / "process" / "no_prior.yaml").write_text(text.replace("unobtainium_cooling", "no_prior"))
    agent = load_config([*site_conf, "process=no_prior", "agent.strategy=model_predictive"], simulator=False)
    assert agent.process.material_data.kinetics is None
    with pytest.raises(SetupError, match="process.material_data.kinetics") as err:
        make_strategy(agent)
    assert "structure_file" in str(err.value)
    assert make_strategy(dataclasses.replace(agent, agent=dataclasses.replace(
        agent.agent, strategy=type(agent.agent.strategy).linear_cooling))).recipe.seed_mass_g == 25.0
    sim = load_config([*site_conf, "process=no_prior"], simulator=True)
    with pytest.raises(PlantConfigError, match="process.material_data.kinetics"):
        Plant.from_config(sim.plant, sim.scenario, sim.plant_settings())
    # a power-law preset of the scenario's own plays the plant's truth instead
    preset = load_config([*site_conf, "process=no_prior", "kinetics=kno3_miller_rawlings_1994"], simulator=True)
    plant = Plant.from_config(preset.plant, preset.scenario, preset.plant_settings())
    assert plant.reactor.density_kg_per_m3 == 1800.0  # the process's data, the preset's laws


def test_a_simulator_config_built_in_code_runs_its_process():
    from conf.simulator import SimulatorConfig
    from plant_sim.scenarios import Scenario

    process = BatchProcess(name="p", material="NaCl", recipe=RECIPE, solvent_mass_kg=9.0,
                           seeding=Seeding(mass_g=5.0))
    cfg = SimulatorConfig(process=process, scenario=Scenario(name="s", recipe=(RecipeStep(30.0),), seed=4))
    assert cfg.scenario.recipe == RECIPE and cfg.scenario.material == "NaCl" and cfg.scenario.seed == 4
    assert cfg.scenario.reactor.water_mass_kg == 9.0 and cfg.scenario.seeding.mass_g == 5.0
    again = dataclasses.replace(cfg, process=dataclasses.replace(process, solvent_mass_kg=11.0))
    assert again.scenario.reactor.water_mass_kg == 11.0
    assert PowerLawPreset().name == ""  # the preset form a prior is written in


def test_a_material_given_by_its_structure_alone_is_served_by_the_ms_gnn(site_conf, tiny_checkpoint, tmp_path):
    """No kinetics prior: the structure file is all the model needs; a structure that is missing,
    or not one the model can read, says so and what to do."""
    from controller.agent import make_strategy
    from controller.kinetics_service import FacetSource, KineticsService
    from controller.settings import SetupError

    text = UNOBTAINIUM.split("  kinetics:")[0] + UNOBTAINIUM.split("nucleation_exponent: 2.0}\n")[1]
    (tmp_path / "process" / "structure_only.yaml").write_text(text.replace("unobtainium_cooling", "structure_only"))
    overrides = [*site_conf, "process=structure_only", "agent.strategy=model_predictive",
                 f"agent.checkpoint={tiny_checkpoint}"]
    cfg = load_config(overrides, simulator=False)
    assert cfg.process.material_data.kinetics is None
    service = make_strategy(cfg).service
    assert isinstance(service, KineticsService) and service.material == "Unobtainium"
    answer = service.estimate([], 40.0, 0.01)
    assert answer.facet_source is FacetSource.material_habit and answer.laws.members == 2
    with pytest.raises(SetupError, match="nowhere.cif not found"):
        make_strategy(load_config([*overrides, "process.material_data.structure_file=nowhere.cif"], simulator=False))
    (tmp_path / "process" / "structures" / "junk.cif").write_text("no crystal here\n")
    with pytest.raises(SetupError, match="not a readable structure"):
        make_strategy(load_config([*overrides, "process.material_data.structure_file=structures/junk.cif"],
                                  simulator=False))
    with pytest.raises(ConfigError, match="lattice_energy_kj_per_mol"):
        load_config([*overrides, "process.material_data.lattice_energy_kj_per_mol=0"], simulator=False)
