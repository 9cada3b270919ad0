"""Flow layers: the `Flow` contract, compositions, and the layers built on it."""

from boltzgen.flows.affine import AffineTransformer, affine_coupling_layer
from boltzgen.flows.base import Flow, InverseFlow, SequentialFlow
from boltzgen.flows.conditioners import ConditionerFeatures, FixedPrecisionConditioner, MLPConditioner
from boltzgen.flows.coupling import CouplingLayer, ElementwiseTransformer
from boltzgen.flows.internal_coordinates import InternalCoordinateTransform
from boltzgen.flows.marginal_gaussian import TruncatedNormalMarginals
from boltzgen.flows.mobius import (
    MobiusCircleTransformer,
    QuaternionMobiusTransformer,
    double_mobius_s3,
    double_mobius_s3_inverse,
    mobius_circle,
)
from boltzgen.flows.quaternions import (
    SignInvariantConditioner,
    quaternion_to_rotation_matrix,
    rotation_matrix_to_quaternion,
    sign_invariant_features,
)
from boltzgen.flows.rigid_flow import (
    MoleculeAttentionConditioner,
    RigidCoordinateLayer,
    RigidLatentLayout,
    lattice_rigid_prior,
    rigid_coupling_flow,
    rigid_generator,
    uniform_rigid_prior,
)
from boltzgen.flows.root_finding import invert_monotone, solve_monotone
from boltzgen.flows.shifts import CircularShift
from boltzgen.flows.smooth import (
    SmoothMixtureTransformer,
    circular_smooth_mixture,
    interval_smooth_mixture,
    smooth_coupling_layer,
    smooth_coupling_stack,
)
from boltzgen.flows.stochastic import (
    MetropolisBlock,
    OverdampedLangevinBlock,
    StochasticBlock,
    UnderdampedLangevinBlock,
    annealed_energies,
    contains_stochastic_blocks,
)
from boltzgen.flows.tailed_spline import LinearTailSpline
from boltzgen.flows.spline_stack import coupling_stack, spline_coupling_layer
from boltzgen.flows.splines import RationalQuadraticSpline, circular_spline, interval_spline
from boltzgen.flows.zmatrix import ZMatrix

__all__ = [
    "Flow",
    "InverseFlow",
    "SequentialFlow",
    # coupling layers and rational-quadratic splines
    "CircularShift",
    "ConditionerFeatures",
    "FixedPrecisionConditioner",
    "CouplingLayer",
    "ElementwiseTransformer",
    "MLPConditioner",
    "RationalQuadraticSpline",
    "circular_spline",
    "coupling_stack",
    "interval_spline",
    "spline_coupling_layer",
    # smooth flows (C-infinity densities, root-finding inverse)
    "SmoothMixtureTransformer",
    "circular_smooth_mixture",
    "interval_smooth_mixture",
    "invert_monotone",
    "smooth_coupling_layer",
    "smooth_coupling_stack",
    "solve_monotone",
    # flows on the real line: affine (RealNVP) couplings, linear-tail splines
    "AffineTransformer",
    "LinearTailSpline",
    "affine_coupling_layer",
    # stochastic blocks (stochastic normalizing flows)
    "MetropolisBlock",
    "OverdampedLangevinBlock",
    "StochasticBlock",
    "UnderdampedLangevinBlock",
    "annealed_energies",
    "contains_stochastic_blocks",
    # internal coordinates (Z-matrix) for molecules
    "InternalCoordinateTransform",
    "TruncatedNormalMarginals",
    "ZMatrix",
    # rigid bodies: Möbius maps on the circle and on S^3 (quaternions)
    "MobiusCircleTransformer",
    "QuaternionMobiusTransformer",
    "SignInvariantConditioner",
    "double_mobius_s3",
    "double_mobius_s3_inverse",
    "mobius_circle",
    "quaternion_to_rotation_matrix",
    "rotation_matrix_to_quaternion",
    "sign_invariant_features",
    "MoleculeAttentionConditioner",
    "RigidCoordinateLayer",
    "RigidLatentLayout",
    "rigid_coupling_flow",
    "lattice_rigid_prior",
    "rigid_generator",
    "uniform_rigid_prior",
]
