"""OpenMM's ``NonbondedForce`` (Lennard-Jones + Coulomb) as batched torch: `NonbondedTerm`.

Supported: ``NoCutoff``, ``CutoffNonPeriodic``, ``CutoffPeriodic`` (reaction field) and ``Ewald``
(rectangular box, neutral system; `boltzgen.energy.torch_forces.ewald`), the LJ switching function,
the dispersion correction, exceptions, and particle / exception parameter offsets evaluated at the
global parameters' default values. ``PME`` and ``LJPME`` raise `UnsupportedForceError`.

Semantics, read off OpenMM's reference platform (``ReferenceLJCoulombIxn``, ``ReferenceLJCoulomb14``,
``ReferenceCalcNonbondedForceKernel``, ``NonbondedForceImpl::calcDispersionCorrection``):

- Ordinary pairs are all pairs ``i < j`` that are not exceptions. LJ uses Lorentz-Berthelot
  combining, ``sigma = (sigma_i + sigma_j)/2``, ``epsilon = sqrt(epsilon_i epsilon_j)``,
  ``E_LJ = 4 epsilon ((sigma/r)^12 - (sigma/r)^6)``.
- With a cutoff only pairs with ``r^2 <= r_c^2`` interact (the neighbour list's test). Coulomb
  becomes the reaction field ``q_i q_j / (4 pi eps0) (1/r + k_rf r^2 - c_rf)`` with
  ``k_rf = r_c^-3 (eps_rf - 1)/(2 eps_rf + 1)``, ``c_rf = r_c^-1 3 eps_rf/(2 eps_rf + 1)``, which
  vanishes at the cutoff. LJ is truncated, not shifted (it jumps at ``r_c``) unless the switching
  function ``S(t) = 1 - 10 t^3 + 15 t^4 - 6 t^5``, ``t = (r - r_sw)/(r_c - r_sw)``, multiplies it
  for ``r > r_sw``; the switch never touches Coulomb.
- Exceptions (``chargeProd``, ``sigma``, ``epsilon``) are always plain Coulomb + LJ: no cutoff, no
  reaction field, no switch, whatever the method. They use the periodic minimum image only for
  ``CutoffPeriodic`` with ``getExceptionsUsePeriodicBoundaryConditions()``. Exceptions with
  ``chargeProd == 0`` and ``epsilon == 0`` (and no parameter offset) are pure exclusions.
- ``Ewald``: ordinary pairs within the cutoff get ``q_i q_j / (4 pi eps0) erfc(alpha r) / r``
  (minimum image) instead of the reaction field; LJ, switch, exceptions and dispersion correction
  as with ``CutoffPeriodic``; plus the reciprocal sum, the self energy and the ``erf`` correction of
  every exception pair (see the ewald module; minimum-image distances for it only with
  ``getExceptionsUsePeriodicBoundaryConditions()``, as for the exceptions themselves).
- Excluded pairs get no reaction-field correction at all in OpenMM (no ``k_rf r^2 - c_rf`` term
  for excluded or exception pairs, and no self term), so none is added here.
- The dispersion correction (``CutoffPeriodic`` and ``Ewald`` only) is ``coefficient / V`` with ``V`` the product
  of the box diagonal and the coefficient computed once, at build time, as OpenMM does (particle
  classes by (sigma, epsilon), the switched integral when switching is on).
"""

from __future__ import annotations

import math

import numpy as np
import openmm
import torch

from boltzgen.energy.torch_forces.base import (
    ONE_4PI_EPS0,
    ForceTerm,
    UnsupportedForceError,
    as_float_buffer,
    as_index_buffer,
    value_of,
)
from boltzgen.energy.torch_forces.ewald import EwaldReciprocalSum, ewald_parameters
from boltzgen.energy.torch_forces.layout import batch_last, displacement_components
from boltzgen.energy.torch_forces.pairs import all_pairs

__all__ = ["NonbondedTerm", "dispersion_correction_coefficient"]

_METHOD_NAMES = {
    openmm.NonbondedForce.NoCutoff: "NoCutoff",
    openmm.NonbondedForce.CutoffNonPeriodic: "CutoffNonPeriodic",
    openmm.NonbondedForce.CutoffPeriodic: "CutoffPeriodic",
    openmm.NonbondedForce.Ewald: "Ewald",
    openmm.NonbondedForce.PME: "PME",
    openmm.NonbondedForce.LJPME: "LJPME",
}


class NonbondedTerm(ForceTerm):
    """``NonbondedForce`` with dense pair lists: ordinary pairs (all pairs minus exceptions) and exceptions.

    Build it with `from_openmm`. Per-pair parameters are combined once at build time (charge
    product times ``1/(4 pi eps0)``; ``c6 = 4 eps sigma^6``, ``c12 = c6 sigma^6``), so evaluation
    gathers positions only. With ``NoCutoff`` the interacting exceptions are appended to the
    ordinary pairs (same formula, one pass) and ``exceptions`` is empty. Positions are handled
    batch-last (``[3, N, B]``, see `layout.batch_last`) so every pair op runs on contiguous rows.
    """

    openmm_name = "NonbondedForce"

    def __init__(
        self,
        pairs,
        pair_qq,
        pair_sigma2,
        pair_eps4,
        exceptions,
        exception_qq,
        exception_sigma2,
        exception_eps4,
        *,
        method: str = "NoCutoff",
        cutoff: float | None = None,
        reaction_field_dielectric: float = 78.3,
        switching_distance: float | None = None,
        exceptions_periodic: bool = False,
        dispersion_coefficient: float = 0.0,
        ewald: dict | None = None,
    ):
        """``ewald`` (method ``Ewald`` only): ``charges`` ``[N]`` (e), ``alpha`` (1/nm), ``kmax``
        (three ints) and ``exclusions`` ``[E, 2]`` (every exception pair), see `from_openmm`."""
        super().__init__()
        if method not in _SUPPORTED_METHODS:
            raise UnsupportedForceError(_unsupported_method_message(method))
        self.method = method
        if method == "NoCutoff":
            # Without a cutoff exceptions are the same Coulomb + LJ formula as ordinary pairs
            # (only their parameters differ): evaluate them all in one pass.
            pairs = np.concatenate([np.asarray(pairs, dtype=np.int64).reshape(-1, 2), np.asarray(exceptions, dtype=np.int64).reshape(-1, 2)])
            pair_qq, pair_sigma2, pair_eps4 = (
                np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)])
                for a, b in ((pair_qq, exception_qq), (pair_sigma2, exception_sigma2), (pair_eps4, exception_eps4))
            )
            exceptions, exception_qq, exception_sigma2, exception_eps4 = np.zeros((0, 2), dtype=np.int64), [], [], []
        # LJ as c12 / r^12 - c6 / r^6 with c6 = 4 eps sigma^6, c12 = c6 sigma^6 (fewer ops per pair
        # than 4 eps ((sigma/r)^12 - (sigma/r)^6); the same value up to rounding).
        self.register_buffer("pairs", as_index_buffer(pairs, 2))
        self.register_buffer("pair_qq", as_float_buffer(pair_qq))
        c6, c12 = _lj_coefficients(pair_sigma2, pair_eps4)
        self.register_buffer("pair_c6", c6)
        self.register_buffer("pair_c12", c12)
        self.register_buffer("exceptions", as_index_buffer(exceptions, 2))
        self.register_buffer("exception_qq", as_float_buffer(exception_qq))
        c6, c12 = _lj_coefficients(exception_sigma2, exception_eps4)
        self.register_buffer("exception_c6", c6)
        self.register_buffer("exception_c12", c12)
        self.periodic = method in ("CutoffPeriodic", "Ewald")
        self.ewald = None
        if method == "Ewald":
            if ewald is None:
                raise ValueError("method Ewald needs the ewald parameters (charges, alpha, kmax, exclusions)")
            charges = np.asarray(ewald["charges"], dtype=np.float64)
            self.ewald = EwaldReciprocalSum(charges, ewald["alpha"], ewald["kmax"])
            exclusions = np.asarray(ewald["exclusions"], dtype=np.int64).reshape(-1, 2)
            exclusion_qq = ONE_4PI_EPS0 * charges[exclusions[:, 0]] * charges[exclusions[:, 1]]
            keep = exclusion_qq != 0.0
            self.register_buffer("exclusions", as_index_buffer(exclusions[keep], 2))
            self.register_buffer("exclusion_qq", as_float_buffer(exclusion_qq[keep]))
        self.exceptions_periodic = bool(exceptions_periodic) and self.periodic
        self.use_cutoff = method != "NoCutoff"
        if self.use_cutoff:
            if cutoff is None or cutoff <= 0:
                raise ValueError(f"method {method} needs a positive cutoff, got {cutoff}")
            self.cutoff = float(cutoff)
            if method == "Ewald":  # no reaction field: the direct-space term is erfc(alpha r) / r
                self.krf = self.crf = 0.0
            else:
                eps_rf = float(reaction_field_dielectric)
                # Exactly ReferenceLJCoulombIxn::setUseCutoff.
                self.krf = math.pow(self.cutoff, -3.0) * (eps_rf - 1.0) / (2.0 * eps_rf + 1.0)
                self.crf = (1.0 / self.cutoff) * (3.0 * eps_rf) / (2.0 * eps_rf + 1.0)
        else:
            self.cutoff = None
            self.krf = self.crf = 0.0
        if switching_distance is not None and self.use_cutoff:
            if not 0 <= switching_distance < self.cutoff:
                raise ValueError("switching distance must satisfy 0 <= r_switch < r_cutoff")
            self.switching_distance = float(switching_distance)
            self.inverse_switch_width = 1.0 / (self.cutoff - self.switching_distance)
        else:
            self.switching_distance = None
            self.inverse_switch_width = 0.0
        self.dispersion_coefficient = float(dispersion_coefficient) if self.periodic else 0.0

    @classmethod
    def from_openmm(cls, force: openmm.NonbondedForce, system: openmm.System | None = None) -> "NonbondedTerm":
        method = _METHOD_NAMES.get(force.getNonbondedMethod(), str(force.getNonbondedMethod()))
        if method not in _SUPPORTED_METHODS:
            raise UnsupportedForceError(_unsupported_method_message(method))
        n = force.getNumParticles()
        if system is not None and system.getNumParticles() != n:
            raise ValueError(
                f"NonbondedForce has {n} particles but the System has {system.getNumParticles()}"
            )
        globals_ = {
            force.getGlobalParameterName(k): float(force.getGlobalParameterDefaultValue(k))
            for k in range(force.getNumGlobalParameters())
        }
        charge, sigma, epsilon = _particle_parameters(force, globals_)
        exception_atoms, exception_params = _exception_parameters(force, globals_)

        # Ordinary pairs: all pairs minus every exception (exclusions included).
        pairs = all_pairs(n, exclude=exception_atoms).numpy()
        i, j = pairs[:, 0], pairs[:, 1]
        pair_qq = ONE_4PI_EPS0 * charge[i] * charge[j]
        pair_sigma = 0.5 * sigma[i] + 0.5 * sigma[j]
        pair_eps4 = (2.0 * np.sqrt(epsilon[i])) * (2.0 * np.sqrt(epsilon[j]))
        interacting = (pair_qq != 0.0) | (pair_eps4 != 0.0)  # both zero: exactly zero energy
        pairs, pair_qq, pair_sigma, pair_eps4 = (
            pairs[interacting], pair_qq[interacting], pair_sigma[interacting], pair_eps4[interacting]
        )

        # Exceptions that interact (OpenMM: nonzero chargeProd or epsilon, or an offset).
        kept = [k for k, (_, _, _, has_offset) in enumerate(exception_params)
                if has_offset or exception_params[k][0] != 0.0 or exception_params[k][2] != 0.0]
        exceptions = np.array([exception_atoms[k] for k in kept], dtype=np.int64).reshape(-1, 2)
        exception_qq = np.array([ONE_4PI_EPS0 * exception_params[k][0] for k in kept], dtype=np.float64)
        exception_sigma = np.array([exception_params[k][1] for k in kept], dtype=np.float64)
        exception_eps4 = np.array([4.0 * exception_params[k][2] for k in kept], dtype=np.float64)

        cutoff = value_of(force.getCutoffDistance(), openmm.unit.nanometer)
        switching = None
        if force.getUseSwitchingFunction() and method != "NoCutoff":
            switching = value_of(force.getSwitchingDistance(), openmm.unit.nanometer)
        ewald = None
        if method == "Ewald":
            ewald = _ewald_setup(force, system, charge, exception_atoms, cutoff)
        dispersion = 0.0
        if method in ("CutoffPeriodic", "Ewald") and force.getUseDispersionCorrection():
            n_system = system.getNumParticles() if system is not None else n
            dispersion = dispersion_correction_coefficient(sigma, epsilon, cutoff, switching, n_system)
        return cls(
            pairs, pair_qq, pair_sigma * pair_sigma, pair_eps4,
            exceptions, exception_qq, exception_sigma * exception_sigma, exception_eps4,
            method=method,
            cutoff=cutoff if method != "NoCutoff" else None,
            reaction_field_dielectric=force.getReactionFieldDielectric(),
            switching_distance=switching,
            exceptions_periodic=force.getExceptionsUsePeriodicBoundaryConditions(),
            dispersion_coefficient=dispersion,
            ewald=ewald,
        )

    def forward(self, positions: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        if self.periodic and box is None:
            raise ValueError(f"NonbondedForce with {self.method} needs the periodic box")
        points = batch_last(positions)
        energy = self._pair_energy(points, box if self.periodic else None)
        if self.exceptions.shape[0]:
            energy = energy + self._exception_energy(points, box if self.exceptions_periodic else None)
        if self.ewald is not None:
            energy = energy + self.ewald(positions, box)
            if self.exclusions.shape[0]:
                r = _squared_distances(points, self.exclusions, box if self.exceptions_periodic else None).sqrt()
                energy = energy - (self.exclusion_qq.unsqueeze(1) * torch.erf(self.ewald.alpha * r) / r).sum(0)
        if self.dispersion_coefficient != 0.0:
            energy = energy + self.dispersion_coefficient / (box[0, 0] * box[1, 1] * box[2, 2])
        return energy

    def _pair_energy(self, points: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        r2 = _squared_distances(points, self.pairs, box)
        inverse_r2 = torch.reciprocal(r2)
        inverse_r6 = inverse_r2 * inverse_r2 * inverse_r2
        lj = (self.pair_c12.unsqueeze(1) * inverse_r6 - self.pair_c6.unsqueeze(1)) * inverse_r6
        if self.switching_distance is not None:
            t = ((r2.sqrt() - self.switching_distance) * self.inverse_switch_width).clamp_min(0.0)
            lj = lj * (1.0 + t * t * t * (-10.0 + t * (15.0 - 6.0 * t)))
        if not self.use_cutoff:
            return (lj + self.pair_qq.unsqueeze(1) * inverse_r2.sqrt()).sum(0)
        if self.ewald is not None:
            inverse_r = inverse_r2.sqrt()
            coulomb = self.pair_qq.unsqueeze(1) * torch.erfc(self.ewald.alpha * (r2 * inverse_r)) * inverse_r
        else:
            coulomb = self.pair_qq.unsqueeze(1) * (inverse_r2.sqrt() + self.krf * r2 - self.crf)
        # Pairs beyond the cutoff have a finite r, hence finite energies and gradients: `where`
        # zeroes both, no NaN can leak in through the branch not taken.
        return torch.where(r2 <= self.cutoff * self.cutoff, lj + coulomb, 0.0).sum(0)

    def _exception_energy(self, points: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
        r2 = _squared_distances(points, self.exceptions, box)
        inverse_r2 = torch.reciprocal(r2)
        inverse_r6 = inverse_r2 * inverse_r2 * inverse_r2
        lj = (self.exception_c12.unsqueeze(1) * inverse_r6 - self.exception_c6.unsqueeze(1)) * inverse_r6
        return (lj + self.exception_qq.unsqueeze(1) * inverse_r2.sqrt()).sum(0)

    def extra_repr(self) -> str:
        text = f"method={self.method}, pairs={self.pairs.shape[0]}, exceptions={self.exceptions.shape[0]}"
        if self.use_cutoff:
            text += f", cutoff={self.cutoff}"
        if self.switching_distance is not None:
            text += f", switching_distance={self.switching_distance}"
        return text


def _lj_coefficients(sigma2, eps4) -> tuple[torch.Tensor, torch.Tensor]:
    """``c6 = 4 eps sigma^6``, ``c12 = c6 sigma^6`` (float64) from ``sigma^2`` and ``4 eps`` per pair."""
    sigma2 = np.asarray(sigma2, dtype=np.float64).reshape(-1)
    sigma6 = sigma2 * sigma2 * sigma2
    c6 = np.asarray(eps4, dtype=np.float64).reshape(-1) * sigma6
    return as_float_buffer(c6), as_float_buffer(c6 * sigma6)


def _squared_distances(points: torch.Tensor, pairs: torch.Tensor, box: torch.Tensor | None) -> torch.Tensor:
    """``|r_j - r_i|^2`` ``[K, B]`` for ``pairs`` ``[K, 2]`` from batch-last positions ``[3, N, B]`` (minimum image if ``box``)."""
    if box is None:
        delta = points.index_select(1, pairs[:, 1]) - points.index_select(1, pairs[:, 0])
        return (delta * delta).sum(0)
    dx, dy, dz = displacement_components(points, pairs[:, 0], pairs[:, 1], box)
    return dx * dx + dy * dy + dz * dz


_SUPPORTED_METHODS = ("NoCutoff", "CutoffNonPeriodic", "CutoffPeriodic", "Ewald")


def _unsupported_method_message(method: str) -> str:
    return (
        f"NonbondedForce method {method} is not supported by the torch energy; "
        "use NoCutoff, CutoffNonPeriodic, CutoffPeriodic or Ewald"
    )


def _ewald_setup(force: openmm.NonbondedForce, system: openmm.System | None, charge: np.ndarray,
                 exception_atoms, cutoff: float) -> dict:
    """Charges, OpenMM's alpha and kmax, and the exclusion pairs of an Ewald ``NonbondedForce``.

    ``UnsupportedForceError`` for a triclinic box or a net charge (OpenMM's neutralising-background
    term is not reproduced)."""
    if system is None:
        raise ValueError("NonbondedTerm.from_openmm needs the System for Ewald (its default box)")
    a, b, c = (vector.value_in_unit(openmm.unit.nanometer) for vector in system.getDefaultPeriodicBoxVectors())
    if a[1] != 0 or a[2] != 0 or b[0] != 0 or b[2] != 0 or c[0] != 0 or c[1] != 0:
        raise UnsupportedForceError("Ewald with a triclinic box is not supported by the torch energy (nor by OpenMM)")
    net_charge = float(charge.sum())
    if abs(net_charge) > 1e-6:
        raise UnsupportedForceError(
            f"Ewald for a system with net charge {net_charge:.4g} e is not supported by the torch energy"
        )
    alpha, kmax = ewald_parameters(cutoff, force.getEwaldErrorTolerance(), (a[0], b[1], c[2]))
    return {"charges": charge, "alpha": alpha, "kmax": kmax,
            "exclusions": np.asarray(exception_atoms, dtype=np.int64).reshape(-1, 2)}


def _particle_parameters(force: openmm.NonbondedForce, globals_: dict[str, float]):
    """Charges, sigmas, epsilons ``[N]`` with particle parameter offsets at the global defaults."""
    n = force.getNumParticles()
    charge, sigma, epsilon = np.zeros(n), np.zeros(n), np.zeros(n)
    for index in range(n):
        q, s, e = force.getParticleParameters(index)
        charge[index] = value_of(q, openmm.unit.elementary_charge)
        sigma[index] = value_of(s, openmm.unit.nanometer)
        epsilon[index] = value_of(e, openmm.unit.kilojoule_per_mole)
    for k in range(force.getNumParticleParameterOffsets()):
        name, index, q_scale, s_scale, e_scale = force.getParticleParameterOffset(k)
        value = _global_value(globals_, name)
        charge[index] += value * float(q_scale)
        sigma[index] += value * float(s_scale)
        epsilon[index] += value * float(e_scale)
    return charge, sigma, epsilon


def _exception_parameters(force: openmm.NonbondedForce, globals_: dict[str, float]):
    """Exception atom pairs and ``[chargeProd, sigma, epsilon, has_offset]`` (offsets applied)."""
    atoms, params = [], []
    for index in range(force.getNumExceptions()):
        i, j, qq, s, e = force.getExceptionParameters(index)
        atoms.append((int(i), int(j)))
        params.append([
            value_of(qq, openmm.unit.elementary_charge**2),
            value_of(s, openmm.unit.nanometer),
            value_of(e, openmm.unit.kilojoule_per_mole),
            False,
        ])
    for k in range(force.getNumExceptionParameterOffsets()):
        name, index, q_scale, s_scale, e_scale = force.getExceptionParameterOffset(k)
        value = _global_value(globals_, name)
        params[index][0] += value * float(q_scale)
        params[index][1] += value * float(s_scale)
        params[index][2] += value * float(e_scale)
        params[index][3] = True
    return atoms, params


def _global_value(globals_: dict[str, float], name: str) -> float:
    if name not in globals_:
        raise UnsupportedForceError(
            f"NonbondedForce parameter offset uses {name!r}, which is not a global parameter of the force"
        )
    return globals_[name]


def _switched_lj_integral(r: float, rs: float, rc: float, sigma: float) -> float:
    """NonbondedForceImpl::evalIntegral: indefinite integral of the switched LJ tail (same expression)."""
    A = 1 / (rc - rs)
    A2 = A * A
    A3 = A2 * A
    sig2 = sigma * sigma
    sig6 = sig2 * sig2 * sig2
    rs2 = rs * rs
    rs3 = rs * rs2
    r2 = r * r
    r3 = r * r2
    r4 = r * r3
    r5 = r * r4
    r6 = r * r5
    r9 = r3 * r6
    return sig6 * A3 * ((
        sig6 * (
            + rs3 * 28 * (6 * rs2 * A2 + 15 * rs * A + 10)
            - r * rs2 * 945 * (rs2 * A2 + 2 * rs * A + 1)
            + r2 * rs * 1080 * (2 * rs2 * A2 + 3 * rs * A + 1)
            - r3 * 420 * (6 * rs2 * A2 + 6 * rs * A + 1)
            + r4 * 756 * (2 * rs * A2 + A)
            - r5 * 378 * A2)
        - r6 * (
            + rs3 * 84 * (6 * rs2 * A2 + 15 * rs * A + 10)
            - r * rs2 * 3780 * (rs2 * A2 + 2 * rs * A + 1)
            + r2 * rs * 7560 * (2 * rs2 * A2 + 3 * rs * A + 1))
    ) / (252 * r9)
        - math.log(r) * 10 * (6 * rs2 * A2 + 6 * rs * A + 1)
        + r * 15 * (2 * rs * A2 + A)
        - r2 * 3 * A2
    )


def dispersion_correction_coefficient(
    sigma, epsilon, cutoff: float, switching_distance: float | None, n_particles: int
) -> float:
    """OpenMM's dispersion-correction coefficient (energy = coefficient / box volume), kJ nm^3/mol.

    A transcription of ``NonbondedForceImpl::calcDispersionCorrection``: particles grouped into
    classes by (sigma, epsilon) (parameter offsets already applied at the default global values),
    class pairs combined with Lorentz-Berthelot, averaged over ``N (N + 1) / 2`` interactions.
    """
    classes: dict[tuple[float, float], int] = {}
    for s, e in zip(np.asarray(sigma, dtype=float).tolist(), np.asarray(epsilon, dtype=float).tolist()):
        classes[(s, e)] = classes.get((s, e), 0) + 1
    ordered = sorted(classes.items())
    use_switch = switching_distance is not None
    rc, rs = float(cutoff), float(switching_distance) if use_switch else 0.0

    def switched(sig: float) -> float:
        return _switched_lj_integral(rc, rs, rc, sig) - _switched_lj_integral(rs, rs, rc, sig)

    sum1 = sum2 = sum3 = 0.0
    for (s, e), count in ordered:
        count = float(count)
        count *= (count + 1) / 2
        sigma6 = (s * s) * (s * s) * (s * s)
        sum1 += count * e * sigma6 * sigma6
        sum2 += count * e * sigma6
        if use_switch:
            sum3 += count * e * switched(s)
    for a, ((s1, e1), c1) in enumerate(ordered):
        for (s2, e2), c2 in ordered[:a]:
            s = 0.5 * (s1 + s2)
            e = math.sqrt(e1 * e2)
            count = float(c1) * float(c2)
            sigma6 = (s * s) * (s * s) * (s * s)
            sum1 += count * e * sigma6 * sigma6
            sum2 += count * e * sigma6
            if use_switch:
                sum3 += count * e * switched(s)
    n = float(n_particles)
    interactions = (n * (n + 1)) / 2
    sum1 /= interactions
    sum2 /= interactions
    sum3 /= interactions
    return 8 * n * n * math.pi * (sum1 / (9 * math.pow(rc, 9)) - sum2 / (3 * math.pow(rc, 3)) + sum3)
