"""Shared helpers of the torch force-term tests (``from force_term_checks import ...``).

Each force term is checked against OpenMM's Reference platform (double precision) on a System that
holds only that force. Units are OpenMM's: positions and box vectors in nm, masses in amu,
energies in kJ/mol, forces in kJ/mol/nm. Shapes: ``B`` frames (configurations) of ``N`` particles.

- :func:`single_torch_thread`: autouse, module-scoped fixture; import it into a test module to use it.
- :func:`single_force_system`, :func:`reference_context`, :func:`openmm_reference`: the OpenMM side.
- :func:`torch_evaluate`: a `ForceTerm`'s energies and forces (``-dE/dx`` by autograd).
- :func:`relative_errors`, :func:`check_term`: compare the two.
- :func:`perturbed`, :func:`perturbed_two_scales`: noisy frames around one configuration.
"""

from __future__ import annotations

import copy

import numpy as np
import openmm
import pytest
import torch

KJ = openmm.unit.kilojoule_per_mole
KJ_NM = KJ / openmm.unit.nanometer


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """One intra-op thread: these tensors are tiny, and on a busy 2-core machine torch's parallel
    kernels (index_add, the backward of index_select) can wait milliseconds per call for a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _vec3s(box) -> list:
    """Box vectors ``[3, 3]`` nm (rows a, b, c) as three ``openmm.Vec3``."""
    return [openmm.Vec3(*row) for row in np.asarray(box, dtype=float).tolist()]


def single_force_system(force: openmm.Force, masses, box=None) -> openmm.System:
    """A System holding only a deep copy of ``force``.

    ``masses``: one mass (amu) per particle, ``[N]``; ``box``: default periodic box vectors
    ``[3, 3]`` nm (rows), or None to keep OpenMM's default.
    """
    system = openmm.System()
    for mass in masses:
        system.addParticle(mass)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*_vec3s(box))
    system.addForce(copy.deepcopy(force))
    return system


def reference_context(system: openmm.System, box=None) -> openmm.Context:
    """An OpenMM Context on the Reference platform (double precision); ``box`` ``[3, 3]`` nm if given."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    if box is not None:
        context.setPeriodicBoxVectors(*_vec3s(box))
    return context


def openmm_reference(system: openmm.System, frames: np.ndarray, box=None, parameters: dict | None = None):
    """OpenMM Reference energies ``[B]`` kJ/mol and forces ``[B, N, 3]`` kJ/mol/nm, float64 numpy.

    ``frames``: positions ``[B, N, 3]`` nm; ``box``: periodic box vectors ``[3, 3]`` nm, or None for
    the System's default; ``parameters``: global parameter values set with ``Context.setParameter``.
    """
    context = reference_context(system, box)
    for name, value in (parameters or {}).items():
        context.setParameter(name, value)
    energies, forces = [], []
    for frame in frames:
        context.setPositions(frame)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(KJ))
        forces.append(state.getForces(asNumpy=True).value_in_unit(KJ_NM))
    del context
    return np.array(energies), np.array(forces)


def torch_evaluate(term, frames: np.ndarray, box=None, dtype=torch.float64, finite_gradient: bool = True):
    """Energies ``[B]`` kJ/mol and forces ``-dE/dx`` ``[B, N, 3]`` kJ/mol/nm of a term, float64 numpy.

    ``frames``: positions ``[B, N, 3]`` nm; ``box``: ``[3, 3]`` nm or None. The term is moved to
    ``dtype`` in place and evaluated in it; the energy must have shape ``[B]`` and that dtype, and
    (unless ``finite_gradient=False``) the gradient must be finite.
    """
    term = term.to(dtype=dtype)
    positions = torch.tensor(frames, dtype=dtype, requires_grad=True)
    box_t = None if box is None else torch.tensor(np.asarray(box), dtype=dtype)
    energy = term(positions, box_t)
    assert energy.shape == (len(frames),) and energy.dtype == dtype
    (gradient,) = torch.autograd.grad(energy.sum(), positions)
    if finite_gradient:
        assert torch.isfinite(gradient).all()
    return energy.detach().double().numpy(), -gradient.double().numpy()


def relative_errors(energy, forces, ref_energy, ref_forces):
    """Max relative energy error (per frame, floor 1 kJ/mol) and max force error over the frame's largest force.

    ``energy``, ``ref_energy``: ``[B]`` kJ/mol; ``forces``, ``ref_forces``: ``[B, N, 3]`` kJ/mol/nm.
    """
    energy_error = np.max(np.abs(energy - ref_energy) / np.maximum(np.abs(ref_energy), 1.0))
    scale = np.maximum(np.abs(ref_forces).max(axis=(1, 2)), 1.0)
    force_error = np.max(np.abs(forces - ref_forces).max(axis=(1, 2)) / scale)
    return energy_error, force_error


def check_term(term_class, force, masses, frames, box=None, rtol=1e-6, dtype=torch.float64):
    """``term_class.from_openmm(force)`` matches OpenMM to ``rtol`` (as :func:`relative_errors`).

    ``masses`` ``[N]`` amu, ``frames`` ``[B, N, 3]`` nm, ``box`` ``[3, 3]`` nm or None; the term is
    evaluated in ``dtype``. Returns the (energy, force) relative errors.
    """
    system = single_force_system(force, masses, box)
    ref_energy, ref_forces = openmm_reference(system, frames, box)
    term = term_class.from_openmm(system.getForce(0), system)
    energy, forces = torch_evaluate(term, frames, box, dtype)
    energy_error, force_error = relative_errors(energy, forces, ref_energy, ref_forces)
    name = type(force).__name__
    assert energy_error < rtol, (name, energy_error, ref_energy, energy)
    assert force_error < rtol, (name, force_error)
    return energy_error, force_error


def perturbed(positions: np.ndarray, batch: int, sigma: float, seed: int) -> np.ndarray:
    """``batch`` frames ``[batch, N, 3]`` nm: frame 0 is ``positions`` ``[N, 3]``, the others add
    Gaussian noise of standard deviation ``sigma`` nm."""
    rng = np.random.default_rng(seed)
    frames = np.repeat(np.asarray(positions, dtype=np.float64)[None], batch, axis=0)
    frames[1:] += rng.normal(scale=sigma, size=frames[1:].shape)
    return frames


def perturbed_two_scales(positions, seed: int, small: int = 3, large: int = 3) -> np.ndarray:
    """Frames ``[1 + small + large, N, 3]`` nm near ``positions`` ``[N, 3]``: the positions themselves,
    ``small`` with 0.01 nm noise and ``large`` with 0.1 nm (high-energy) noise."""
    rng = np.random.default_rng(seed)
    base = np.asarray(positions, dtype=np.float64)[None]
    return np.concatenate(
        [
            base,
            base + rng.normal(scale=0.01, size=(small,) + base.shape[1:]),
            base + rng.normal(scale=0.1, size=(large,) + base.shape[1:]),
        ]
    )
