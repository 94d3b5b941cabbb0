"""The contract between the agent and the plant: what both sides must agree on, and nothing else.

The agent (``controller``, ``models``) runs on a real plant without the simulator installed;
the simulated plant (``plant_sim``) stands in for one. Both import this package, and it imports
neither of them:

- :mod:`conf.contract.tagmap`: the tag map (signals, engineering ranges, OPC UA nodes, Modbus
  registers and their encoding);
- :mod:`conf.contract.signals`: the canonical names of the signals both sides address;
- :mod:`conf.contract.codes`: the batch state, batch command, agent mode and control source
  codes, the {hkl} code of the facet slots, the shed action and the OPC UA security mode;
- :mod:`conf.contract.process`: the process schema (``conf/process/*.yaml``: material, charge,
  recipe, seeding, product specification, instruments) and the recipe's setpoint program;
- :mod:`conf.contract.instruments`: what each measured signal's instrument is (noise, delays,
  lags) and the default instruments;
- :mod:`conf.contract.validate`: the value checks of the frozen settings classes;
- shared physics, which the plant simulates and the agent's model is built on:
  :mod:`conf.contract.materials` (the materials database and its measured solubility),
  :mod:`conf.contract.solubility` (the monotone cubic through a measured table),
  :mod:`conf.contract.lattice` (atom graphs and facet energetics) and
  :mod:`conf.contract.morphology` (the kinetic Wulff habit).
"""
