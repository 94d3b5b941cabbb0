"""The agent without the simulator: nothing the agent runs imports ``plant_sim``.

The agent's runtime is the daemon (``xtalpilot agent``) and what it runs: I/O, state, strategy,
estimator, guard, rollout, proposer, the model service and the MS-GNN, decision log, metrics and
settings, on the contract (``conf.contract``). Command glue that starts or records the
simulated plant (``controller.cli``'s other commands, ``demo``, ``bench_loop``, ``replay``) may
import the simulator inside the functions that run it; the agent's modules may not, not even
lazily. Two checks:

1. in a fresh interpreter where importing ``plant_sim`` fails (as where only the agent is
   installed), import every runtime module, compose the agent's config as ``xtalpilot agent``
   does, build its plant connection and model-predictive strategy (loading a checkpoint), ask
   the model with and without imaging, estimate a state and advise on it: it all works, and no
   ``plant_sim`` module is loaded;
2. over the runtime modules' source, every import statement, at module level or inside a
   function, followed through the project's modules: none reaches ``plant_sim``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROJECT = ("conf", "controller", "models", "plant_sim")
SIMULATOR = "plant_sim"

#: The agent's runtime: what ``xtalpilot agent`` imports and runs.
AGENT_RUNTIME = (
    "controller.agent",
    "controller.strategy",
    "controller.baselines",
    "controller.estimator",
    "controller.model_client",
    "controller.guard",
    "controller.state",
    "controller.plant_io",
    "controller.recorded_io",
    "controller.rollout",
    "controller.proposer",
    "controller.kinetics_service",
    "controller.facet_graph",
    "controller.metrics",
    "controller.decision_log",
    "controller.settings",
    "models.msgnn",
    "models.graphs",
    "models.settings",
    *sorted(f"conf.contract.{p.stem}" for p in (REPO / "conf" / "contract").glob("*.py") if p.stem != "__init__"),
)

_PROBE = """
import importlib, json, sys


class NoSimulator:
    \"\"\"As on a plant where only the agent is installed: importing plant_sim fails.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "plant_sim":
            raise ModuleNotFoundError(f"No module named {name!r} (the simulator is not installed)")
        return None


sys.meta_path.insert(0, NoSimulator())
modules, checkpoint, log = json.loads(sys.argv[1])
for name in modules:
    importlib.import_module(name)
from conf.schema import load_config
from controller.agent import make_io, make_strategy
from controller.estimator import PlantView, estimate
cfg = load_config([f"agent.checkpoint={checkpoint}", "agent.device=cpu", f"agent.decision_log={log}"],
                  simulator=False)
make_io(cfg)
strategy = make_strategy(cfg)
recipe = strategy.recipe
assert recipe.setpoint_c(0.0) == cfg.process.initial_temperature_c and recipe.duration_min > 0
service = strategy.service
for imaging in ([], [(100, 0.9), (111, 0.1)]):
    service.estimate(imaging, 40.0, 0.01)
values = {"facet_1_hkl": 100.0, "facet_1_area_fraction": 0.9, "facet_2_hkl": 111.0, "facet_2_area_fraction": 0.1,
          "batch_state": 1.0, "reactor_temperature_c": 45.0, "concentration_g_per_kg": 420.0}
state = estimate(None, PlantView(5000.0, 3000.0, values, {k: True for k in values}), None, strategy.facts)
assert state.population is not None and strategy.advise(state, None).setpoints is not None
print(json.dumps(sorted(m for m in sys.modules if m == "plant_sim" or m.startswith("plant_sim."))))
"""


def test_the_agent_runs_without_importing_the_simulator(tiny_checkpoint, tmp_path):
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps([AGENT_RUNTIME, tiny_checkpoint,
                                                                     str(tmp_path / "d.sqlite")])],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"the agent's runtime loaded the simulator: {loaded}"


def _source(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(module: str, path: Path) -> set[str]:
    """Every project module ``path`` imports, wherever the import statement stands."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        modules: list[str] = []  # named as modules
        members: list[str] = []  # ``from X import Y``: X.Y, a module or a name in X
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            modules = [base]
            members = [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            modules = [str(node.args[0].value)]
        for name in modules:
            if name.split(".")[0] == SIMULATOR or (name.split(".")[0] in PROJECT and _source(name) is not None):
                found.add(name)
        found.update(name for name in members if name.split(".")[0] in PROJECT and _source(name) is not None)
    # importing a.b.c runs a/__init__.py and a/b/__init__.py first
    return found | {n.rsplit(".", k)[0] for n in found for k in range(1, n.count(".") + 1)}


def test_no_import_in_the_agent_s_source_reaches_the_simulator():
    parent: dict[str, str | None] = {m: None for m in AGENT_RUNTIME}
    todo = list(AGENT_RUNTIME)
    reached: list[str] = []
    while todo:
        module = todo.pop()
        path = _source(module)
        assert path is not None, f"{module} has no source in the repository"
        for name in sorted(_imports(module, path)):
            if name in parent:
                continue
            parent[name] = module
            if name.split(".")[0] == SIMULATOR:
                reached.append(name)
            else:
                todo.append(name)
    chains = []
    for name in reached:
        chain, at = [name], parent[name]
        while at is not None:
            chain.append(at)
            at = parent[at]
        chains.append(" <- ".join(chain))
    assert not chains, "the agent's runtime imports the simulator:\n" + "\n".join(chains)
