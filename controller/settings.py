"""Settings of the agent (``xtalpilot agent``, ``demo``, ``replay``, ``bench loop``), importable without torch.

Frozen dataclasses; Hydra composes them under ``agent.*`` and ``proposer.*`` (conf/schema.py).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Optional

from conf.contract import validate
from controller.guard import Mode

__all__ = ["AgentSettings", "BaselineSettings", "BenchControlSettings", "BenchLoopSettings", "DemoSettings", "Protocol", "ProposerSettings", "ReplaySettings",
           "SetupError", "StrategyName"]


class SetupError(RuntimeError):
    """A setting points at something missing or unusable (a checkpoint, a file); the message says
    which and what to do. The CLI prints it as one line and exits with code 2."""


class Protocol(str, enum.Enum):
    opcua = "opcua"
    modbus = "modbus"


class StrategyName(str, enum.Enum):
    """What decides the setpoints: the model-predictive agent, or one of the strategies plants run
    today (:mod:`controller.baselines`)."""

    model_predictive = "model_predictive"
    linear_cooling = "linear_cooling"
    natural_cooling = "natural_cooling"
    cubic_cooling = "cubic_cooling"
    supersaturation_control = "supersaturation_control"
    direct_nucleation_control = "direct_nucleation_control"


@dataclass(frozen=True)
class BaselineSettings:
    """Tuning of the strategies plants run today (:mod:`controller.baselines`), ``baselines.*``.

    Tuned once on the nominal scenario (the default seeded KCl batch, ``bench_control``'s
    lockstep harness) and then frozen. The programme of each starts where the recipe's last ramp
    starts (after seeding and its hold) and ends at the recipe's final temperature and final
    hold. The tuning, as run on 2026-12-04 (batch time h, true peak sigma; limit 0.015):

    - SSC: setpoint 0.6 / 0.75 / 0.85 of the limit at 0.5 K/min: 3.38 / 2.73 / 2.43 h, peak
      0.0129 / 0.0145 / 0.0153; 0.75 and 0.85 at 1.0 K/min: 2.60 / 2.26 h, peak 0.0172 / 0.0204
      (the start-up overshoots). Chosen: the fastest that keeps the true peak under the limit,
      0.75 at 0.5 K/min.
    - DNC: the FBRM total count grows 3.0x from seeding to the end of the nominal batch with no
      nucleation (chord counts grow with size), so a target of 1.5x heated on growth alone and
      hit the time limit (yield 0.11); 3.5x acts on nucleation only. Cooling 0.25 / 0.35 K/min:
      2.79 / 2.24 h, peak 0.0133 / 0.0161. Chosen: 3.5x, 0.25 K/min.
    - Natural cooling: a 40 min time constant onto coolant 5 K below the final temperature
      (2.14 h, peak 0.026: it crosses the limit, as natural cooling does); not tuned further.

    Attributes:
        natural_time_constant_min: natural cooling: the vessel's first-order time constant with
            the jacket on coolant (a 20 L jacketed glass reactor: 30-60 min).
        natural_coolant_offset_k: natural cooling: how far below the final temperature the
            coolant is (the curve is cut off at the final temperature).
        ssc_sigma_setpoint_rel_limit: supersaturation control: the setpoint as a fraction of the
            metastable limit (sigma = ln S, from the measured concentration and the solubility
            curve).
        ssc_gain_k_per_min: supersaturation control: proportional gain, K/min of cooling rate
            per unit of sigma error (about 0.3 K/min for an error of 0.003).
        ssc_integral_time_min: supersaturation control: integral time.
        ssc_max_cooling_k_per_min: supersaturation control: the fastest cooling it asks for.
        dnc_target_counts_rel: direct nucleation control: the FBRM total count to hold, as a
            multiple of the count when the programme starts (the seeds, their growth, and the
            nuclei it tolerates).
        dnc_band_rel: direct nucleation control: above target x (1 + band) it heats until the
            count is back at the target (hysteresis, so noise does not chatter).
        dnc_cooling_k_per_min: direct nucleation control: cooling rate while the count is in hand.
        dnc_heating_k_per_min: direct nucleation control: heating rate while dissolving fines.
        dnc_detect_counts_per_s: direct nucleation control: the least total count that says
            the probe sees crystals (below it, a clear solution).
    """

    natural_time_constant_min: float = 40.0
    natural_coolant_offset_k: float = 5.0
    ssc_sigma_setpoint_rel_limit: float = 0.75
    ssc_gain_k_per_min: float = 100.0
    ssc_integral_time_min: float = 10.0
    ssc_max_cooling_k_per_min: float = 0.5
    dnc_target_counts_rel: float = 3.5
    dnc_band_rel: float = 0.15
    dnc_cooling_k_per_min: float = 0.25
    dnc_heating_k_per_min: float = 0.3
    dnc_detect_counts_per_s: float = 10.0

    def __post_init__(self) -> None:
        validate.positive(self, "natural_time_constant_min", "natural_coolant_offset_k", "ssc_gain_k_per_min",
                          "ssc_integral_time_min", "ssc_max_cooling_k_per_min", "dnc_target_counts_rel",
                          "dnc_band_rel", "dnc_cooling_k_per_min", "dnc_heating_k_per_min", "dnc_detect_counts_per_s")
        validate.within(self, "ssc_sigma_setpoint_rel_limit", 1e-6, 1.0)


@dataclass(frozen=True)
class ProposerSettings:
    """The BoTorch proposer: decision variables, outcome model, objective and budget.

    Attributes:
        moves: future temperature-setpoint moves decided each time (the decision variables).
        move_interval_min: plant minutes per move; after the last move the rollout cools
            linearly to ``final_temperature_c`` by the end of the cooling time.
        rollout_step_s: step of the moment-model rollout (plant seconds).
        target_size_um: volume-weighted mean size wanted at the end of the batch.
        metastable_sigma_limit: supersaturation ln(C/C*) the batch must stay below (primary
            nucleation above it); the constraint of the proposal.
        constraint_margin: share of the limit kept free for model error: proposals keep the
            predicted peak below (1 - margin) x limit.
        weight_size, weight_cv, weight_fines, weight_yield: cost weights of the squared relative
            size error, the CV, the fines mass fraction and the lost yield.
        proximal_weight: cost per (K per move)^2 away from the current cooling rate (small moves).
        antisolvent: decide the antisolvent rate too, where the tag map has a writable
            ``antisolvent_rate_setpoint_kg_per_min``.
        weight_antisolvent: cost per kg of antisolvent fed per kg of water (bought, recovered).
        antisolvent_solubility_coefficient: k_as of the solvent pair, C* = C*_water exp(-k_as x_as)
            with x_as the antisolvent mass fraction of the solvent (4.0: ethanol-water, as the
            simulated plant).
        weight_batch_time_per_h: cost per hour of batch time left; above 0 the end of cooling
            is a decision too (the agent completes the batch a final hold after it).
        min_cooling_scale: shortest share of the recipe's remaining cooling time allowed.
        antisolvent_low_flow_cutoff_kg_per_min: antisolvent flow readings below this count as
            no flow when the fed amount is totalised (a flow totaliser's low-flow cut-off: the
            transmitter's noise, clipped at zero, would otherwise add up to antisolvent that was
            never fed).
        time_budget_s: wall seconds ``optimize_acqf`` may take.
        raw_samples: initial candidates of ``optimize_acqf``.
        restarts: gradient restarts of ``optimize_acqf``.
        feasibility_eta: width of the sigmoid turning the constraint into a probability.
        grid_temperatures: temperatures (around the current one, K) of the model query grid.
        grid_sigmas: driving forces of the model query grid (log-spaced within these bounds).
        model_refresh_s: plant seconds between MS-GNN queries. A query runs in a background
            thread; cycles in between use the latest answer's local laws at the current
            conditions, so no cycle waits for the network.
        nucleation_suspension_kg_per_kg: suspension density at which the model's B holds
            (the training data fix it); B scales linearly with the actual one.
        model_timeout_s: wall seconds a model query may take; a hung query is abandoned (a new
            model thread takes over) and the recipe is followed until the model answers again.
        proposal_timeout_s: wall seconds a proposal may take; a hung worker process is killed
            and a new one started.
        resolve_interval_s: plant seconds between posed proposal problems: the plan is revised
            this often from the newest state (a move lasts ``move_interval_min``; revising every
            cycle costs a proposal per cycle for little).
        cascade: the agent supervises supersaturation control (the inner loop of
            :class:`controller.baselines.SupersaturationControl`, its tuning in ``baselines``):
            it chooses the loop's setpoints and the final hold for the rest of the batch, re-
            solved every ``resolve_interval_s`` (controller/proposer.py, ``propose_cascade``);
            False: it chooses temperature moves. A recipe that feeds antisolvent, or a plant
            without a concentration signal, runs the moves.
        cascade_sigma_rel_limit: the setpoints the cascade plan chooses from, as fractions of
            the metastable limit (the top one is the most the agent ever asks the loop for).
        cascade_hold_fractions: the final holds it chooses from, as fractions of the recipe's.
        cascade_switch_rel: where the plan's second setpoint takes over: this share of the way
            from the programme's start temperature to the final one.
        cascade_integral_band_rel: the cascade's loop integrates only while the error is within
            this share of its setpoint (conditional integration: no overshoot from an integral
            built on the approach; supersaturation control as plants tune it integrates always).
        cascade_final_reached_k: the final hold starts when the reactor (not only the setpoint)
            is within this of the final temperature.
        cascade_lookahead_k: the cascade's loop feeds back the supersaturation at the
            temperature the reactor is heading to, its setpoint but at most this far below the
            reactor (the reactor lags a falling setpoint; a saturated jacket leaves the setpoint
            far below it).
        cascade_final_approach_min: the cascade's setpoint approaches the final temperature no
            faster than (distance left) / this: the plant's temperature loop overshoots a ramp
            that stops at once (measured on the simulated jacket: 0.7 K below the final
            temperature after 0.4 K/min, the batch's peak supersaturation). Only where the plan
            holds at the final temperature (a batch that ends on arrival ends first). 0: no
            taper.
        cascade_tracking_min: the window (plant minutes) of the running mean square of the
            cascade loop's tracking error.
        cascade_tracking_z: the plan keeps its setpoints this many root-mean-square overshoots
            of the loop (its error above the setpoint, doubled semivariance) under the limit (its
            rollout's loop is ideal).
        cascade_tracking_smooth_min: the tracking error is averaged over this long before it is
            squared (the analyser's noise is in each reading; the true supersaturation wanders
            slower).
        cascade_creep_window_min: with the setpoint at the final temperature and the reactor not
            (a saturated jacket), the batch ends once the yield it gains per hour, relative to
            its yield, falls below 1 / batch time (hours per yield would rise); the measured
            concentration's fall for it is fitted over this window.
        cascade_max_heating_k_per_min: where the guard lets the temperature rise
            (``agent.allow_heating``), the cascade's loop heats, at most this fast, while the
            supersaturation it feeds back is above the metastable limit (a growth stall, an
            impurity, crosses it faster than the analyser's delay lets a cooling-only loop stop);
            proportional on the excess over the setpoint. Plans never heat (the moment model
            cannot dissolve).
    """

    moves: int = 3
    move_interval_min: float = 10.0
    rollout_step_s: float = 120.0
    target_size_um: float = 300.0
    metastable_sigma_limit: float = 0.015
    constraint_margin: float = 0.2
    weight_size: float = 4.0
    weight_cv: float = 1.0
    weight_fines: float = 2.0
    weight_yield: float = 2.0
    proximal_weight: float = 0.02
    antisolvent: bool = True
    weight_antisolvent: float = 1.0
    antisolvent_solubility_coefficient: float = 4.0
    weight_batch_time_per_h: float = 0.02
    min_cooling_scale: float = 0.5
    antisolvent_low_flow_cutoff_kg_per_min: float = 0.01
    time_budget_s: float = 0.5
    raw_samples: int = 64
    restarts: int = 2
    feasibility_eta: float = 1e-3
    grid_temperatures: int = 3
    grid_sigmas: tuple[float, float] = (0.003, 0.04)
    model_refresh_s: float = 30.0
    nucleation_suspension_kg_per_kg: float = 0.05
    model_timeout_s: float = 60.0
    proposal_timeout_s: float = 60.0
    resolve_interval_s: float = 180.0
    cascade: bool = True
    cascade_sigma_rel_limit: tuple[float, ...] = (0.5, 0.65, 0.75, 0.85, 0.9, 0.95)
    cascade_hold_fractions: tuple[float, ...] = (0.0, 0.33, 0.67, 1.0)
    cascade_switch_rel: float = 0.5
    cascade_integral_band_rel: float = 0.25
    cascade_final_reached_k: float = 0.5
    cascade_lookahead_k: float = 0.15
    cascade_final_approach_min: float = 4.0
    cascade_tracking_min: float = 20.0
    cascade_tracking_z: float = 2.0
    cascade_tracking_smooth_min: float = 2.0
    cascade_creep_window_min: float = 10.0
    cascade_max_heating_k_per_min: float = 0.5

    def __post_init__(self) -> None:
        validate.positive(self, "move_interval_min", "rollout_step_s", "target_size_um", "metastable_sigma_limit",
                          "time_budget_s", "feasibility_eta", "model_refresh_s",
                          "nucleation_suspension_kg_per_kg", "model_timeout_s", "proposal_timeout_s")
        validate.non_negative(self, "resolve_interval_s")
        validate.non_negative(self, "weight_size", "weight_cv", "weight_fines", "weight_yield", "proximal_weight",
                              "weight_antisolvent", "antisolvent_solubility_coefficient", "weight_batch_time_per_h",
                              "antisolvent_low_flow_cutoff_kg_per_min")
        if not 0.0 < self.min_cooling_scale <= 1.0:
            raise ValueError(f"min_cooling_scale must be in (0, 1], got {self.min_cooling_scale}")
        if not 0.0 <= self.constraint_margin < 1.0:
            raise ValueError(f"constraint_margin must be in [0, 1), got {self.constraint_margin}")
        if not 1 <= self.moves <= 12:
            raise ValueError(f"moves must be in 1..12, got {self.moves}")
        if self.raw_samples < 2 or self.restarts < 1 or self.grid_temperatures < 2:
            raise ValueError("raw_samples must be >= 2, restarts >= 1, grid_temperatures >= 2")
        lo, hi = self.grid_sigmas
        if not 0 < lo < hi:
            raise ValueError(f"grid_sigmas must be (low, high) with 0 < low < high, got {(lo, hi)}")
        if not self.cascade_sigma_rel_limit or not all(0.0 < f < 1.0 for f in self.cascade_sigma_rel_limit):
            raise ValueError("cascade_sigma_rel_limit must list fractions of the metastable limit in (0, 1), got "
                             f"{self.cascade_sigma_rel_limit}")
        if not self.cascade_hold_fractions or not all(0.0 <= f <= 1.0 for f in self.cascade_hold_fractions):
            raise ValueError(f"cascade_hold_fractions must list fractions in [0, 1], got {self.cascade_hold_fractions}")
        validate.non_negative(self, "cascade_integral_band_rel", "cascade_final_reached_k", "cascade_lookahead_k",
                              "cascade_final_approach_min", "cascade_tracking_z", "cascade_max_heating_k_per_min")
        validate.positive(self, "cascade_tracking_min", "cascade_creep_window_min", "cascade_tracking_smooth_min")
        if not 0.0 <= self.cascade_switch_rel <= 1.0:
            raise ValueError(f"cascade_switch_rel must be in [0, 1], got {self.cascade_switch_rel}")


@dataclass(frozen=True)
class AgentSettings:
    """The daemon.

    Attributes:
        protocol: opcua or modbus.
        opcua_url: server URL; None: ``opc.tcp://{host}:{opcua_port}`` of the root config.
        username / password: OPC UA user (secure sessions). The password is better not given
            here: a command-line override is visible to every user of the machine (``ps``);
            ``password_file`` or the environment variable ``XTALPILOT_OPCUA_PASSWORD`` keep it
            off the command line (:func:`controller.agent.opcua_password`).
        password_file: a file holding the OPC UA password (its first line), readable by its
            owner only (mode 0600 or stricter).
        client_certificate / client_key: OPC UA client certificate (DER) and key (PEM) for
            Basic256Sha256 SignAndEncrypt; both None: no security.
        opcua_subscribe: keep OPC UA values current by a subscription instead of one batched
            Read of every node per cycle. The Read is the default: one round trip per cycle,
            and on the accelerated simulated plant, where every value changes every tick, the
            subscription's notifications cost the loop more (see the loop benchmark).
        mode: the mode the agent starts in (manual, advisory, automatic); the plant's
            ``operator_mode_request`` tag changes it while running (0, 1, 2).
        strategy: model_predictive (MS-GNN + BoTorch) or linear_cooling (the recipe).
        material: the crystallising material (built in); None: the process's.
        checkpoint: MS-GNN checkpoint path without suffix (``make model`` writes it).
        control_interval_s: plant seconds between control cycles.
        stale_after_s: plant seconds after which a reading is stale.
        stuck_after_s: plant seconds a noisy signal may stay unchanged (a real instrument's
            noise never repeats a value that long; the simulated stuck fault lasts minutes).
        max_uncertainty: largest ensemble spread of log10 G the guard accepts.
        max_proposal_age_s: plant seconds a proposal stays usable.
        decision_log: SQLite file of the decision log.
        metrics_port: Prometheus port (0: no metrics server).
        stirring_rpm: impeller speed (a model input).
        fbrm_bin_edges_um: chord-length bin edges of the FBRM probe's count channels
            (``fbrm_counts_bin<k>_per_s``), for the chord statistics in the decision log.
        start_batch: start the batch (``batch_command`` = start) when the agent is ready and the
            plant is Idle; an operator's job on a real plant, the demo's and the tests' here.
        stop_after_batch: exit once the batch completes (demo, tests).
        max_plant_time_s: exit after this much plant time (None: run until stopped).
        device: torch device for the model; None: cuda if present, else cpu.
        allow_heating: the guard lets the temperature setpoint rise (off: cooling only, the
            agent's designs never heat).
        envelope_band_k: the operator's band around the recipe's temperature (K either side;
            inf: none).
        envelope_rate_k_per_min: the operator's process rate limit on the temperature setpoint
            (inf: the tag map's).
        max_measured_sigma: ceiling on the measured supersaturation: above it the guard lets
            the temperature fall no further and ramps any antisolvent feed to zero (inf: none).
        max_model_age_s: plant seconds the model's answer stays usable; older, the guard holds.
        max_hold_s: plant seconds of continuous hold after which the loop is handed back to the
            DCS with an alarm (the agent leaves automatic) rather than holding a running batch.
    """

    protocol: Protocol = Protocol.opcua
    opcua_url: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = None
    password_file: Optional[str] = None
    client_certificate: Optional[str] = None
    client_key: Optional[str] = None
    opcua_subscribe: bool = False
    mode: Mode = Mode.advisory
    strategy: StrategyName = StrategyName.model_predictive
    material: Optional[str] = None
    checkpoint: str = "runs/model/msgnn"
    control_interval_s: float = 30.0
    stale_after_s: float = 90.0
    stuck_after_s: float = 90.0
    max_uncertainty: float = 0.5
    max_proposal_age_s: float = 1200.0
    decision_log: str = "runs/agent/decisions.sqlite"
    metrics_port: int = 9108
    stirring_rpm: float = 300.0
    fbrm_bin_edges_um: tuple[float, ...] = (1.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
    start_batch: bool = False
    stop_after_batch: bool = False
    max_plant_time_s: Optional[float] = None
    device: Optional[str] = None
    allow_heating: bool = False
    envelope_band_k: float = math.inf
    envelope_rate_k_per_min: float = math.inf
    max_measured_sigma: float = math.inf
    max_model_age_s: float = 600.0
    max_hold_s: float = 1800.0

    def __post_init__(self) -> None:
        validate.positive(self, "control_interval_s", "stale_after_s", "max_uncertainty", "max_proposal_age_s",
                          "stirring_rpm")
        validate.non_negative(self, "stuck_after_s")
        validate.positive(self, "envelope_band_k", "envelope_rate_k_per_min", "max_measured_sigma", "max_model_age_s",
                          "max_hold_s")
        validate.within(self, "metrics_port", 0, 65535)
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("client_certificate and client_key go together (make them with `xtalpilot certs`)")
        if self.material is not None:
            from conf.contract.materials import MATERIALS

            # checked when the config is composed: a replay that ran to its end before the name
            # failed gave a KeyError traceback and no summary
            solutions = sorted(name for name, m in MATERIALS.items() if m.solubility is not None)
            if self.material not in solutions:
                raise ValueError(f"material {self.material!r} is not a built-in material with a solubility; allowed: "
                                 f"{', '.join(solutions)} (or leave it unset: the process's material, which may be "
                                 "defined as data)")
        if self.max_plant_time_s is not None and not (math.isfinite(self.max_plant_time_s) and self.max_plant_time_s > 0):
            raise ValueError(f"max_plant_time_s must be > 0, got {self.max_plant_time_s}")


@dataclass(frozen=True)
class DemoSettings:
    """``xtalpilot demo``.

    Attributes:
        output_dir: where the summary, decision logs, batch records and report go.
        speed: the demo plant's clock (plant s per wall s).
        shed_timeout_s: the demo plant's heartbeat watchdog, plant seconds. The watchdog counts
            plant time, so on an accelerated clock the plant default (120 s) is 0.4 wall s at
            300x, shorter than a scheduling hiccup on a loaded 2-core machine.
        strategies: what runs, one batch each on the same plant and seed (the agent always):
            the agent beside the recipe plants run and the supersaturation control they would
            install instead.
    """

    output_dir: str = "runs/demo"
    speed: float = 300.0
    shed_timeout_s: float = 600.0
    strategies: tuple[str, ...] = ("model_predictive", "linear_cooling", "supersaturation_control")

    def __post_init__(self) -> None:
        validate.positive(self, "speed", "shed_timeout_s")
        for name in self.strategies:
            StrategyName(name)  # a clear error naming the allowed strategies


@dataclass(frozen=True)
class ReplaySettings:
    """``xtalpilot replay``: the agent in shadow mode over a recorded batch (controller/replay.py).

    Attributes:
        recording: the historian export to replay (CSV or Parquet; controller/recorded_io.py).
        output_dir: where the decision log, the summary and the report go.
        time_column: the recording's time column (matched ignoring case).
        day_first: its dates put the day first (13/07/2026); None: inferred from the dates,
            and a recording whose dates read both ways is refused until this is set.
    """

    recording: Optional[str] = None
    output_dir: str = "runs/replay"
    time_column: str = "timestamp"
    day_first: Optional[bool] = None


@dataclass(frozen=True)
class BenchControlSettings:
    """``xtalpilot bench control`` (controller/bench_control.py).

    Attributes:
        suite: the scenario suite (YAML; a relative path from the project's ``conf/``).
        seeds: seeds per scenario (paired: every controller meets the same draws).
        first_seed: the first seed.
        controllers: which run (agent, natural, linear, cubic, ssc, dnc, oracle).
        scenarios: a subset of the suite's scenarios by name (empty: all).
        workers: batches run in parallel (one per core).
        output_dir: JSON, figure, HTML page and decision logs.
        checkpoint: the agent's MS-GNN (None: ``agent.checkpoint``, or the demo's quick model,
            trained once, when that is missing).
        oracle_cache: where the oracle's trajectories are kept (per scenario content and seed).
        oracle_knots: segments of the oracle's cooling profile.
        oracle_evaluations: simulated batches per start of the oracle's search.
        oracle_refinement: also re-solve the first scenario's oracle with twice the knots and
            report how much its cost changes (how close to optimal the parametrisation is).
    """

    suite: str = "suite/control.yaml"
    seeds: int = 5
    first_seed: int = 0
    controllers: tuple[str, ...] = ("agent", "natural", "linear", "cubic", "ssc", "dnc", "oracle")
    scenarios: tuple[str, ...] = ()
    workers: int = 2
    output_dir: str = "runs/bench_control"
    checkpoint: Optional[str] = None
    oracle_cache: str = "runs/bench_control/oracle_cache"
    oracle_knots: int = 6
    oracle_evaluations: int = 80
    oracle_refinement: bool = True

    def __post_init__(self) -> None:
        validate.positive(self, "seeds", "workers", "oracle_knots", "oracle_evaluations")
        validate.non_negative(self, "first_seed")
        if not self.controllers:
            raise ValueError("controllers must name at least one controller")


@dataclass(frozen=True)
class BenchCampaignSettings:
    """``xtalpilot bench campaign`` (controller/campaign.py): batch-to-batch learning.

    Attributes:
        batches: batches in the campaign (each with its own noise and disturbance draws,
            ``first_seed`` + batch number - 1, paired between the two arms).
        mismatch: Hydra overrides of the plant that persist over the campaign (what the
            agent is not told; default: every charge puts 30 % less seed crystal in than the
            recipe sheet counts, a seed lot's assay or a dosing error).
        seed_mass_rel: (low, high) seed charges the campaign may choose, as multiples of the
            recipe's.
        candidates: seed charges on that range the campaign chooses from (evenly spaced).
        residual_scale: the prior standard deviation of the model's error per outcome
            (d43 and batch time as log ratios; CV, fines, yield and peak supersaturation as
            differences): how far the campaign expects the plant to be from the model before
            it has seen a batch.
        mc_samples: posterior samples of the acquisition.
        max_step_rel: the next batch's charge lies within this share of the incumbent's (the
            batch run whose posterior mean cost is lowest): a trust region, as change control
            moves a recipe in steps.
        first_batch: ``recipe`` (the campaign starts from the recipe as written) or ``model``
            (from the model's best charge).
        first_seed: the first batch's seed.
        workers: 2 runs the campaign and the arm without learning side by side, 1 one after
            the other.
        output_dir: JSON, figure and decision logs.
        checkpoint: the agent's MS-GNN (None: ``agent.checkpoint``, or the demo's quick model,
            trained once, when that is missing).
    """

    batches: int = 10
    mismatch: tuple[str, ...] = ("scenario.seed_mass_rel_offset=-0.3",)
    seed_mass_rel: tuple[float, float] = (0.5, 2.0)
    candidates: int = 31
    residual_scale: tuple[float, ...] = (0.1, 0.2, 0.02, 0.005, 0.02, 0.002)
    mc_samples: int = 256
    max_step_rel: float = 0.25
    first_batch: str = "recipe"
    first_seed: int = 0
    workers: int = 2
    output_dir: str = "runs/bench_campaign"
    checkpoint: Optional[str] = None

    def __post_init__(self) -> None:
        validate.positive(self, "batches", "candidates", "mc_samples", "workers", "max_step_rel")
        if self.first_batch not in ("recipe", "model"):
            raise ValueError(f"first_batch must be recipe or model, got {self.first_batch!r}")
        validate.non_negative(self, "first_seed")
        low, high = (tuple(self.seed_mass_rel) + (math.nan, math.nan))[:2]
        if len(self.seed_mass_rel) != 2 or not 0.0 < low < high:
            raise ValueError(f"seed_mass_rel must be (low, high) with 0 < low < high, got {self.seed_mass_rel}")
        if len(self.residual_scale) != 6 or not all(v > 0 for v in self.residual_scale):
            raise ValueError("residual_scale needs six positive scales (d43, batch time, CV, fines, yield, peak "
                             f"supersaturation), got {self.residual_scale}")


@dataclass(frozen=True)
class BenchLoopSettings:
    """``xtalpilot bench loop`` (controller/bench_loop.py).

    Attributes:
        speed: plant speed during the benchmark (plant s per wall s).
        interval_s: control interval, plant seconds.
        window_plant_s: plant seconds measured once the seeds are in.
        plant_publish_interval_s: wall seconds between the plant's updates during the benchmark.
        opcua_subscription: also measure the OPC UA client in subscription mode.
        output_dir: where the decision logs of the runs go.
    """

    speed: float = 20.0
    interval_s: float = 1.0
    window_plant_s: float = 600.0
    plant_publish_interval_s: float = 0.01
    opcua_subscription: bool = True
    output_dir: str = "runs/bench_loop"

    def __post_init__(self) -> None:
        validate.positive(self, "speed", "interval_s", "window_plant_s", "plant_publish_interval_s")
