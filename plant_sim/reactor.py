"""The crystallizer: population balance, solute balance, energy balances and the local PID.

State (one flat vector, so the integrator stays simple and fast)::

    x = [N_1 .. N_n,  m_solute_kg,  T_reactor_c,  T_jacket_c,  pid_integral_k_s,
         m_antisolvent_kg,  m_water_kg]

- N_i: number density of crystals in size class i for the WHOLE vessel, per metre of size
  (N = n * solvent mass with n in the per-kg-solvent convention of :mod:`plant_sim.pbe`; the
  finite-volume operator is linear, so it applies to N unchanged).
- Population balance (Randolph & Larson 1988, eq. 3.4-8) in volume-equivalent size L::

      dN/dt = -d(G N)/dL + B m_solvent delta(L - 0) - N / tau

  solved by the flux-limited finite-volume scheme of :mod:`plant_sim.pbe` (Koren 1993).
- Solute balance, exact in the discrete sense: the solute leaving the liquid is what the
  discrete third moment gains, dm_s/dt = -rho k_v sum_i L_i^3 dL_i (dN_i/dt)_growth+nucleation,
  so solute + crystal mass closes to round-off in a batch.
- Concentration C = 1000 m_s / (m_water + m_antisolvent) g per kg solvent. Solubility in the
  mixture C*(T, x_as) = C*_water(T) exp(-k_as x_as) (log-linear cosolvent model, Yalkowsky &
  Roseman 1981) with x_as the antisolvent mass fraction of the solvent.
- Energy balances (lumped, jacketed stirred tank, e.g. Luyben, Process Modeling, ch. 4)::

      M_r c_r dT_r/dt = UA (T_j - T_r) + dH_c dm_cryst/dt + UA_amb (T_amb - T_r)
                        + F_as c_as (T_amb - T_r) + F_feed c_r (T_feed - T_r)
      M_j c_j dT_j/dt = F_j c_j (T_in - T_j) + UA (T_r - T_j)

  with UA = 1 / (1/UA_clean + R_f / A) reduced by fouling.
- Local PID (what the DCS runs on TIC-101): the jacket inlet temperature is
  T_in = T_sp + K_c (e + I / T_i), e = T_sp - T_pv, clamped to the thermostat range, with
  conditional integration as anti-windup. Setpoint feed-forward keeps the PI small. The PV is
  what the DCS reads: given :attr:`Controls.temperature_measurement_c` (the TT-101 reading,
  with its lag, noise and faults), the PID is a sampled controller that scans once per
  :meth:`Reactor.advance` call: it computes T_in from that reading at the start of the call,
  holds it over the call (zero-order hold) and integrates the error it saw. So a stuck or
  drifting RTD moves the true reactor temperature. Without a reading the PV is the true T_r,
  read continuously (an ideal transmitter, for physics checks). In manual
  (:attr:`Controls.pid_manual_output_c`, what the DCS does while the PV is bad) T_in is held and
  the integral frozen. :attr:`Step.jacket_saturated` reports a demand beyond the thermostat
  range: the jacket inlet sits at a limit and the reactor cannot follow its setpoint.

Integration: strong-stability-preserving RK3 (Shu & Osher 1988) with the step limited by the
CFL number of the growth term, the relative change of the supersaturation and a maximum step,
so the finite-volume scheme stays positive and TVD. The served plant advances it 1 s at a time;
the offline simulator takes the same steps with a larger output interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from conf.contract import validate
from plant_sim import pbe
from plant_sim.kinetics import (
    K_BOLTZMANN_J_PER_K,
    MIN_POISONED_FRACTION,
    R_GAS_J_PER_MOL_K,
    T_REF_K,
    FacetKinetics,
    PowerLawKinetics,
)
from conf.contract.morphology import Habit, kinetic_wulff

# Offsets of the scalar states after the n size classes.
I_SOLUTE, I_TR, I_TJ, I_PID, I_ANTI, I_WATER = range(6)
N_SCALARS = 6
#: The integration step stays under this over the heat balances' fastest rate (SSP-RK3's real
#: stability limit is about 2.5).
THERMAL_STEP_SAFETY = 1.0
#: Temperatures beyond this (C) are an integration that went unstable, not a process.
RUNAWAY_TEMPERATURE_C = 500.0


class IntegrationError(RuntimeError):
    """The integration went unstable or lost mass: its results are not a process's."""


@dataclass(frozen=True)
class ReactorSettings:
    """Vessel, jacket, local temperature loop and size grid (a 20 L jacketed glass reactor).

    Attributes:
        water_mass_kg: water charged.
        slurry_heat_capacity_j_per_kg_k: c_r of the slurry.
        jacket_mass_kg: coolant hold-up in the jacket.
        jacket_flow_kg_per_s: coolant flow through the jacket.
        coolant_heat_capacity_j_per_kg_k: c_j (water-glycol).
        heat_transfer_w_per_k: clean UA between jacket and reactor.
        heat_transfer_area_m2: wetted area A (fouling resistance is per area).
        ambient_loss_w_per_k: UA to the room.
        ambient_temperature_c: room and antisolvent temperature.
        jacket_inlet_min_c: lowest thermostat outlet temperature.
        jacket_inlet_max_c: highest thermostat outlet temperature.
        pid_gain: K_c, K of jacket inlet per K of error.
        pid_integral_time_s: T_i.
        heat_of_crystallization_j_per_kg: released per kg crystallised (KCl: 17.2 kJ/mol).
        antisolvent_solubility_coefficient: k_as of the log-linear cosolvent model (ethanol in
            water lowers alkali-halide solubility by about e^-4 per unit mass fraction).
        n_classes: size classes of the finite-volume grid.
        max_size_um: top of the size grid.
        max_substep_s: largest integration step.
        cfl: largest |G| dt / dL per step.
        max_sigma_change: largest relative change of the supersaturation per step.
    """

    water_mass_kg: float = 15.0
    slurry_heat_capacity_j_per_kg_k: float = 3300.0
    jacket_mass_kg: float = 4.0
    jacket_flow_kg_per_s: float = 0.15
    coolant_heat_capacity_j_per_kg_k: float = 3600.0
    heat_transfer_w_per_k: float = 150.0
    heat_transfer_area_m2: float = 0.4
    ambient_loss_w_per_k: float = 1.5
    ambient_temperature_c: float = 20.0
    jacket_inlet_min_c: float = -10.0
    jacket_inlet_max_c: float = 95.0
    pid_gain: float = 4.0
    pid_integral_time_s: float = 600.0
    heat_of_crystallization_j_per_kg: float = 2.3e5
    antisolvent_solubility_coefficient: float = 4.0
    n_classes: int = 240
    max_size_um: float = 1500.0
    max_substep_s: float = 20.0
    cfl: float = 0.4

    def __post_init__(self) -> None:
        validate.positive(
            self, "water_mass_kg", "slurry_heat_capacity_j_per_kg_k", "jacket_mass_kg", "jacket_flow_kg_per_s",
            "coolant_heat_capacity_j_per_kg_k", "heat_transfer_w_per_k", "heat_transfer_area_m2",
            "pid_integral_time_s", "max_size_um", "max_substep_s",
        )
        validate.non_negative(
            self, "ambient_loss_w_per_k", "pid_gain", "heat_of_crystallization_j_per_kg",
            "antisolvent_solubility_coefficient",
        )
        if not self.jacket_inlet_min_c < self.jacket_inlet_max_c:
            raise ValueError(
                f"jacket_inlet_min_c ({self.jacket_inlet_min_c}) must be below jacket_inlet_max_c "
                f"({self.jacket_inlet_max_c})"
            )
        if not self.n_classes >= 20:
            raise ValueError(f"n_classes must be >= 20 size classes, got {self.n_classes!r}")
        if not 0.0 < self.cfl <= 1.0:
            raise ValueError(f"cfl must be in (0, 1] for a stable explicit scheme, got {self.cfl!r}")
    max_sigma_change: float = 0.25


@dataclass(frozen=True)
class Controls:
    """Inputs held constant over one :meth:`Reactor.advance` call.

    Attributes:
        temperature_setpoint_c: working setpoint of the local PID.
        temperature_measurement_c: the PID's PV, the TT-101 reading at the start of the call
            (a sampled loop scanning once per call); None: the true temperature, continuously.
        pid_manual_output_c: the PID in manual: the jacket inlet held at this value (clamped
            to the thermostat range), the integral frozen; None: automatic.
        antisolvent_rate_kg_per_min: antisolvent feed.
        impurity_ppm: impurity concentration in the liquid.
        fouling_resistance_m2k_per_w: jacket-wall fouling.
        residence_time_s: MSMPR residence time (None: batch).
        feed_concentration_g_per_kg: MSMPR clear-feed concentration.
        feed_temperature_c: MSMPR feed temperature.
    """

    temperature_setpoint_c: float
    temperature_measurement_c: float | None = None
    pid_manual_output_c: float | None = None
    antisolvent_rate_kg_per_min: float = 0.0
    impurity_ppm: float = 0.0
    fouling_resistance_m2k_per_w: float = 0.0
    residence_time_s: float | None = None
    feed_concentration_g_per_kg: float = 0.0
    feed_temperature_c: float = 20.0


@dataclass(frozen=True)
class Rates:
    """Kinetics at one state (what :class:`Reactor` needs from a kinetics model).

    Attributes:
        growth_rate_m_per_s: volume-equivalent G (negative while dissolving).
        nucleation_rate_per_kg_s: B per kg solvent.
        family_rates_m_per_s: normal growth rate per facet family (n_families,), empty if the
            kinetics do not resolve facets.
        habit: the current kinetic Wulff habit, or None.
    """

    growth_rate_m_per_s: float
    nucleation_rate_per_kg_s: float
    family_rates_m_per_s: np.ndarray
    habit: Habit | None


# (temperature_c, concentration_g_per_kg, solubility_g_per_kg, impurity_ppm,
#  suspension_kg_per_kg, crystal_volume_fraction) -> Rates
KineticsFn = Callable[[float, float, float, float, float, float], Rates]


@dataclass(frozen=True, eq=False)
class Step:
    """What one step of the reactor shows the outside world (true values, before sensors).

    Attributes:
        concentration_g_per_kg: C.
        solubility_g_per_kg: C* at the reactor temperature and solvent composition.
        jacket_inlet_temperature_c: PID output.
        rates: kinetics at the end of the step.
        solvent_mass_kg: water + antisolvent.
        crystal_mass_kg: discrete rho k_v mu_3.
        jacket_saturated: the PID asked for a jacket inlet beyond the thermostat range (the
            sampled loop: at its scan; the continuous one: at the end of the step).
    """

    concentration_g_per_kg: float
    solubility_g_per_kg: float
    jacket_inlet_temperature_c: float
    rates: Rates
    solvent_mass_kg: float
    crystal_mass_kg: float
    jacket_saturated: bool = False


class Reactor:
    """The crystallizer model: equations plus an integrator; holds no plant logic.

    Args:
        settings: vessel and grid.
        kinetics: kinetics model (see :data:`KineticsFn`).
        solubility_g_per_kg: C*_water(T), vectorised callable of temperature in C.
        crystal_density_kg_per_m3: rho.
        volume_shape_factor: k_v of the size coordinate (pi/6 for volume-equivalent spheres).
    """

    def __init__(
        self,
        settings: ReactorSettings,
        kinetics: KineticsFn,
        solubility_g_per_kg: Callable[[float], float],
        crystal_density_kg_per_m3: float,
        volume_shape_factor: float = math.pi / 6.0,
    ) -> None:
        self.settings = settings
        self.kinetics = kinetics
        self.solubility_g_per_kg = solubility_g_per_kg
        self._solubility_table = _SolubilityTable(solubility_g_per_kg)
        self.density_kg_per_m3 = crystal_density_kg_per_m3
        self.volume_shape_factor = volume_shape_factor
        self.grid = pbe.uniform_grid(settings.max_size_um * 1e-6, settings.n_classes)
        self.n = settings.n_classes
        # rho k_v L_i^3 dL_i: crystal mass per unit N_i, so mass closes exactly (discrete mu_3).
        self._mass_weights = crystal_density_kg_per_m3 * volume_shape_factor * pbe.third_moment_weights(self.grid)
        self._min_dl = float(np.min(self.grid.widths_m))
        self._end_of_last_advance: tuple | None = None
        # The heat balances' fastest rate (1/s): the jacket's (coolant through it and the wall,
        # over its heat capacity) and the slurry's (the wall, over the water's heat capacity,
        # the least the slurry holds). SSP-RK3 is stable to |lambda dt| ~ 2.5: a 20 s step on a
        # 0.5 kg jacket with a 3 kW/K wall went unstable, its temperature ran away, and the run
        # created crystal mass or stopped on a zero solubility.
        coolant_w_per_k = settings.jacket_flow_kg_per_s * settings.coolant_heat_capacity_j_per_kg_k
        jacket_rate = ((coolant_w_per_k + settings.heat_transfer_w_per_k)
                       / (settings.jacket_mass_kg * settings.coolant_heat_capacity_j_per_kg_k))
        slurry_rate = ((settings.heat_transfer_w_per_k + settings.ambient_loss_w_per_k)
                       / (settings.water_mass_kg * settings.slurry_heat_capacity_j_per_kg_k))
        self._thermal_step_s = THERMAL_STEP_SAFETY / max(jacket_rate, slurry_rate)

    # ----------------------------------------------------------------------------- state
    def initial_state(self, temperature_c: float, saturation_temperature_c: float) -> np.ndarray:
        """A clear solution saturated at ``saturation_temperature_c``, at ``temperature_c``."""
        s = self.settings
        x = np.zeros(self.n + N_SCALARS)
        c_sat = float(self.solubility_g_per_kg(saturation_temperature_c))
        x[self.n + I_SOLUTE] = c_sat * s.water_mass_kg / 1000.0
        x[self.n + I_TR] = temperature_c
        x[self.n + I_TJ] = temperature_c
        x[self.n + I_WATER] = s.water_mass_kg
        return x

    def add_seeds(self, x: np.ndarray, mass_g: float, mean_size_um: float, std_size_um: float) -> np.ndarray:
        """Charge seed crystals (new state; the charged mass is exactly ``mass_g``)."""
        if mass_g <= 0.0:
            return x.copy()
        y = x.copy()
        per_kg = pbe.seed_distribution(
            self.grid,
            seed_mass_kg_per_kg=mass_g / 1000.0,
            mean_size_m=mean_size_um * 1e-6,
            std_size_m=std_size_um * 1e-6,
            density_kg_per_m3=self.density_kg_per_m3,
            volume_shape_factor=self.volume_shape_factor,
        )
        y[: self.n] += per_kg  # seed_distribution gives mass per kg; here "per kg" = whole charge
        return y

    def crystal_mass_kg(self, x: np.ndarray) -> float:
        return float(self._mass_weights @ x[: self.n])

    def total_solute_kg(self, x: np.ndarray) -> float:
        """Dissolved plus crystallised solute (conserved in a closed batch)."""
        return float(x[self.n + I_SOLUTE]) + self.crystal_mass_kg(x)

    def solvent_mass_kg(self, x: np.ndarray) -> float:
        return float(x[self.n + I_WATER] + x[self.n + I_ANTI])

    def concentration_g_per_kg(self, x: np.ndarray) -> float:
        return 1000.0 * float(x[self.n + I_SOLUTE]) / self.solvent_mass_kg(x)

    def solubility_at(self, x: np.ndarray, temperature_c: float | None = None) -> float:
        """C* in the current solvent mixture at the current (or the given) temperature, g per kg solvent."""
        anti_fraction = float(x[self.n + I_ANTI]) / self.solvent_mass_kg(x)
        c_water = self._solubility_table(float(x[self.n + I_TR]) if temperature_c is None else temperature_c)
        return c_water * math.exp(-self.settings.antisolvent_solubility_coefficient * anti_fraction)

    def csd_per_m_per_kg(self, x: np.ndarray) -> np.ndarray:
        """Number density n(L) per metre per kg solvent, shape (n_classes,)."""
        return x[: self.n] / self.solvent_mass_kg(x)

    # ----------------------------------------------------------------------------- equations
    def _pid_law(self, setpoint_c: float, pv_c: float, integral_k_s: float) -> tuple[float, float, bool]:
        """One evaluation of TIC-101. Returns (jacket inlet, integral rate dI/dt, saturated)."""
        s = self.settings
        error = setpoint_c - pv_c
        raw = setpoint_c + s.pid_gain * (error + integral_k_s / s.pid_integral_time_s)
        clamped = min(max(raw, s.jacket_inlet_min_c), s.jacket_inlet_max_c)
        # Conditional integration: stop integrating while saturated in the error's direction.
        integrate = clamped == raw or (raw > clamped) != (error > 0)
        return clamped, error if integrate else 0.0, clamped != raw

    def _pid_scan(self, x: np.ndarray, u: Controls) -> tuple[float, float, bool] | None:
        """The sampled loop's scan at the start of a call (held over it); None: continuous loop."""
        s = self.settings
        if u.pid_manual_output_c is not None:
            return min(max(u.pid_manual_output_c, s.jacket_inlet_min_c), s.jacket_inlet_max_c), 0.0, False
        if u.temperature_measurement_c is None:
            return None
        pv, integral = u.temperature_measurement_c, float(x[self.n + I_PID])
        if not math.isfinite(pv):
            # A bad PV without a manual output: act on no error and stop integrating.
            return self._pid_law(u.temperature_setpoint_c, u.temperature_setpoint_c, integral)[0], 0.0, False
        return self._pid_law(u.temperature_setpoint_c, pv, integral)

    def rates_at(self, x: np.ndarray, impurity_ppm: float) -> tuple[Rates, float, float, float]:
        """Kinetics at state x. Returns (rates, C, C*, crystal mass in kg)."""
        n = self.n
        solvent = self.solvent_mass_kg(x)
        c = 1000.0 * float(x[n + I_SOLUTE]) / solvent
        c_star = self.solubility_at(x)
        crystal_kg = float(self._mass_weights @ x[:n])
        suspension = crystal_kg / solvent
        # Crystal volume per solvent volume (solvent taken at 1000 kg/m3): basis of mu_3 laws.
        volume_fraction = suspension * 1000.0 / self.density_kg_per_m3
        rates = self.kinetics(float(x[n + I_TR]), c, c_star, impurity_ppm, suspension, volume_fraction)
        return rates, c, c_star, crystal_kg

    def rhs(
        self,
        x: np.ndarray,
        u: Controls,
        known: tuple[Rates, float, float, float] | None = None,
        scan: tuple[float, float, bool] | None = None,
    ) -> tuple[np.ndarray, Rates, float, float, float]:
        """dx/dt. Returns (dx/dt, rates, C, C*, jacket inlet temperature).

        ``known`` passes :meth:`rates_at` already evaluated at x; ``scan`` the sampled PID's
        held (jacket inlet, integral rate, saturated), None for the continuous PID on T_r.
        """
        s, n = self.settings, self.n
        rates, c, c_star, crystal_kg = known if known is not None else self.rates_at(x, u.impurity_ppm)
        solvent = self.solvent_mass_kg(x)
        crystals = x[:n]
        dx = np.empty_like(x)
        dn = pbe.growth_rhs(crystals, rates.growth_rate_m_per_s, self.grid, rates.nucleation_rate_per_kg_s * solvent)
        crystallisation_kg_per_s = float(self._mass_weights @ dn)
        dx[n + I_SOLUTE] = -crystallisation_kg_per_s

        t_r, t_j = float(x[n + I_TR]), float(x[n + I_TJ])
        if scan is None:
            t_in, d_integral, _ = self._pid_law(u.temperature_setpoint_c, t_r, float(x[n + I_PID]))
        else:
            t_in, d_integral, _ = scan
        ua = 1.0 / (1.0 / s.heat_transfer_w_per_k + u.fouling_resistance_m2k_per_w / s.heat_transfer_area_m2)
        anti_kg_per_s = u.antisolvent_rate_kg_per_min / 60.0
        slurry_kg = solvent + float(x[n + I_SOLUTE]) + crystal_kg
        q_r = (
            ua * (t_j - t_r)
            + s.heat_of_crystallization_j_per_kg * crystallisation_kg_per_s
            + s.ambient_loss_w_per_k * (s.ambient_temperature_c - t_r)
            + anti_kg_per_s * s.slurry_heat_capacity_j_per_kg_k * (s.ambient_temperature_c - t_r)
        )
        dx[n + I_ANTI] = anti_kg_per_s
        dx[n + I_WATER] = 0.0
        if u.residence_time_s is not None:
            # MSMPR: clear feed in, slurry out at the same mass rate (constant hold-up).
            washout = 1.0 / u.residence_time_s
            dn = dn - crystals * washout
            feed_water_kg_per_s = x[n + I_WATER] * washout
            dx[n + I_SOLUTE] += feed_water_kg_per_s * u.feed_concentration_g_per_kg / 1000.0 - x[n + I_SOLUTE] * washout
            dx[n + I_ANTI] -= x[n + I_ANTI] * washout
            q_r += feed_water_kg_per_s * s.slurry_heat_capacity_j_per_kg_k * (u.feed_temperature_c - t_r)
        dx[:n] = dn
        dx[n + I_TR] = q_r / (slurry_kg * s.slurry_heat_capacity_j_per_kg_k)
        dx[n + I_TJ] = (
            s.jacket_flow_kg_per_s * s.coolant_heat_capacity_j_per_kg_k * (t_in - t_j) + ua * (t_r - t_j)
        ) / (s.jacket_mass_kg * s.coolant_heat_capacity_j_per_kg_k)
        dx[n + I_PID] = d_integral
        return dx, rates, c, c_star, t_in

    # ----------------------------------------------------------------------------- integrator
    def _stable_step_s(self, x: np.ndarray, dx: np.ndarray, rates: Rates, c: float, c_star: float) -> float:
        s = self.settings
        dt = min(s.max_substep_s, self._thermal_step_s)
        g = abs(rates.growth_rate_m_per_s)
        if g > 0.0:
            dt = min(dt, s.cfl * self._min_dl / g)
        dc_dt = 1000.0 * abs(float(dx[self.n + I_SOLUTE])) / self.solvent_mass_kg(x)
        if dc_dt > 0.0:
            # Limit the change of C per step to a fraction of the distance from saturation, so
            # nucleation bursts and dissolution are resolved instead of overshooting.
            dt = min(dt, s.max_sigma_change * max(abs(c - c_star), 1e-3 * c_star) / dc_dt)
        return max(dt, 1e-3)

    def advance(self, x: np.ndarray, duration_s: float, u: Controls) -> tuple[np.ndarray, Step]:
        """Integrate over ``duration_s`` with constant controls (SSP-RK3, adaptive substeps).

        Args:
            x: state, shape (n_classes + 6,).
            duration_s: plant time to advance.
            u: controls held over the interval.

        Returns:
            (new state, :class:`Step` at the end of the interval).
        """
        remaining = duration_s
        t_in = float("nan")
        # The kinetics at the end of the previous call are those at the start of this one, unless
        # the state was replaced (seeding) or the impurity changed.
        end = self._end_of_last_advance
        known = end[2] if end is not None and end[0] is x and end[1] == u.impurity_ppm else None
        scan = self._pid_scan(x, u)
        while remaining > 1e-9:
            f0, rates, c, c_star, t_in = self.rhs(x, u, known, scan)
            known = None
            dt = min(remaining, self._stable_step_s(x, f0, rates, c, c_star))
            u1 = x + dt * f0
            np.maximum(u1[: self.n], 0.0, out=u1[: self.n])
            f1 = self.rhs(u1, u, None, scan)[0]
            u2 = 0.75 * x + 0.25 * (u1 + dt * f1)
            np.maximum(u2[: self.n], 0.0, out=u2[: self.n])
            f2 = self.rhs(u2, u, None, scan)[0]
            x = x / 3.0 + (2.0 / 3.0) * (u2 + dt * f2)
            # The limiter keeps N >= 0 under the CFL bound; clip round-off only.
            np.maximum(x[: self.n], 0.0, out=x[: self.n])
            x[self.n + I_SOLUTE] = max(float(x[self.n + I_SOLUTE]), 0.0)
            t_r, t_j = float(x[self.n + I_TR]), float(x[self.n + I_TJ])
            if not (abs(t_r) < RUNAWAY_TEMPERATURE_C and abs(t_j) < RUNAWAY_TEMPERATURE_C):
                raise IntegrationError(
                    f"the heat balance went unstable (reactor {t_r:.3g} C, jacket {t_j:.3g} C after a {dt:.3g} s "
                    "step): the jacket's or the reactor's settings make it too stiff for the step; lower "
                    "scenario.reactor.max_substep_s")
            remaining -= dt
        known = self.rates_at(x, u.impurity_ppm)
        rates, c, c_star, crystal_kg = known
        self._end_of_last_advance = (x, u.impurity_ppm, known)
        if scan is None:
            t_r, integral = float(x[self.n + I_TR]), float(x[self.n + I_PID])
            t_end, _, saturated = self._pid_law(u.temperature_setpoint_c, t_r, integral)
            t_in = t_end if math.isnan(t_in) else t_in
        else:
            t_in, _, saturated = scan
        step = Step(
            concentration_g_per_kg=c,
            solubility_g_per_kg=c_star,
            jacket_inlet_temperature_c=t_in,
            rates=rates,
            solvent_mass_kg=self.solvent_mass_kg(x),
            crystal_mass_kg=crystal_kg,
            jacket_saturated=saturated,
        )
        return x, step


_NO_FACETS = np.zeros(0)


class _SolubilityTable:
    """C*(T) tabulated every 0.01 K and interpolated linearly: the curve is evaluated several
    times per integration step and a spline call costs ~50 us; the table's interpolation error
    is below 1e-6 relative for handbook curves.
    """

    STEP_K = 0.01

    def __init__(self, curve: Callable[[float], float], low_c: float = -30.0, high_c: float = 130.0) -> None:
        self.curve = curve
        # Find where the curve answers on a 1 K scan (handbook curves refuse to extrapolate far),
        # then tabulate that span finely in one vectorised call.
        coarse = [t for t in np.arange(low_c, high_c + 0.5, 1.0) if _answers(curve, float(t))]
        if not coarse:
            raise ValueError(f"solubility curve gives no value between {low_c} and {high_c} C")
        temps = np.arange(coarse[0], coarse[-1] + self.STEP_K / 2, self.STEP_K)
        values = np.asarray(curve(temps), dtype=float)
        valid = np.flatnonzero(np.isfinite(values))
        self.low_c = float(temps[valid[0]])
        self.high_c = float(temps[valid[-1]])
        self.values = values[valid[0] : valid[-1] + 1].tolist()

    def __call__(self, temperature_c: float) -> float:
        pos = (temperature_c - self.low_c) / self.STEP_K
        last = len(self.values) - 1
        # Outside the table: extend the end segment linearly (floored at zero). The reactor must
        # keep integrating through an excursion rather than stop on a handbook range error.
        i = min(max(int(math.floor(pos)), 0), last - 1)
        frac = pos - i
        return max(self.values[i] * (1.0 - frac) + self.values[i + 1] * frac, 0.0)


def _answers(curve: Callable[[float], float], temperature_c: float) -> bool:
    try:
        return math.isfinite(float(curve(temperature_c)))
    except ValueError:
        return False


def facet_rates_fn(kinetics: FacetKinetics) -> KineticsFn:
    """Adapt physics-chain kinetics: facet rates -> kinetic Wulff habit -> G; B = B1 + B2.

    The same laws as :meth:`FacetKinetics.family_rates_m_per_s` and the nucleation methods,
    written for one state with scalar math: the integrator calls this several times per plant
    second, and numpy's per-call overhead on 3-element arrays dominated the step. A test checks
    both paths agree. While dissolving (sigma <= 0) every face retreats at the same rate, so the
    habit keeps the shape it grows with at a small positive driving force.
    """
    hkls = kinetics.hkls
    fams = kinetics.families
    bcf = [f.bcf_rate_m_per_s for f in fams]
    sigma_c = [f.critical_supersaturation for f in fams]
    c_bs = [f.birth_spread_rate_m_per_s for f in fams]
    k_bs = [f.birth_spread_barrier for f in fams]
    alpha = [f.impurity_effectiveness for f in fams]
    k_lang = [f.impurity_langmuir_per_ppm for f in fams]
    e_over_r = kinetics.growth_activation_j_per_mol / R_GAS_J_PER_MOL_K
    eb_over_r = kinetics.nucleation_activation_j_per_mol / R_GAS_J_PER_MOL_K
    gamma = kinetics.heterogeneous_factor * kinetics.interfacial_energy_j_per_m2
    cnt_barrier_k3 = 16.0 * math.pi * gamma**3 * kinetics.molecular_volume_m3**2 / (3.0 * K_BOLTZMANN_J_PER_K**3)
    habits: dict[tuple[float, ...], tuple[Habit, list[float]]] = {}

    laws = list(zip(bcf, sigma_c, c_bs, k_bs, alpha, k_lang))

    def family_rates(t_k: float, sigma: float, impurity_ppm: float) -> list[float]:
        arrhenius = math.exp(-e_over_r * (1.0 / t_k - 1.0 / T_REF_K))
        if sigma <= 0.0:
            return [kinetics.dissolution_rate_m_per_s * arrhenius * sigma] * len(fams)
        out = []
        bs_power = sigma ** (5.0 / 6.0)
        for c, sc, cbs, kbs, a, k in laws:
            clean = c * sigma * sigma / sc * math.tanh(sc / sigma) + cbs * bs_power * math.exp(-kbs / sigma)
            if impurity_ppm > 0.0:
                theta = k * impurity_ppm / (1.0 + k * impurity_ppm)
                clean *= max(1.0 - a * theta, MIN_POISONED_FRACTION)
            out.append(arrhenius * clean)
        return out

    def habit_for(shape_rates: list[float]) -> tuple[Habit, list[float]]:
        scale = 1000.0 / max(shape_rates)
        # Ratios to 3 decimals (as integers: cheaper than round() on the hot path).
        key = tuple(int(r * scale + 0.5) for r in shape_rates)
        hit = habits.get(key)
        if hit is None:
            habit = kinetic_wulff(hkls, [max(k, 1) / 1000.0 for k in key])
            # Face area per family at L = 1: G = (2/pi) sum_f a_f R_f (see morphology).
            hit = (habit, [float(a) * habit.surface_area for a in habit.family_area_fractions])
            if len(habits) > 20000:
                habits.clear()
            habits[key] = hit
        return hit

    def rates(t_c: float, c: float, c_star: float, impurity_ppm: float, m_t: float, _vf: float) -> Rates:
        t_k = t_c + 273.15
        sigma = math.log(max(c, 1e-12) / c_star)
        family = family_rates(t_k, sigma, impurity_ppm)
        habit, areas = habit_for(family if sigma > 0.0 else family_rates(t_k, 0.01, impurity_ppm))
        growth = (2.0 / math.pi) * sum(a * r for a, r in zip(areas, family))
        birth = 0.0
        if sigma > 0.0:
            kt_cubed = t_k**3
            birth = kinetics.primary_prefactor_per_kg_s * math.exp(-cnt_barrier_k3 / (kt_cubed * sigma * sigma))
            birth += (
                kinetics.secondary_rate_per_kg_s
                * math.exp(-eb_over_r * (1.0 / t_k - 1.0 / T_REF_K))
                * sigma**kinetics.secondary_sigma_exponent
                * max(m_t, 0.0) ** kinetics.secondary_suspension_exponent
            )
        return Rates(growth, birth, np.array(family), habit)

    return rates


def power_law_rates_fn(kinetics: PowerLawKinetics) -> KineticsFn:
    """Adapt empirical power-law kinetics (no facet resolution, no habit)."""
    third_moment = kinetics.nucleation_basis == "third_moment"

    def rates(t_c: float, c: float, c_star: float, _imp: float, m_t: float, volume_fraction: float) -> Rates:
        s = c / c_star - 1.0
        growth = float(kinetics.growth_m_per_s(t_c, s))
        birth = float(kinetics.nucleation_per_kg_s(t_c, s, volume_fraction if third_moment else m_t))
        return Rates(growth, birth, _NO_FACETS, None)

    return rates
