"""Crystallization kinetics: facet growth, impurity poisoning, nucleation, power-law laws.

Two kinds of kinetics drive the simulated plant:

- :class:`FacetKinetics` (physics chain, DESIGN steps 4 and 6): per facet family a normal growth
  rate R_hkl(T, sigma) from Burton-Cabrera-Frank spiral growth plus birth-and-spread, Arrhenius
  in temperature and poisoned by impurities (Kubota-Mullin). The habit (kinetic Wulff, see
  :mod:`conf.contract.morphology`) turns facet rates into the volume-equivalent growth rate G.
  Nucleation is classical (primary) plus secondary. Parameters derive from the material's
  structure (attachment and interfacial energies from :mod:`conf.contract.lattice`).
- :class:`PowerLawKinetics` (empirical): G = k_g s^g exp(-E_g/RT), B = k_b s^b M_T^j
  exp(-E_b/RT), as plants fit to their own batches. Presets live in ``conf/kinetics/*.yaml``.

Both return :class:`KineticRates` for given conditions; the reactor model needs nothing else.
All functions are pure and accept numpy arrays (vectorised over conditions).

Driving force: sigma = ln S with S = C / C* (C and C* in the same units); relative
supersaturation s = S - 1. References:

- Burton, W. K., Cabrera, N. & Frank, F. C. (1951) Phil. Trans. R. Soc. A 243, 299.
- Ohara, M. & Reid, R. C. (1973) Modeling Crystal Growth Rates from Solution (birth-and-spread).
- Hartman, P. & Perdok, W. G. (1955) Acta Cryst. 8, 49 (R_hkl proportional to E_att).
- Kubota, N. & Mullin, J. W. (1995) J. Cryst. Growth 152, 203.
- Mersmann, A. (1990) J. Cryst. Growth 102, 841 (interfacial energy).
- Randolph, A. D. & Larson, M. A. (1988) Theory of Particulate Processes, 2nd ed.
- Miller, S. M. & Rawlings, J. B. (1994) AIChE J. 40, 1312 (KNO3 power-law kinetics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

R_GAS_J_PER_MOL_K = 8.314462618
K_BOLTZMANN_J_PER_K = 1.380649e-23
AVOGADRO_PER_MOL = 6.02214076e23
T_REF_K = 298.15


def driving_force(concentration: np.ndarray | float, solubility: np.ndarray | float) -> np.ndarray:
    """sigma = ln(C / C*), same units for both. Shape follows the broadcast inputs."""
    c = np.maximum(np.asarray(concentration, dtype=float), 1e-12)
    return np.log(c / np.maximum(np.asarray(solubility, dtype=float), 1e-12))


@dataclass(frozen=True)
class KineticRates:
    """Kinetics at one set of conditions (arrays broadcast over conditions).

    Attributes:
        growth_rate_m_per_s: volume-equivalent growth rate G (negative: dissolution).
        nucleation_rate_per_kg_s: total nucleation rate B per kg solvent.
        family_rates_m_per_s: normal growth rate per facet family, shape (..., n_families);
            empty last axis for power-law kinetics (no facet resolution).
    """

    growth_rate_m_per_s: np.ndarray | float
    nucleation_rate_per_kg_s: np.ndarray | float
    family_rates_m_per_s: np.ndarray


@dataclass(frozen=True)
class FacetFamilyKinetics:
    """Growth law of one facet family {hkl}.

    R = f_KM(c_imp) * exp(-E_g/R (1/T - 1/T_ref)) * [ C sigma^2/sigma_c tanh(sigma_c/sigma)
        + C_bs sigma^(5/6) exp(-K_bs/sigma) ]     (sigma > 0, BCF + birth-and-spread)
    R = k_d * sigma                                 (sigma < 0, diffusion-limited dissolution)

    Attributes:
        hkl: Miller indices of the family.
        bcf_rate_m_per_s: BCF step-flow constant C at T_ref (proportional to |E_att| after
            Hartman-Perdok, times the dislocation activity that supplies spiral steps).
        critical_supersaturation: sigma_c of BCF; below it growth is parabolic, above linear.
        birth_spread_rate_m_per_s: prefactor C_bs of 2-D nucleation growth.
        birth_spread_barrier: K_bs = pi gamma^2 h Omega / (kT)^2, the 2-D nucleus barrier
            divided by kT at sigma = 1 (Ohara & Reid 1973).
        impurity_effectiveness: Kubota-Mullin alpha (> 1 gives a dead zone).
        impurity_langmuir_per_ppm: Langmuir constant K of impurity adsorption on this face.
    """

    hkl: tuple[int, int, int]
    bcf_rate_m_per_s: float
    critical_supersaturation: float
    birth_spread_rate_m_per_s: float
    birth_spread_barrier: float
    impurity_effectiveness: float = 0.0
    impurity_langmuir_per_ppm: float = 0.0


# A poisoned face keeps this fraction of its clean rate. The Kubota-Mullin factor 1 - alpha*theta
# reaches zero (a dead zone), but the kinetic Wulff construction needs every face to move
# forward (HalfspaceIntersection needs a strictly interior point; NOTES.md).
MIN_POISONED_FRACTION = 0.02


@dataclass(frozen=True)
class FacetKinetics:
    """Physics-chain kinetics of one material: facet growth laws and nucleation.

    Attributes:
        families: growth law per facet family.
        growth_activation_j_per_mol: E_g of the Arrhenius factor (surface integration).
        dissolution_rate_m_per_s: k_d, dissolution normal rate per unit |sigma|.
        interfacial_energy_j_per_m2: solid-liquid interfacial energy (Mersmann 1990).
        molecular_volume_m3: volume of one formula unit in the crystal.
        heterogeneous_factor: gamma_eff / gamma for primary nucleation on foreign surfaces
            (f < 1); calibrated so primary nucleation sets in at a metastable zone of a few K.
        primary_prefactor_per_kg_s: A of classical nucleation theory, per kg solvent.
        secondary_rate_per_kg_s: k_b2 of B2 = k_b2 sigma^b M_T^j.
        secondary_sigma_exponent: b.
        secondary_suspension_exponent: j (M_T in kg crystals per kg solvent).
        nucleation_activation_j_per_mol: E_b of an Arrhenius factor on secondary nucleation.
    """

    families: tuple[FacetFamilyKinetics, ...]
    growth_activation_j_per_mol: float = 40e3
    dissolution_rate_m_per_s: float = 2e-6
    interfacial_energy_j_per_m2: float = 0.02
    molecular_volume_m3: float = 6.2e-29
    heterogeneous_factor: float = 0.2
    primary_prefactor_per_kg_s: float = 1e20
    secondary_rate_per_kg_s: float = 5e8
    secondary_sigma_exponent: float = 2.0
    secondary_suspension_exponent: float = 1.0
    nucleation_activation_j_per_mol: float = 0.0

    @property
    def hkls(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(f.hkl for f in self.families)

    def family_rates_m_per_s(
        self, temperature_c: np.ndarray | float, sigma: np.ndarray | float, impurity_ppm: np.ndarray | float = 0.0
    ) -> np.ndarray:
        """Normal growth (or dissolution) rate of every family.

        Args:
            temperature_c: shape (...).
            sigma: driving force ln S, shape (...).
            impurity_ppm: impurity concentration in the liquid, shape (...).

        Returns:
            Rates, shape (..., n_families). Positive rates are floored at
            ``MIN_POISONED_FRACTION`` of the clean rate (see above).
        """
        t_k = np.asarray(temperature_c, dtype=float)[..., None] + 273.15
        s = np.asarray(sigma, dtype=float)[..., None]
        imp = np.asarray(impurity_ppm, dtype=float)[..., None]
        c = np.array([f.bcf_rate_m_per_s for f in self.families])
        sc = np.array([f.critical_supersaturation for f in self.families])
        cbs = np.array([f.birth_spread_rate_m_per_s for f in self.families])
        kbs = np.array([f.birth_spread_barrier for f in self.families])
        alpha = np.array([f.impurity_effectiveness for f in self.families])
        k_lang = np.array([f.impurity_langmuir_per_ppm for f in self.families])

        arrhenius = np.exp(-self.growth_activation_j_per_mol / R_GAS_J_PER_MOL_K * (1.0 / t_k - 1.0 / T_REF_K))
        sp = np.maximum(s, 1e-12)
        # BCF: sigma^2/sigma_c * tanh(sigma_c/sigma), parabolic below sigma_c and linear above.
        bcf = c * sp**2 / sc * np.tanh(sc / sp)
        birth_spread = cbs * sp ** (5.0 / 6.0) * np.exp(-kbs / sp)
        clean = arrhenius * (bcf + birth_spread)
        # Kubota-Mullin: Langmuir coverage theta = K c / (1 + K c); factor 1 - alpha theta.
        theta = k_lang * imp / (1.0 + k_lang * imp)
        poison = np.maximum(1.0 - alpha * theta, MIN_POISONED_FRACTION)
        growth = clean * poison
        dissolution = self.dissolution_rate_m_per_s * arrhenius * s  # negative for s < 0
        return np.where(s > 0, growth, dissolution)

    def primary_nucleation_per_kg_s(self, temperature_c: np.ndarray | float, sigma: np.ndarray | float) -> np.ndarray:
        """Classical nucleation theory, B1 = A exp(-16 pi gamma^3 v^2 / (3 (kT)^3 sigma^2)).

        gamma is the effective (heterogeneous) interfacial energy f * gamma_Mersmann; v the
        molecular volume. Zero for sigma <= 0.
        """
        t_k = np.asarray(temperature_c, dtype=float) + 273.15
        s = np.asarray(sigma, dtype=float)
        gamma = self.heterogeneous_factor * self.interfacial_energy_j_per_m2
        kt = K_BOLTZMANN_J_PER_K * t_k
        barrier = 16.0 * math.pi * gamma**3 * self.molecular_volume_m3**2 / (3.0 * kt**3)
        sp = np.maximum(s, 1e-6)
        return np.where(s > 0, self.primary_prefactor_per_kg_s * np.exp(-barrier / sp**2), 0.0)

    def secondary_nucleation_per_kg_s(
        self, temperature_c: np.ndarray | float, sigma: np.ndarray | float, suspension_kg_per_kg: np.ndarray | float
    ) -> np.ndarray:
        """B2 = k_b2 sigma^b M_T^j exp(-E_b/R (1/T - 1/T_ref)); zero for sigma <= 0."""
        t_k = np.asarray(temperature_c, dtype=float) + 273.15
        s = np.maximum(np.asarray(sigma, dtype=float), 0.0)
        m_t = np.maximum(np.asarray(suspension_kg_per_kg, dtype=float), 0.0)
        arr = np.exp(-self.nucleation_activation_j_per_mol / R_GAS_J_PER_MOL_K * (1.0 / t_k - 1.0 / T_REF_K))
        return (
            self.secondary_rate_per_kg_s
            * arr
            * s**self.secondary_sigma_exponent
            * m_t**self.secondary_suspension_exponent
        )


@dataclass(frozen=True)
class PowerLawKinetics:
    """Empirical kinetics as plants fit them to their own batches.

    G = k_g s^g exp(-E_g/R (1/T - 1/T_ref))          for s > 0 (growth)
    G = -k_d (-s)^d exp(-E_g/R (1/T - 1/T_ref))      for s < 0 (dissolution)
    B = k_b s^b M^j exp(-E_b/R (1/T - 1/T_ref))       for s > 0

    with s = (C - C*)/C* the relative supersaturation and M either the suspension density
    (kg crystals per kg solvent) or the third moment, per ``nucleation_basis``.

    Attributes:
        name: preset name.
        growth_rate_m_per_s: k_g.
        growth_exponent: g.
        dissolution_rate_m_per_s: k_d.
        dissolution_exponent: d.
        growth_activation_j_per_mol: E_g (0: no temperature dependence beyond s).
        nucleation_rate_per_kg_s: k_b.
        nucleation_exponent: b.
        suspension_exponent: j.
        nucleation_activation_j_per_mol: E_b.
        nucleation_basis: "suspension_density" (M_T, kg crystals per kg solvent) or "third_moment"
            (k_v mu_3 as crystal volume per solvent volume, m^3/m^3).
        volume_shape_factor: k_v of the characteristic size the kinetics were fitted in.
        reference: literature source and caveats.
    """

    name: str
    growth_rate_m_per_s: float
    growth_exponent: float
    dissolution_rate_m_per_s: float
    dissolution_exponent: float
    nucleation_rate_per_kg_s: float
    nucleation_exponent: float
    suspension_exponent: float = 1.0
    growth_activation_j_per_mol: float = 0.0
    nucleation_activation_j_per_mol: float = 0.0
    nucleation_basis: str = "suspension_density"
    volume_shape_factor: float = math.pi / 6.0
    reference: str = ""

    def __post_init__(self) -> None:
        if self.nucleation_basis not in ("suspension_density", "third_moment"):
            raise ValueError(
                f"nucleation_basis={self.nucleation_basis!r}: allowed values are suspension_density, third_moment"
            )

    def growth_m_per_s(self, temperature_c: np.ndarray | float, rel_supersaturation: np.ndarray | float) -> np.ndarray:
        """Volume-equivalent growth (>0) or dissolution (<0) rate, shape of the inputs."""
        t_k = np.asarray(temperature_c, dtype=float) + 273.15
        s = np.asarray(rel_supersaturation, dtype=float)
        arr = np.exp(-self.growth_activation_j_per_mol / R_GAS_J_PER_MOL_K * (1.0 / t_k - 1.0 / T_REF_K))
        grow = self.growth_rate_m_per_s * np.maximum(s, 0.0) ** self.growth_exponent
        diss = -self.dissolution_rate_m_per_s * np.maximum(-s, 0.0) ** self.dissolution_exponent
        return arr * np.where(s >= 0, grow, diss)

    def nucleation_per_kg_s(
        self, temperature_c: np.ndarray | float, rel_supersaturation: np.ndarray | float, suspension: np.ndarray | float
    ) -> np.ndarray:
        """B per kg solvent; ``suspension`` is M_T or mu_3 per ``nucleation_basis``."""
        t_k = np.asarray(temperature_c, dtype=float) + 273.15
        s = np.maximum(np.asarray(rel_supersaturation, dtype=float), 0.0)
        m = np.maximum(np.asarray(suspension, dtype=float), 0.0)
        arr = np.exp(-self.nucleation_activation_j_per_mol / R_GAS_J_PER_MOL_K * (1.0 / t_k - 1.0 / T_REF_K))
        return self.nucleation_rate_per_kg_s * arr * s**self.nucleation_exponent * m**self.suspension_exponent


@dataclass(frozen=True)
class FacetEnergyInputs:
    """What the physics chain hands to :func:`facet_kinetics_from_energies`, per family.

    Attributes:
        hkl: family.
        attachment_energy_ev: |E_att| per formula unit (Hartman-Perdok).
        interfacial_energy_j_per_m2: solid-liquid interfacial energy of this face.
        step_height_m: d_hkl of the growth slice.
    """

    hkl: tuple[int, int, int]
    attachment_energy_ev: float
    interfacial_energy_j_per_m2: float
    step_height_m: float


@dataclass(frozen=True)
class GrowthCalibration:
    """Absolute scales of the physics chain, which the broken-bond model cannot give.

    The broken-bond model sets *ratios* between faces; these numbers set the magnitude so that
    volume-equivalent growth rates land at 1e-8 to 1e-7 m/s for sigma ~ 0.01-0.05, the range
    reported for alkali halides in aqueous solution (Mullin, Crystallization, 4th ed., ch. 6).

    Attributes:
        bcf_rate_m_per_s: C for the face of largest |E_att|.
        critical_supersaturation: sigma_c for a face of mean interfacial energy.
        birth_spread_rate_m_per_s: C_bs for the face of largest |E_att|.
        dislocation_activity: multiplies C (more dislocations, more spiral steps).
    """

    bcf_rate_m_per_s: float = 2.5e-6
    critical_supersaturation: float = 0.02
    birth_spread_rate_m_per_s: float = 5e-6
    dislocation_activity: float = 1.0


def facet_kinetics_from_energies(
    facets: Sequence[FacetEnergyInputs],
    interfacial_energy_j_per_m2: float,
    molecular_volume_m3: float,
    calibration: GrowthCalibration = GrowthCalibration(),
    impurity_effectiveness: Sequence[float] | None = None,
    impurity_langmuir_per_ppm: Sequence[float] | None = None,
    temperature_c: float = 25.0,
    **nucleation: float,
) -> FacetKinetics:
    """Build facet growth laws from structure-derived energies.

    - Hartman-Perdok: the BCF and birth-and-spread constants scale with |E_att| (faces with
      weak attachment grow slowly and dominate the habit).
    - sigma_c is the same for every face: scaling it with the face energy would let the most
      stable faces grow fastest at low driving force, against the Hartman-Perdok ordering.
    - Limitation: the nearest-neighbour broken-bond model does not see the polarity of faces such
      as rocksalt {111} (Tasker type 3), which real crystals grow fast; here such faces keep
      their bond-count attachment energy and show as small corner truncations.
    - The birth-and-spread barrier K = pi gamma^2 h Omega / (kT)^2 (2-D nucleus on the face).

    Args:
        facets: one entry per family.
        interfacial_energy_j_per_m2: isotropic Mersmann value (primary nucleation).
        molecular_volume_m3: volume of a formula unit in the crystal.
        calibration: absolute magnitudes.
        impurity_effectiveness: Kubota-Mullin alpha per family (default 0).
        impurity_langmuir_per_ppm: Langmuir K per family (default 0).
        temperature_c: temperature at which the barrier kT is evaluated.
        **nucleation: further :class:`FacetKinetics` fields (nucleation parameters).
    """
    n = len(facets)
    if n == 0:
        raise ValueError("need at least one facet family")
    e_max = max(abs(f.attachment_energy_ev) for f in facets)
    kt = K_BOLTZMANN_J_PER_K * (temperature_c + 273.15)
    alphas = list(impurity_effectiveness) if impurity_effectiveness is not None else [0.0] * n
    langmuir = list(impurity_langmuir_per_ppm) if impurity_langmuir_per_ppm is not None else [0.0] * n
    if len(alphas) != n or len(langmuir) != n:
        raise ValueError("impurity parameters need one value per facet family")
    families = []
    for f, alpha, k in zip(facets, alphas, langmuir):
        rel = abs(f.attachment_energy_ev) / e_max
        barrier = math.pi * f.interfacial_energy_j_per_m2**2 * f.step_height_m * molecular_volume_m3 / kt**2
        families.append(
            FacetFamilyKinetics(
                hkl=tuple(f.hkl),
                bcf_rate_m_per_s=calibration.bcf_rate_m_per_s * calibration.dislocation_activity * rel,
                critical_supersaturation=calibration.critical_supersaturation,
                birth_spread_rate_m_per_s=calibration.birth_spread_rate_m_per_s * rel,
                birth_spread_barrier=barrier,
                impurity_effectiveness=float(alpha),
                impurity_langmuir_per_ppm=float(k),
            )
        )
    return FacetKinetics(
        families=tuple(families),
        interfacial_energy_j_per_m2=interfacial_energy_j_per_m2,
        molecular_volume_m3=molecular_volume_m3,
        **nucleation,
    )


def solution_molarity_mol_per_m3(
    solubility_g_per_kg: float, molar_mass_g_per_mol: float, crystal_density_kg_per_m3: float
) -> float:
    """Saturated concentration in mol per m^3 of solution from g per kg water.

    The solution volume assumes ideal volume additivity of water (1000 kg/m^3) and dissolved salt
    (at its crystal density): within about 5 % of measured densities for alkali halides.
    """
    solute_kg = solubility_g_per_kg / 1000.0
    volume_m3 = 1e-3 + solute_kg / crystal_density_kg_per_m3
    return solute_kg / (molar_mass_g_per_mol / 1000.0) / volume_m3


def facet_kinetics_for_material(
    material,
    calibration: GrowthCalibration = GrowthCalibration(),
    reference_temperature_c: float = 25.0,
    **nucleation: float,
) -> FacetKinetics:
    """The physics chain for one material: structure -> facet energies -> growth laws.

    1. Broken-bond surface and Hartman-Perdok attachment energies per facet family from the
       crystal structure (:func:`conf.contract.lattice.facet_energetics`).
    2. Solid-liquid interfacial energy from Mersmann's correlation at the reference temperature,
       scaled per face by the face's broken-bond surface energy relative to the mean (the
       anisotropy of the solid-liquid energy follows that of the bonds cut).
    3. Growth laws from the energies (:func:`facet_kinetics_from_energies`), with the
       material's Kubota-Mullin impurity parameters.

    Args:
        material: a :class:`conf.contract.materials.Material` with a solubility curve.
        calibration: absolute growth scales.
        reference_temperature_c: where Mersmann's gamma and the 2-D barrier are evaluated.
        **nucleation: nucleation fields of :class:`FacetKinetics`.

    Raises:
        ValueError: for a material without a solubility curve (not a solution system).
    """
    from conf.contract.lattice import facet_energetics, mersmann_interfacial_energy_j_per_m2

    if material.solubility is None:
        raise ValueError(
            f"{material.name} has no solubility curve, so it cannot crystallise from solution; "
            "pick a solution system (see conf.contract.materials.MATERIALS) or power-law kinetics"
        )
    facets = facet_energetics(
        material.structure,
        material.ase_symbols,
        material.lattice_constant_angstrom,
        material.lattice_energy_kj_per_mol,
        material.facet_families,
    )
    c_star = float(material.solubility.g_per_kg(reference_temperature_c))
    gamma = mersmann_interfacial_energy_j_per_m2(
        material.crystal_molar_density_mol_per_m3,
        solution_molarity_mol_per_m3(c_star, material.molar_mass_g_per_mol, material.density_kg_per_m3),
        reference_temperature_c,
    )
    surface = np.array([f.surface_energy_j_per_m2 for f in facets])
    inputs = [
        FacetEnergyInputs(
            hkl=tuple(f.hkl),
            attachment_energy_ev=abs(f.attachment_energy_ev),
            interfacial_energy_j_per_m2=gamma * float(e / surface.mean()),
            step_height_m=f.step_height_m,
        )
        for f, e in zip(facets, surface)
    ]
    return facet_kinetics_from_energies(
        inputs,
        interfacial_energy_j_per_m2=gamma,
        molecular_volume_m3=material.molecular_volume_m3,
        calibration=calibration,
        impurity_effectiveness=material.impurity_effectiveness,
        impurity_langmuir_per_ppm=material.impurity_langmuir_per_ppm,
        temperature_c=reference_temperature_c,
        **nucleation,
    )
