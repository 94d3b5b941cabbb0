"""The ``xtalpilot`` command. Every subcommand takes Hydra overrides (``key=value``).

    xtalpilot plant [overrides]             serve the simulated plant (OPC UA + Modbus TCP)
    xtalpilot plant simulate [overrides]    run a process and scenario offline, write data and a plot
    xtalpilot agent [overrides]             the control agent (OPC UA or Modbus) until SIGTERM
    xtalpilot demo [overrides]              plant + agent, one batch beside linear cooling, JSON
    xtalpilot replay [overrides]            the agent in shadow mode over a recorded batch, report
    xtalpilot bench plant [overrides]       physics and server benchmark, JSON on stdout
    xtalpilot bench model [overrides]       MS-GNN vs flat baselines, BHPO vs random, JSON
    xtalpilot bench loop [overrides]        agent cycle, loop lag and proposal timings, JSON
    xtalpilot bench control [overrides]     every controller on the scenario suite, scored, JSON
    xtalpilot bench campaign [overrides]    batch-to-batch learning over a campaign, JSON
    xtalpilot train [overrides]             train the MS-GNN ensemble, write a checkpoint
    xtalpilot tune [overrides]              Bayesian hyperparameter optimisation of one model
    xtalpilot certs [overrides]             OPC UA certificates (and a user: username=NAME)

Examples::

    xtalpilot plant speed=1000 scenario=impurity_pulse
    xtalpilot agent agent.mode=automatic agent.protocol=modbus modbus_port=5020
    xtalpilot plant simulate scenario=unseeded_cooling simulate.format=csv
    xtalpilot plant simulate process=kno3_seeded_cooling scenario=fouling
    xtalpilot agent process=kno3_seeded_cooling agent.protocol=modbus
    xtalpilot replay replay.recording=historian_export.csv agent.strategy=linear_cooling
    xtalpilot plant kinetics=kno3_miller_rawlings_1994
    xtalpilot plant security=sign_encrypt users_file=certs/users.yaml
    xtalpilot train train.epochs=40 split.name=heldout_families split.family=bcc
    xtalpilot tune tune.model=msgnn tune.trials=16 tune.q=2
    xtalpilot agent --config-dir /etc/xtalpilot process=line3_kcl

The entry point only parses, composes the config and calls a plain function; errors a user can
fix (bad config, busy port, missing certificate) print one line and exit with code 2.

``--config-dir DIR`` (any command) adds a folder of site configs beside the project's
``conf/``: ``DIR/process/<name>.yaml`` is then ``process=<name>``.

Every command composes the same ``process`` (``conf/process/*.yaml``, ``process=<name>``; a
scenario may select one, the command line wins): the plant, the agent, replay, the demo and the
loop benchmark read one definition of the batch. Commands that start a plant of their own
(demo, bench) pass the user's overrides, ``process=`` included, to it.

``xtalpilot agent`` is the agent alone: it composes the agent's config
(:class:`conf.schema.XtalpilotConfig`) and never imports the simulator (``plant_sim``), so it runs
where only the agent is installed. The other commands start or record the simulated plant and
import it inside their functions.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Callable, Sequence

_log = logging.getLogger("xtalpilot")

USAGE = __doc__.split("Examples::")[0].strip()


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # asyncua logs every request at INFO; the agent says what matters itself.
    for chatty in ("asyncua", "pymodbus"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def _load(overrides: Sequence[str], simulator: bool | None = None):
    """The composed config: the simulator's root where it is installed (or asked for), the
    agent's with ``simulator=False`` (:func:`conf.schema.load_config`)."""
    from conf.schema import load_config

    return load_config(overrides, simulator=simulator)


def cmd_plant(overrides: Sequence[str]) -> int:
    """Serve the simulated plant until SIGINT/SIGTERM."""
    from plant_sim.plant import Plant
    from plant_sim.serve import run_plant_server

    cfg = _load(overrides)
    plant = Plant.from_config(cfg.plant, cfg.scenario, cfg.plant_settings(step_s=1.0))
    return run_plant_server(plant, cfg.server_settings())


def cmd_simulate(overrides: Sequence[str]) -> int:
    """Run the process on a scenario offline and write its time series, final CSD and plot."""
    from plant_sim.simulate import simulate_to_files

    cfg = _load(overrides)
    summary = simulate_to_files(cfg)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_bench(args: Sequence[str]) -> int:
    """``xtalpilot bench plant|model|loop|control|campaign``: JSON on stdout."""
    if not args or args[0] not in ("plant", "model", "loop", "control", "campaign"):
        print("usage: xtalpilot bench plant|model|loop|control|campaign [overrides]", file=sys.stderr)
        return 2
    cfg = _load(args[1:])
    if args[0] == "campaign":
        from controller.campaign import run_campaign_benchmark

        print(json.dumps(run_campaign_benchmark(cfg, overrides=args[1:]), indent=2))
        return 0
    if args[0] == "control":
        from controller.bench_control import run_control_benchmark

        print(json.dumps(run_control_benchmark(cfg, overrides=args[1:]), indent=2))
        return 0
    if args[0] == "loop":
        from controller.bench_loop import run_loop_benchmark

        print(json.dumps(run_loop_benchmark(cfg, overrides=args[1:]), indent=2))
        return 0
    if args[0] == "model":
        from models.bench import run_model_benchmark

        print(json.dumps(run_model_benchmark(cfg), indent=2))
        return 0
    from plant_sim.bench import run_plant_benchmark

    print(json.dumps(run_plant_benchmark(cfg, overrides=args[1:]), indent=2))
    return 0


def cmd_train(overrides: Sequence[str]) -> int:
    """Train the MS-GNN ensemble on the configured split; metrics JSON on stdout."""
    from models.train import train_command

    print(json.dumps(train_command(_load(overrides)), indent=2))
    return 0


def cmd_tune(overrides: Sequence[str]) -> int:
    """Tune one model's hyperparameters; summary JSON on stdout."""
    from models.tuning import tune_command

    print(json.dumps(tune_command(_load(overrides)), indent=2))
    return 0


def cmd_agent(overrides: Sequence[str]) -> int:
    """Run the control agent until SIGTERM/SIGINT (or the batch/plant-time limit); report as JSON."""
    import asyncio

    from controller.agent import run_agent

    report = asyncio.run(run_agent(_load(overrides, simulator=False)))
    print(json.dumps(report.summary(), indent=2))
    return 0


def cmd_demo(overrides: Sequence[str]) -> int:
    """The simulated plant and the agent: one batch beside linear cooling; summary JSON, report."""
    from controller.demo import run_demo

    print(json.dumps(run_demo(_load(overrides), overrides), indent=2))
    return 0


def cmd_replay(overrides: Sequence[str]) -> int:
    """The agent in shadow mode over a recorded batch; summary JSON and report."""
    from controller.replay import run_replay

    print(json.dumps(run_replay(_load(overrides)), indent=2, default=str))
    return 0


def cmd_certs(overrides: Sequence[str]) -> int:
    """Make OPC UA certificates in cert_dir; with username=NAME also add a user to users_file."""
    from plant_sim.security import certs_command

    username = None
    rest = []
    for item in overrides:
        if item.startswith("username="):
            username = item.split("=", 1)[1] or None
        else:
            rest.append(item)
    cfg = _load(rest)
    users_file = cfg.users_file
    if username is not None and users_file is None:
        users_file = f"{cfg.cert_dir}/users.yaml"
    return certs_command(cfg.cert_dir, username, users_file)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "plant": cmd_plant,
    "agent": cmd_agent,
    "bench": cmd_bench,
    "train": cmd_train,
    "tune": cmd_tune,
    "demo": cmd_demo,
    "replay": cmd_replay,
    "certs": cmd_certs,
}


def _simulator_errors() -> dict[type, str]:
    """The simulated plant's errors a user can fix, where the simulator is installed."""
    import importlib.util

    if importlib.util.find_spec("plant_sim") is None:
        return {}
    from plant_sim.plant import PlantConfigError
    from plant_sim.reactor import IntegrationError

    return {PlantConfigError: "cannot build the plant: ", IntegrationError: "simulation failed: "}


def config_dir_overrides(args: Sequence[str]) -> list[str]:
    """``--config-dir DIR`` (or ``--config-dir=DIR``) in a command's arguments, as the Hydra
    override it stands for: a folder of site configs (``process/``, ``scenario/``, ...) searched
    beside the project's ``conf/``, so ``process=<name>`` picks a site's file. The rest pass
    through.

    Raises:
        controller.settings.SetupError: the folder is not there, or ``hydra.searchpath`` is
            given too (one way to say it).
    """
    from pathlib import Path

    from controller.settings import SetupError

    out, folders, k = [], [], 0
    args = list(args)
    while k < len(args):
        a = args[k]
        if a == "--config-dir":
            if k + 1 >= len(args):
                raise SetupError("--config-dir needs a folder: --config-dir /etc/xtalpilot")
            folders.append(args[k + 1])
            k += 2
            continue
        if a.startswith("--config-dir="):
            folders.append(a.split("=", 1)[1])
        else:
            out.append(a)
        k += 1
    if not folders:
        return out
    if any(a.lstrip("+~").startswith("hydra.searchpath") for a in out):
        raise SetupError("give config folders by --config-dir or by hydra.searchpath, not both")
    paths = [Path(f).expanduser().resolve() for f in folders]
    for path in paths:
        if not path.is_dir():
            raise SetupError(f"--config-dir {path}: no such folder (it holds process/, scenario/, ... folders of "
                             "YAML files)")
    return [*out, "hydra.searchpath=[" + ",".join(f"file://{p}" for p in paths) + "]"]


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point. Returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "plant" and rest and rest[0] == "simulate":
        handler, rest = cmd_simulate, rest[1:]
    elif command in COMMANDS:
        handler = COMMANDS[command]
    else:
        print(f"unknown command {command!r}; commands: {', '.join(COMMANDS)}\n\n{USAGE}", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in rest):
        print(USAGE)
        return 0
    _setup_logging()
    from conf.contract.tagmap import TagMapError
    from conf.schema import ConfigError
    from controller.decision_log import DecisionLogError
    from controller.plant_io import PlantIOError
    from controller.settings import SetupError

    # Errors a user can fix: one line, exit code 2.
    prefixes = {ConfigError: "invalid configuration: ", TagMapError: "invalid tag map: ",
                PlantIOError: "plant connection: ", SetupError: "", DecisionLogError: "decision log: "}
    if handler is not cmd_agent:
        prefixes.update(_simulator_errors())
    try:
        return handler(config_dir_overrides(rest))
    except tuple(prefixes) as exc:
        prefix = next(p for kind, p in prefixes.items() if isinstance(exc, kind))
        _log.error("%s%s", prefix, exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
