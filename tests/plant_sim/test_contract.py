"""The simulated plant speaks the contract: it uses the contract's codes, facet codes, recipe
schema and recipe program (conf.contract) rather than copies, serves every signal the contract
names, and its scenario runs the process the agent reads (copies of its fields, filled from it)."""

from __future__ import annotations

import dataclasses

from conf.contract import codes, process, signals
from conf.schema import load_config
from conf.simulator import SimulatorConfig
from plant_sim import plant, scenarios, sensors
from plant_sim.reactor import ReactorSettings
from plant_sim.sensors import MEASURED_SIGNALS


def test_the_plant_uses_the_contract_s_codes():
    assert plant.BatchState is codes.BatchState and plant.BatchCommand is codes.BatchCommand
    assert plant.AgentMode is codes.AgentMode and plant.ShedAction is codes.ShedAction
    assert plant.N_FACET_SLOTS == codes.N_FACET_SLOTS and sensors.N_FACET_SLOTS == codes.N_FACET_SLOTS
    assert plant.encode_hkl is codes.encode_hkl


def test_the_plant_reports_its_facet_slots_as_the_contract_decodes_them():
    cfg = load_config([], simulator=True)
    p = plant.Plant.from_config(cfg.plant, cfg.scenario, cfg.plant_settings())
    assert p.facet_hkls
    served = [codes.decode_hkl(p.values()[f"facet_{k}_hkl"]) for k in range(1, codes.N_FACET_SLOTS + 1)]
    assert served == [*p.facet_hkls, *[None] * (codes.N_FACET_SLOTS - len(p.facet_hkls))]


def test_the_plant_serves_every_signal_the_contract_names():
    served = set(MEASURED_SIGNALS) | set(plant.STATUS_SIGNALS) | set(plant.WRITABLE_SIGNALS)
    named = {getattr(signals, n) for n in signals.__all__ if n.isupper() and isinstance(getattr(signals, n), str)}
    assert named <= served and set(signals.SETPOINTS) <= set(plant.WRITABLE_SIGNALS)
    assert set(signals.IMAGE_SIZE_FRACTIONS) <= set(MEASURED_SIGNALS)
    for slot in range(1, codes.N_FACET_SLOTS + 1):
        assert set(signals.facet_slot_signals(slot)) <= served


def test_the_probe_s_size_bins_are_the_tag_map_s():
    """The simulated probe's size-bin edges are those the shipped tag map describes."""
    cfg = load_config([], simulator=True)
    edges = sensors.SensorSettings().imaging_size_bin_edges_um
    for j, name in enumerate(signals.IMAGE_SIZE_FRACTIONS):
        assert f"{edges[j]:g}-{edges[j + 1]:g} um" in cfg.plant["signals"][name]["description"], name


def test_the_scenario_runs_the_contract_s_recipe_program():
    assert scenarios.RecipeStep is process.RecipeStep and scenarios.Seeding is process.Seeding
    assert scenarios.recipe_duration_min is process.recipe_duration_min
    assert plant.recipe_setpoint is process.recipe_setpoint
    sc = load_config([], simulator=True).scenario
    assert all(type(s) is process.RecipeStep for s in sc.recipe) and type(sc.seeding) is process.Seeding


def test_the_scenario_copies_the_process_s_fields_with_the_same_defaults():
    own = {f.name: f for f in dataclasses.fields(process.BatchProcess)}
    copied = [f for f in dataclasses.fields(scenarios.Scenario) if f.metadata.get(process.FROM_PROCESS) is True]
    # the product specification is the agent's and the benchmark's, not the simulator's
    assert {f.name for f in copied} == set(own) - {"name", "description", "solvent_mass_kg", "instruments", "specification"}
    for f in copied:
        assert f.type == own[f.name].type, f.name
        if f.default is not dataclasses.MISSING:
            assert own[f.name].default == f.default, f.name
    assert process.BatchProcess().solvent_mass_kg == ReactorSettings().water_mass_kg
    sc = scenarios.Scenario().with_process(process.BatchProcess(material="NaCl", solvent_mass_kg=9.0))
    assert sc.material == "NaCl" and sc.reactor.water_mass_kg == 9.0


def test_the_simulator_s_config_hands_the_plant_its_own_settings():
    cfg = load_config(["shed_action=recipe", "security=sign_encrypt"], simulator=True)
    assert isinstance(cfg, SimulatorConfig) and isinstance(cfg.scenario, scenarios.Scenario)
    assert cfg.plant_settings().shed_action is codes.ShedAction.recipe
    assert cfg.server_settings().security is codes.SecurityMode.sign_encrypt
