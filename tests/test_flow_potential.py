"""The learned potential -log q of a smooth flow as an energy: forces vs finite differences, and
velocity Verlet on it conserves energy to second order in the time step."""

import pytest
import torch

from boltzgen.distributions import UniformInterval
from boltzgen.dynamics import VelocityVerlet, simulate
from boltzgen.dynamics.kernels import energy_and_force
from boltzgen.flows import SequentialFlow, smooth_coupling_stack
from boltzgen.generator import BoltzmannGenerator
from boltzgen.sampling import FlowEnergy

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def smooth_generator():
    torch.manual_seed(0)
    circular = [True, False, True, False]
    # analytic="inverse": the density direction (x -> z) is closed form, as in the job
    flow = smooth_coupling_stack(4, circular, n_layers=2, hidden=(16,), n_components=4, identity_gap=0.3,
                                 analytic="inverse").double()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    prior = UniformInterval(torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    return BoltzmannGenerator(prior, SequentialFlow([flow]))


def test_flow_potential_forces_match_finite_differences(smooth_generator):
    energy = FlowEnergy(smooth_generator)
    x = torch.rand(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    u, force = energy_and_force(energy, x)
    h = 1e-6
    for d in range(4):
        step = torch.zeros_like(x)
        step[:, d] = h
        numeric = -(energy.energy(x + step) - energy.energy(x - step)) / (2 * h)
        torch.testing.assert_close(force[:, d], numeric, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(u).all()


def test_verlet_on_the_smooth_flow_potential_conserves_energy_to_second_order(smooth_generator):
    # a harmonic wall keeps the particle inside the box where the flow density lives
    class Confined:
        temperature = None

        def energy(self, x):
            return FlowEnergy(smooth_generator).energy(x) + 50.0 * ((x - 0.5) ** 2).sum(-1)

    x0 = torch.full((3, 4), 0.5, dtype=torch.float64) + 0.05 * torch.randn(3, 4, dtype=torch.float64,
                                                                           generator=torch.Generator().manual_seed(2))
    v0 = 0.5 * torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    fluctuation = []
    for dt in (0.004, 0.002):
        integrator = VelocityVerlet(Confined(), dt)
        _, record = simulate(integrator, integrator.initial_state(x0, v0), int(0.8 / dt), report_interval=5)
        assert not record.failed.any()
        total = record.total
        fluctuation.append(float((total.max(0).values - total.min(0).values).max()))
    # a smooth potential: Verlet's energy error scales as dt^2 (a spline's would not, at its knots)
    assert fluctuation[0] / fluctuation[1] == pytest.approx(4.0, rel=0.25)
