"""Every config composes and validates; malformed configs fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from conf.contract.codes import SecurityMode
from conf.contract.tagmap import TagMap
from conf.schema import ConfigError, XtalpilotConfig, load_config
from plant_sim.plant import Plant
from plant_sim.scenarios import KineticsModel, Operation

CONF = Path(__file__).resolve().parents[2] / "conf"
SCENARIOS = sorted(p.stem for p in (CONF / "scenario").glob("*.yaml"))
KINETICS = sorted(p.stem for p in (CONF / "kinetics").glob("*.yaml"))
TAGMAPS = sorted(p.stem for p in (CONF / "plant").glob("*.yaml"))


def test_the_issue_scenarios_exist():
    required = {"seeded_cooling", "unseeded_cooling", "msmpr", "impurity_pulse", "fouling", "sensor_faults",
                "seed_mass_variation"}
    assert required <= set(SCENARIOS)
    assert {"physics", "kno3_miller_rawlings_1994"} <= set(KINETICS)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("kinetics", KINETICS)
def test_every_scenario_and_kinetics_composes_and_builds_a_plant(scenario, kinetics):
    cfg = load_config([f"scenario={scenario}", f"kinetics={kinetics}"])
    assert isinstance(cfg, XtalpilotConfig)
    assert cfg.scenario.name == scenario
    assert cfg.scenario.kinetics.model is (KineticsModel.power_law if kinetics != "physics" else KineticsModel.physics)
    plant = Plant.from_config(cfg.plant, cfg.scenario, cfg.plant_settings(step_s=10.0, autostart=True))
    plant.advance(600.0)  # ten minutes run without error
    assert plant.plant_time_s == 600.0


@pytest.mark.parametrize("tagmap", TAGMAPS)
def test_every_tag_map_validates(tagmap):
    cfg = load_config([f"plant={tagmap}"])
    assert len(TagMap.from_dict(cfg.plant)) > 0


def test_overrides_reach_typed_fields():
    cfg = load_config(["speed=1000", "security=sign_encrypt", "scenario=msmpr", "scenario.seed=5", "opcua_port=4841"])
    assert cfg.speed == 1000.0 and cfg.opcua_port == 4841
    assert cfg.security is SecurityMode.sign_encrypt
    assert cfg.scenario.operation is Operation.continuous and cfg.scenario.seed == 5
    assert isinstance(cfg.scenario.recipe, tuple)


@pytest.mark.parametrize(
    "override, must_mention",
    [
        (["security=plaintext"], ["security", "insecure", "sign_encrypt"]),
        (["scenario.operation=semi_batch"], ["operation", "batch", "continuous"]),
        (["shed_action=panic"], ["shed_action", "hold", "recipe"]),
        (["speed=fast"], ["speed"]),
        (["opcua_port=abc"], ["opcua_port"]),
        (["speeed=3"], ["speeed"]),
        (["scenario=no_such_scenario"], ["no_such_scenario"]),
        (["scenario.kinetics.model=magic"], ["model", "physics", "power_law"]),
        (["process.seeding.mass_g=lots"], ["mass_g"]),
        (["process=no_such_process"], ["no_such_process"]),
        (["agent.material=Unobtainium"], ["agent.material", "Unobtainium", "KCl", "NaCl", "unset"]),
        (["agent.material=Cu"], ["agent.material", "solubility", "KCl"]),  # built in, but no solution
        (["process=kno3_seeded_cooling", "process.material_data.solubility_unit=ppm"], ["solubility_unit", "g_per_100g"]),
    ],
)
def test_malformed_config_names_the_field_and_allowed_values(override, must_mention):
    with pytest.raises(ConfigError) as info:
        load_config(override)
    message = str(info.value)
    for word in must_mention:
        assert word in message, message
    assert "Traceback" not in message


@pytest.mark.parametrize(
    "override, path",
    [
        ("process.seeding.std_size_um=-1", "process.seeding.std_size_um"),
        ("process.seeding.mean_size_um=0", "process.seeding.mean_size_um"),
        ("process.recipe.1.rate_k_per_min=0", "process.recipe[1].rate_k_per_min"),
        ("process.instruments.reactor_temperature_c.lag_s=-1", "process.instruments.reactor_temperature_c.lag_s"),
        ("scenario.duration_min=-5", "scenario.duration_min"),
        ("scenario.continuous.residence_time_min=0", "scenario.continuous.residence_time_min"),
        ("scenario.reactor.n_classes=3", "scenario.reactor.n_classes"),
        ("scenario.reactor.cfl=2", "scenario.reactor.cfl"),
        ("process.solvent_mass_kg=nan", "process.solvent_mass_kg"),
        ("scenario.kinetics.critical_supersaturation=0", "scenario.kinetics.critical_supersaturation"),
        ("simulate.output_interval_s=0", "simulate.output_interval_s"),
        ("speed=nan", "speed"),
        ("speed=-600", "speed"),
        ("publish_interval_s=0", "publish_interval_s"),
        ("shed_timeout_s=0", "shed_timeout_s"),
        ("opcua_port=70000", "opcua_port"),
        ("modbus_port=0", "modbus_port"),
        ("scenario.duration_min=0.05", "scenario.duration_min"),
    ],
)
def test_out_of_range_values_name_their_path(override, path):
    with pytest.raises(ConfigError) as info:
        load_config([override])
    assert path in str(info.value), str(info.value)
