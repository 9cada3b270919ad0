"""The molecular Boltzmann generator of the job: uniform prior -> spline couplings ->
truncated-normal marginals -> internal coordinates."""

from __future__ import annotations

import torch

from boltzgen.distributions import UniformInterval
from boltzgen.flows import (
    InternalCoordinateTransform,
    SequentialFlow,
    TruncatedNormalMarginals,
    ZMatrix,
    coupling_stack,
    smooth_coupling_layer,
)
from boltzgen.generator import BoltzmannGenerator
from boltzgen.job.profiles import RunProfile


#: Transformers of the coupling layers (``boltzgen run --flow``).
FLOW_KINDS = ("spline", "smooth")
#: Initial weight of the mixture part of the smooth transformers (1 - c). The library default
#: (1e-6, the identity to 1e-6) leaves the mixture's parameters with ~1e-6 gradients and its
#: logit ~14 units from the middle: ~10^4 Adam steps at lr 1e-3 before the mixture shapes the map.
#: At 0.1 the layers start within 10% of the identity (a gentle smooth staircase), the mixture acts
#: from the first step, and c reaches 1/2 after ~2 units of its logit.
SMOOTH_IDENTITY_GAP = 0.1


def build_molecular_generator(
    mdtraj_topology, train_positions: torch.Tensor, profile: RunProfile, target=None, seed: int = 0,
    flow: str = "spline",
) -> BoltzmannGenerator:
    """A generator over Cartesian configurations ``[B, 3N]`` (nm) of the molecule.

    The prior is uniform on ``[0, 1]^(3N-6)``. A stack of rational-quadratic spline couplings
    (circular on the free torsions, interval splines elsewhere) is followed by
    `TruncatedNormalMarginals`, which gives every bond, angle and unimodal torsion (the nearly
    fixed offsets of the Z-matrix's relative torsions) a normal marginal with the training data's
    mean and width, and by the Z-matrix transform, which places the atoms; bond and angle
    intervals and the marginals are fitted on ``train_positions`` ``[M, 3N]`` (nm). Global
    rotation and translation are not modelled (the energy is invariant to them), so densities
    are over the 3N-6 internal degrees of freedom.

    ``flow="smooth"`` uses smooth mixture transformers (`boltzgen.flows.smooth`, ``n_bins``
    components) instead of splines: a C-infinity density whose forces can drive MD; their
    density direction (x -> z, used by NLL and force matching) is the closed-form one, sampling
    inverts them by root finding.
    """
    if flow not in FLOW_KINDS:
        raise ValueError(f"unknown flow {flow!r}; choose one of {', '.join(FLOW_KINDS)}")
    zmatrix = ZMatrix.from_topology(mdtraj_topology)
    internal = InternalCoordinateTransform(zmatrix).fit_normalization(train_positions.double())
    with torch.no_grad():
        u_train, _ = internal.inverse(train_positions.double())
    marginals = TruncatedNormalMarginals.fit(u_train, internal.circular_mask)
    if flow == "spline":
        layer_options = {"n_bins": profile.n_bins}
    else:
        layer_options = {"layer_factory": smooth_coupling_layer, "n_components": profile.n_bins, "analytic": "inverse",
                         "identity_gap": SMOOTH_IDENTITY_GAP}
    couplings = coupling_stack(
        zmatrix.n_internal,
        marginals.coupling_circular_mask,
        n_layers=profile.n_coupling_layers,
        hidden=profile.hidden,
        seed=seed,
        **layer_options,
    )
    prior = UniformInterval(0.0, 1.0, dim=zmatrix.n_internal)
    return BoltzmannGenerator(prior, SequentialFlow([couplings, marginals, internal]), target)


def internal_coordinate_transform(generator: BoltzmannGenerator) -> InternalCoordinateTransform:
    """The internal-coordinate layer (the last layer) of a generator built here."""
    layer = generator.flow[-1]
    if not isinstance(layer, InternalCoordinateTransform):
        raise TypeError("this generator was not built by build_molecular_generator")
    return layer


def in_support(generator: BoltzmannGenerator, x: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B]``: configurations whose internal coordinates lie inside the model's box.

    Outside it the generator's density is zero; callers drop and count such configurations
    instead of asking the spline layers for a density there.
    """
    transform = internal_coordinate_transform(generator)
    with torch.no_grad():
        u, _ = transform.inverse(x.to(transform.ic_low.device, torch.get_default_dtype()))
    return ~transform.out_of_bounds(u).cpu()
