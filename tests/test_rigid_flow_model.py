"""Rigid-body flow model: latent layout, coupling blocks, the Cartesian layer's measure, generators.

Checks (float64): invertibility and tangent-space log-dets of the coupling flow (MLP and attention
conditioners, spline and Möbius positions), antipodal equivariance of the rotation couplings,
periodicity of the position couplings, the measure convention of `RigidCoordinateLayer` (exact
log Z of the tetrahedron in a field by importance sampling; exact weights for a zero energy on a
periodic box), reverse-KL training on the tetrahedron, and finite energies for ice XI.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from boltzgen import systems
from boltzgen.distributions import NormalDistribution, UniformS3, UniformTorus
from boltzgen.distributions.product import ProductDistribution
from boltzgen.energy import Energy, TorchEnergy
from boltzgen.flows import CircularShift, CouplingLayer, FixedPrecisionConditioner, SequentialFlow
from boltzgen.flows.mobius import QuaternionMobiusTransformer
from boltzgen.flows.rigid_flow import (
    MoleculeAttentionConditioner,
    RigidCoordinateLayer,
    RigidLatentLayout,
    lattice_rigid_prior,
    rigid_coupling_flow,
    rigid_generator,
    uniform_rigid_prior,
)
from boltzgen.generator import BoltzmannGenerator
from boltzgen.rigid import RigidBodySystem
from boltzgen.sampling.weights import ess
from boltzgen.systems.rigid import tetrahedron_log_partition_function
from boltzgen.train.losses import reverse_kl_loss
from flow_checks import assert_invertible, perturb_parameters, rigid_tangent_log_det

F64 = torch.float64
SMALL = dict(hidden=(24,), attention_dim=16, attention_heads=2, attention_layers=1, n_bins=4)


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(11)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def tetrahedron():
    return systems.load("tetrahedron_in_field")


@functools.lru_cache(maxsize=None)
def ice_rf():
    return systems.load("ice_xi_tip4pew_16", electrostatics="reaction_field")


@functools.lru_cache(maxsize=None)
def three_waters() -> RigidBodySystem:
    """K = 3 TIP4P/Ew waters (the ice template) in the ice box: a small periodic rigid system."""
    ice = RigidBodySystem.from_molecular_system(ice_rf())
    return RigidBodySystem(ice.template, np.arange(12).reshape(3, 4), ice.box.numpy())


class ZeroEnergy(Energy):
    """u = 0 on ``[B, D]`` (every configuration equally likely)."""

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return self.check_input(x).new_zeros(x.shape[0])


class RawConditioner(torch.nn.Module):
    """A linear conditioner on the raw conditioning inputs (quaternions not sign-invariant)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = torch.nn.Linear(n_in, n_out, dtype=F64)

    def forward(self, x: torch.Tensor, context=None) -> torch.Tensor:
        return self.linear(x)


def small_flow(k: int, conditioner: str = "mlp", positions: str = "spline", n_blocks: int = 2,
               conditioner_dtype=None) -> SequentialFlow:
    """A perturbed (far from identity) float64 coupling flow for K molecules (conditioner networks in
    ``conditioner_dtype`` if given)."""
    flow = rigid_coupling_flow(k, n_blocks, conditioner=conditioner, position_transformer=positions,
                               conditioner_dtype=conditioner_dtype, **SMALL)
    return perturb_parameters(flow.double(), scale=0.1, seed=3)


def wrapped(a: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a + 0.5, 1.0) - 0.5


# ------------------------------------------------------------------ product distribution, layout


def test_product_distribution_sums_log_probs_and_concatenates_samples():
    torus, sphere, normal = UniformTorus(2, period=3.0), UniformS3(2), NormalDistribution(3, mean=1.0, std=2.0)
    product = ProductDistribution([torus, sphere, normal]).double()
    assert product.dim == 13 and product.block_sizes == (2, 8, 3)
    x = product.sample(200, generator=torch.Generator().manual_seed(0))
    assert x.shape == (200, 13) and x.dtype == F64
    assert ((x[:, :2] >= 0) & (x[:, :2] < 3)).all()
    torch.testing.assert_close(x[:, 2:10].reshape(200, 2, 4).norm(dim=-1), torch.ones(200, 2, dtype=F64))
    assert x[:, 10:].mean().item() == pytest.approx(1.0, abs=0.5)  # the normal block, not uniform
    expected = torus.log_prob(x[:, :2]) + sphere.log_prob(x[:, 2:10]) + normal.log_prob(x[:, 10:])
    torch.testing.assert_close(product.log_prob(x), expected, rtol=0, atol=1e-12)
    assert product.log_prob(x)[0].item() == pytest.approx(
        -2 * math.log(3.0) - 2 * math.log(2 * math.pi**2) + float(normal.log_prob(x[:1, 10:])[0]), abs=1e-12
    )
    assert torch.equal(product.sample(5, generator=torch.Generator().manual_seed(1)),
                       product.sample(5, generator=torch.Generator().manual_seed(1)))
    off = x[:3].clone()
    off[:, 2:6] *= 2.0  # a quaternion off the sphere: zero density
    assert torch.isneginf(product.log_prob(off)).all()
    assert [b.shape[1] for b in product.split(x)] == [2, 8, 3]
    with pytest.raises(ValueError):
        ProductDistribution([])
    with pytest.raises(TypeError):
        ProductDistribution([torus, torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError):
        product.log_prob(x[:, :12])


def test_latent_layout_split_join_and_indices():
    layout = RigidLatentLayout(3)
    assert (layout.dim, layout.n_position_dims, layout.n_degrees_of_freedom) == (18, 6, 15)
    z = torch.randn(4, 18, dtype=F64)
    positions, quaternions = layout.split(z)
    assert positions.shape == (4, 2, 3) and quaternions.shape == (4, 3, 4)
    assert positions[1, 1, 2] == z[1, layout.position_index(2, 2)] and layout.position_index(2, 2) == 5
    assert torch.equal(quaternions[2, 1], z[2, layout.quaternion_indices(1)])
    assert torch.equal(layout.join(positions, quaternions), z)
    assert layout.circular_mask().tolist() == [True] * 6 + [False] * 12
    assert RigidLatentLayout(1).dim == 4 and RigidLatentLayout(1).n_position_dims == 0
    with pytest.raises(ValueError):
        layout.position_index(0, 0)  # molecule 0 has no free position
    with pytest.raises(ValueError):
        layout.split(z[:, :17])


# ------------------------------------------------------------------ coupling flow


@pytest.mark.parametrize("conditioner,positions,conditioner_dtype",
                         [("mlp", "spline", None), ("attention", "mobius", None), ("attention", "spline", torch.float32)])
def test_coupling_flow_is_invertible_with_the_tangent_space_log_det(conditioner, positions, conditioner_dtype):
    layout = RigidLatentLayout(3)
    flow = small_flow(3, conditioner, positions, conditioner_dtype=conditioner_dtype)
    kinds = [type(layer) for layer in flow.layers]
    assert kinds.count(CouplingLayer) == 8 and kinds.count(CircularShift) == (2 if positions == "spline" else 0)
    network = flow[0].conditioner
    if conditioner_dtype is not None:  # float32 networks inside the float64 flow, kept through .double()
        assert isinstance(network, FixedPrecisionConditioner)
        assert {p.dtype for p in flow.parameters()} == {torch.float32}
        network = network.network
    if conditioner == "attention":
        assert isinstance(network, MoleculeAttentionConditioner)
    z = uniform_rigid_prior(3).double().sample(6, generator=torch.Generator().manual_seed(2))
    y, logdet = assert_invertible(flow, z, atol=1e-10, circular_mask=layout.circular_mask())
    assert ((y[:, :6] >= 0) & (y[:, :6] < 1)).all()
    torch.testing.assert_close(layout.split(y)[1].norm(dim=-1), torch.ones(6, 3, dtype=F64))
    assert logdet.abs().max() > 0.1  # perturbed: far from volume preserving
    # the autograd reference differentiates through float32 conditioners too (rounding ~1e-8 in
    # its off-diagonal blocks); the flow's own log-det is analytic in float64
    atol = 1e-9 if conditioner_dtype is None else 1e-7
    torch.testing.assert_close(rigid_tangent_log_det(flow, z, layout), logdet, rtol=0, atol=atol)


def test_coupling_flow_starts_near_the_identity():
    flow = rigid_coupling_flow(3, 2, **SMALL).double()
    z = uniform_rigid_prior(3).double().sample(64)
    y, logdet = flow(z)
    shifts = sum(layer.offset.double() for layer in flow.layers if isinstance(layer, CircularShift))
    # position layers: the identity (to the float32 rounding of the identity parameters)
    assert wrapped(y[:, :6] - z[:, :6] - shifts).abs().max() < 1e-6
    assert 1e-4 < (y[:, 6:] - z[:, 6:]).abs().max() < 0.2  # rotation layers: near, not at, identity
    assert logdet.abs().max() < 0.3
    single = rigid_coupling_flow(1, 3, **SMALL)  # K = 1: only rotation layers, constant parameters
    assert len(single) == 3 and all(layer.conditioning.numel() == 0 for layer in single.layers)


@pytest.mark.parametrize("conditioner", ["mlp", "attention"])
def test_rotation_couplings_are_antipodally_equivariant(conditioner):
    layout = RigidLatentLayout(3)
    flow = small_flow(3, conditioner)
    z = uniform_rigid_prior(3).double().sample(5)
    rotation_layers = [
        layer for layer in flow.layers
        if isinstance(getattr(layer, "transformer", None), QuaternionMobiusTransformer)
    ]
    assert len(rotation_layers) == 4
    for layer in [*rotation_layers, flow]:
        with torch.no_grad():
            y, logdet = layer(z)
            for k in range(3):
                flipped = z.clone()
                flipped[:, layout.quaternion_indices(k)] *= -1
                y_flipped, logdet_flipped = layer(flipped)
                expected = y.clone()
                expected[:, layout.quaternion_indices(k)] *= -1
                torch.testing.assert_close(y_flipped, expected, rtol=0, atol=1e-12)
                torch.testing.assert_close(logdet_flipped, logdet, rtol=0, atol=1e-12)
    # the check can fail: a conditioner that sees raw quaternions breaks the equivariance
    raw = CouplingLayer(layout.dim, layout.quaternion_indices(0), RawConditioner(14, 4),
                        QuaternionMobiusTransformer(1))
    flipped = z.clone()
    flipped[:, layout.quaternion_indices(1)] *= -1
    assert (raw(flipped)[0] - raw(z)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("conditioner,positions", [("mlp", "spline"), ("attention", "spline"), ("mlp", "mobius")])
def test_position_couplings_are_periodic(conditioner, positions):
    flow = small_flow(3, conditioner, positions)
    z = uniform_rigid_prior(3).double().sample(5)
    turns = torch.randint(-2, 3, (5, 6)).to(F64)
    moved = z.clone()
    moved[:, :6] += turns
    position_layers = [l for l in flow.layers if isinstance(l, CouplingLayer) and l.transformed.max() < 6]
    assert len(position_layers) == 4
    for layer in [*position_layers, flow]:
        with torch.no_grad():
            y, logdet = layer(z)
            y_moved, logdet_moved = layer(moved)
        assert wrapped(y_moved[:, :6] - y[:, :6]).abs().max() < 1e-10
        torch.testing.assert_close(y_moved[:, 6:], y[:, 6:], rtol=0, atol=1e-10)
        torch.testing.assert_close(logdet_moved, logdet, rtol=0, atol=1e-10)


# ------------------------------------------------------------------ the Cartesian layer and its measure


def test_rigid_coordinate_layer_round_trip_and_sign_invariant_density():
    rigid = three_waters()
    layer = RigidCoordinateLayer(rigid)
    volume = float(torch.prod(rigid.box))
    assert layer.log_det_constant == pytest.approx(3 * math.log(volume) + 3 * math.log(4.0))
    assert RigidCoordinateLayer(rigid, "flow").log_det_constant == pytest.approx(2 * math.log(volume))
    z = uniform_rigid_prior(3).double().sample(8)
    x, logdet = layer(z)
    assert x.shape == (8, 36) and torch.equal(logdet, torch.full((8,), layer.log_det_constant, dtype=F64))
    z_back, logdet_back = layer.inverse(x)
    torch.testing.assert_close(z_back[:, :6], z[:, :6], rtol=0, atol=1e-12)
    q, q_back = z[:, 6:].reshape(8, 3, 4), z_back[:, 6:].reshape(8, 3, 4)
    assert (q_back[..., 0] >= 0).all()  # canonical hemisphere
    torch.testing.assert_close(q_back, q * torch.sign(q[..., :1]), rtol=0, atol=1e-12)
    torch.testing.assert_close(logdet_back, -logdet)
    # a generator's density at its own samples (forward, any sign) equals log_prob through the
    # canonical-sign inverse: the model density is even in every quaternion
    generator = rigid_generator(rigid, None, n_blocks=2, **SMALL).double()
    perturb_parameters(generator.flow, scale=0.1, seed=4)
    with torch.no_grad():
        x, log_q = generator.sample_with_log_prob(16)
        assert (generator.flow[0](generator.prior.sample(16))[0][:, 6::4] < 0).any()
        torch.testing.assert_close(generator.log_prob(x), log_q, rtol=0, atol=1e-9)
    with pytest.raises(ValueError):
        RigidCoordinateLayer(rigid, measure="lebesgue")
    with pytest.raises(ValueError):
        RigidCoordinateLayer(RigidBodySystem(rigid.template, np.arange(12).reshape(3, 4)))  # no box


def test_zero_energy_weights_give_the_exact_rigid_volume():
    """u = 0: Z = (V 8 pi^2)^K exactly (every importance weight is that number)."""
    rigid = three_waters()
    volume = float(torch.prod(rigid.box))
    for measure, expected in [
        ("haar", 3 * math.log(volume * 8 * math.pi**2)),
        ("flow", 2 * math.log(volume) + 3 * math.log(2 * math.pi**2)),
        ("cartesian", 3 * math.log(volume * 8 * math.pi**2) + 3 * rigid.template.log_cartesian_volume_factor()),
    ]:
        layer = RigidCoordinateLayer(rigid, measure)
        generator = BoltzmannGenerator(uniform_rigid_prior(3).double(), layer, ZeroEnergy(36))
        _, log_w = generator.sample_with_log_weights(32)
        torch.testing.assert_close(log_w, torch.full_like(log_w, expected), rtol=0, atol=1e-10)
    assert 3 * math.log(volume * 8 * math.pi**2) - (2 * math.log(volume) + 3 * math.log(2 * math.pi**2)) == (
        pytest.approx(rigid.log_volume_constant())
    )


def test_lattice_prior_is_peaked_at_the_reference_and_exactly_normalised():
    """The Gaussian-around-lattice prior: its mode is the reference structure, and with u = 0 the
    importance weights of a generator with it still estimate the exact volume (V 8 pi^2)^K."""
    rigid = three_waters()
    reference = ice_rf().positions[:12]
    layer = RigidCoordinateLayer(rigid).double()
    prior = lattice_rigid_prior(rigid, reference, position_std=0.02, rotation_std=0.1).double()
    z_ref, _ = layer.inverse(torch.as_tensor(reference, dtype=F64).reshape(1, -1))
    z = prior.sample(2000, generator=torch.Generator().manual_seed(1))
    assert float(prior.log_prob(z).max()) < float(prior.log_prob(z_ref)[0])
    # positions of molecules 1, 2 relative to molecule 0: 0.02 nm per axis around the reference's
    relative = rigid.from_cartesian(layer(z)[0]).positions[:, 1:]
    expected = rigid.from_cartesian(torch.as_tensor(reference, dtype=F64).reshape(1, -1)).positions[:, 1:]
    rms = float(rigid.minimum_image(relative - expected).square().mean().sqrt())
    assert rms == pytest.approx(0.02, rel=0.05)
    broad = lattice_rigid_prior(rigid, reference, position_std=0.15, rotation_std=1.0).double()
    generator = BoltzmannGenerator(broad, layer, ZeroEnergy(36))
    torch.manual_seed(5)
    _, log_w = generator.sample_with_log_weights(40_000)
    w = torch.exp(log_w - log_w.max())
    estimate = float(torch.log(w.mean()) + log_w.max())
    error = float(w.std() / w.mean()) / math.sqrt(len(w))
    assert abs(estimate - 3 * math.log(float(torch.prod(rigid.box)) * 8 * math.pi**2)) < 4 * error + 1e-3
    with pytest.raises(ValueError, match="position_std"):
        lattice_rigid_prior(rigid, reference, position_std=0.0)
    with pytest.raises(ValueError, match="rotation_std"):
        lattice_rigid_prior(rigid, reference, rotation_std=-0.1)
    with pytest.raises(ValueError, match="reference"):
        rigid_generator(rigid, prior="lattice")
    lattice_generator = rigid_generator(ice_rf(), prior="lattice", n_blocks=1, **SMALL)
    assert lattice_generator.prior.dim == RigidLatentLayout(16).dim


def test_importance_sampling_recovers_the_exact_tetrahedron_partition_function():
    """Uniform S^3 prior, no flow layers: IS estimates log Z over SO(3) with Haar 8 pi^2."""
    molecular = tetrahedron()
    rigid = RigidBodySystem.from_molecular_system(molecular)
    energy = TorchEnergy.from_openmm(molecular.openmm_system, molecular.temperature, dtype=F64)
    layer = RigidCoordinateLayer(rigid)
    assert layer.log_det_constant == pytest.approx(math.log(4.0))  # K = 1, not periodic
    generator = BoltzmannGenerator(uniform_rigid_prior(1).double(), layer, energy)
    torch.manual_seed(7)
    _, log_w = generator.sample_with_log_weights(20_000)
    assert torch.isfinite(log_w).all()
    n = len(log_w)
    estimate = float(torch.logsumexp(log_w, 0)) - math.log(n)
    w = torch.exp(log_w - log_w.max())
    std_error = float((w / w.mean()).std() / math.sqrt(n))  # delta method for log of the mean
    assert std_error < 0.1
    exact = tetrahedron_log_partition_function()
    assert abs(estimate - exact) < 5 * std_error + 1e-3, (estimate, exact, std_error)
    assert abs(estimate - math.log(4.0) - exact) > 10 * std_error  # the S^3 -> Haar factor is resolved
    # measure="flow" estimates Z_flow, and log Z = log Z_flow + log_volume_constant()
    flow_generator = BoltzmannGenerator(uniform_rigid_prior(1).double(), RigidCoordinateLayer(rigid, "flow"), energy)
    x = generator.sample(4)
    torch.testing.assert_close(
        flow_generator.log_prob(x) - generator.log_prob(x), torch.full((4,), rigid.log_volume_constant(), dtype=F64)
    )


# ------------------------------------------------------------------ training and ice


def test_reverse_kl_training_on_the_tetrahedron_lowers_the_loss_and_raises_the_ess():
    molecular = tetrahedron()
    energy = TorchEnergy.from_openmm(molecular.openmm_system, molecular.temperature, dtype=F64)
    generator = rigid_generator(molecular, energy, n_blocks=4, seed=1).double()

    def evaluate() -> tuple[float, float, float]:
        """(reverse-KL loss E[-log w], ESS, IS estimate of log Z) on 4000 fresh samples."""
        torch.manual_seed(123)
        _, log_w = generator.sample_with_log_weights(4000)
        return float(-log_w.mean()), ess(log_w), float(torch.logsumexp(log_w, 0)) - math.log(len(log_w))

    loss_before, ess_before, _ = evaluate()
    assert ess_before < 0.05  # the near-identity flow is about the uniform prior (ESS ~ 1/kappa)
    optimizer = torch.optim.Adam(generator.parameters(), lr=0.05)
    torch.manual_seed(0)
    for _ in range(60):
        optimizer.zero_grad()
        result = reverse_kl_loss(generator, 256)
        result.loss.backward()
        optimizer.step()
    loss_after, ess_after, log_z = evaluate()
    assert loss_after < loss_before - 20, (loss_before, loss_after)  # about -4 -> -49.6
    assert ess_after > 0.3, (ess_before, ess_after)  # about 0.02 -> 0.7
    # E_q[-log w] = KL(q || p) - log Z >= -log Z, and the trained weights still estimate log Z
    exact = tetrahedron_log_partition_function()
    assert loss_after > -exact
    assert log_z == pytest.approx(exact, abs=0.05)


@pytest.mark.parametrize("conditioner", ["mlp", "attention"])
def test_ice_rigid_generator_gives_finite_energies(conditioner):
    molecular = ice_rf()
    energy = TorchEnergy.from_openmm(molecular.openmm_system, molecular.temperature, dtype=F64)
    generator = rigid_generator(molecular, energy, n_blocks=1, conditioner=conditioner, **SMALL).double()
    layer = generator.flow[1]
    assert generator.prior.dim == 3 * 15 + 4 * 16 and layer.layout.n_molecules == 16
    x, log_w, u = generator.sample_with_log_weights(8, return_energies=True)
    assert x.shape == (8, 3 * 64)
    assert torch.isfinite(u).all() and torch.isfinite(log_w).all()
    # the lattice goes through the layer unchanged (up to the removed translation)
    reference = torch.as_tensor(molecular.positions, dtype=F64).reshape(1, -1)
    z, _ = layer.inverse(reference)
    back, _ = layer(z)
    torch.testing.assert_close(energy.energy(back), energy.energy(reference), rtol=1e-9, atol=1e-6)
    with pytest.raises(ValueError):
        rigid_generator(molecular, TorchEnergy.from_openmm(tetrahedron().openmm_system, 100.0))
