"""Rigid-body flows: coupling flows on (torus x (S^3)^K) and the map to Cartesian coordinates.

Rigid-body flows (Köhler, Invernizzi, de Haan, Noé 2023; METHODS §4) model K rigid molecules by
their positions on the torus of the periodic box and their orientations as unit quaternions.
The global translation is removed (molecule 0's reference point is the origin, see
`boltzgen.rigid`), which leaves ``3(K-1) + 3K`` degrees of freedom.

**Layout** (:class:`RigidLatentLayout`): ``z [B, 3(K-1) + 4K]`` = the normalised positions of
molecules ``1 .. K-1`` (fractions of the box edges, in ``[0, 1)^3``, periodic; molecule ``k``'s
``(x, y, z)`` in columns ``3(k-1) .. 3(k-1)+2``) followed by the K unit quaternions
(``(w, x, y, z)``, quaternion ``k`` in columns ``3(K-1) + 4k .. 3(K-1) + 4k + 3``).

**Coupling flow** (:func:`rigid_coupling_flow`): blocks alternating

- position couplings: circular RQ splines (or circle Möbius maps) on a checkerboard half of the
  ``(molecule, axis)`` coordinates, conditioned on the other coordinates (as ``cos, sin``) and
  on *all* quaternions through their sign-invariant products ``q_i q_j``;
- rotation couplings: the double Möbius map of S^3
  (:class:`~boltzgen.flows.mobius.QuaternionMobiusTransformer`) on half of the molecules'
  quaternions, conditioned on all positions and the other quaternions' sign-invariant features.

Every conditioner sees quaternions only through ``q_i q_j`` and the double Möbius map is odd, so
the flow is *antipodally equivariant*: flipping the sign of an input quaternion flips the sign of
that output quaternion only and leaves everything else (other outputs, log-det) unchanged. The
pushed-forward density on (S^3)^K is therefore even in every quaternion when the prior is (the
uniform prior is), i.e. it is a density on SO(3)^K. Conditioners are either an MLP over the
flattened features (default) or a small transformer encoder over molecule tokens
(:class:`MoleculeAttentionConditioner`). Position layers start as the identity, rotation layers
near it (the double Möbius has zero gradient at the identity, see `boltzgen.flows.mobius`).

**Coordinates and measure** (:class:`RigidCoordinateLayer`): ``z -> x [B, 3N]`` nm through
`RigidBodySystem.to_cartesian` (positions times the box edges; molecule 0 at the origin). The
map is 2^K-to-one (``q`` and ``-q`` are the same rotation) and ``x`` lies on the
``3(K-1) + 3K``-dimensional manifold of rigid configurations, so its "log-det" is a convention:
the constant that makes ``log q_X = log q_Z - logdet`` the log density of the generated
configurations w.r.t. a chosen reference measure. The default, ``measure="haar"``, is the measure
of the rigid configurational partition function

    Z = int prod_k d^3p_k dOmega_k exp(-u),

(positions in nm^3 including the removed translation of molecule 0, Haar measure of SO(3)
normalised to ``8 pi^2``: the measure of `systems.rigid.tetrahedron_log_partition_function` and
of the module docstring of `boltzgen.rigid`), hence ``log w = -u - log q_X`` of a
`BoltzmannGenerator` are importance weights whose mean estimates this ``Z`` directly:
``log Z ~= logsumexp(log w) - log n``. The constant is

    logdet = (K - 1) log V      (fractions -> nm, V = L_x L_y L_z)
             + K log 4          (S^3 surface measure -> Haar: q -> R(q) doubles angles, 2:1 cover)
             + log V            (the removed translation: p_0 uniform in the box; periodic only)

(the last two are `RigidBodySystem.log_volume_constant`). Why ``K log 4`` is right: for a density
``q'`` on S^3 that is even (``q'(q) = q'(-q)``, true for this flow), the density of ``R(q)`` w.r.t.
Haar is ``(q'(q) + q'(-q)) / 8 = q'(q) / 4``. ``measure="flow"`` keeps only the first term (weights
then estimate ``Z_flow`` of `boltzgen.rigid`, ``log Z = log Z_flow + log_volume_constant()``);
``measure="cartesian"`` adds ``K`` times `RigidMoleculeTemplate.log_cartesian_volume_factor`
(unit masses: density w.r.t. the volume of the rigid manifold inside R^{3n} per molecule).

The inverse returns quaternions in the canonical hemisphere ``w >= 0``
(``from_cartesian(random_sign=False)``): deterministic and differentiable. This is harmless since
the model density is even in each quaternion (see above), so ``log_prob`` does not depend on the
representative; the tests check the equivariance that guarantees it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import torch

from boltzgen.distributions.base import Distribution
from boltzgen.distributions.product import ProductDistribution
from boltzgen.distributions.rotations import UniformS3
from boltzgen.distributions.uniform import UniformTorus
from boltzgen.flows.base import Flow, SequentialFlow
from boltzgen.flows.conditioners import FixedPrecisionConditioner, MLPConditioner
from boltzgen.flows.coupling import CouplingLayer, ElementwiseTransformer
from boltzgen.flows.mobius import MobiusCircleTransformer, QuaternionMobiusTransformer
from boltzgen.flows.quaternions import (
    N_SIGN_INVARIANT_FEATURES,
    SignInvariantConditioner,
    sign_invariant_features,
)
from boltzgen.flows.shifts import CircularShift
from boltzgen.flows.splines import RationalQuadraticSpline, n_spline_parameters

if TYPE_CHECKING:  # boltzgen.rigid imports boltzgen.flows: import it lazily to avoid a cycle
    import numpy as np

    from boltzgen.rigid import RigidBodySystem

MEASURES = ("haar", "flow", "cartesian")
POSITION_TRANSFORMERS = ("spline", "mobius")
CONDITIONERS = ("mlp", "attention")


# --------------------------------------------------------------------------------------------
# latent layout


@dataclass(frozen=True)
class RigidLatentLayout:
    """Column layout of the rigid latent space ``[B, 3(K-1) + 4K]`` (module docstring).

    Attributes:
        n_molecules: K.
    """

    n_molecules: int

    def __post_init__(self):
        k = self.n_molecules
        if isinstance(k, bool) or int(k) != k or int(k) < 1:
            raise ValueError(f"n_molecules must be a positive integer, got {k!r}")
        object.__setattr__(self, "n_molecules", int(k))

    @property
    def n_free(self) -> int:
        """Molecules with a free position, ``K - 1``."""
        return self.n_molecules - 1

    @property
    def n_position_dims(self) -> int:
        """``3(K - 1)``."""
        return 3 * self.n_free

    @property
    def n_quaternion_dims(self) -> int:
        """``4K``."""
        return 4 * self.n_molecules

    @property
    def dim(self) -> int:
        """``3(K - 1) + 4K``."""
        return self.n_position_dims + self.n_quaternion_dims

    @property
    def n_degrees_of_freedom(self) -> int:
        """Manifold dimension ``3(K - 1) + 3K``."""
        return self.n_position_dims + 3 * self.n_molecules

    def position_index(self, molecule: int, axis: int) -> int:
        """Column of molecule ``molecule``'s (1 .. K-1) coordinate ``axis`` (0, 1, 2)."""
        if not 1 <= molecule < self.n_molecules or not 0 <= axis < 3:
            raise ValueError(f"no free position coordinate ({molecule}, {axis}) for K = {self.n_molecules}")
        return 3 * (molecule - 1) + axis

    def quaternion_indices(self, molecule: int) -> list[int]:
        """The 4 columns of quaternion ``molecule`` (0 .. K-1)."""
        if not 0 <= molecule < self.n_molecules:
            raise ValueError(f"no quaternion {molecule} for K = {self.n_molecules}")
        start = self.n_position_dims + 4 * molecule
        return list(range(start, start + 4))

    def circular_mask(self) -> torch.Tensor:
        """``[D]`` bool: True for the (periodic) position columns, False for quaternion columns."""
        mask = torch.zeros(self.dim, dtype=torch.bool)
        mask[: self.n_position_dims] = True
        return mask

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z [B, D]`` -> ``(positions [B, K-1, 3] in [0, 1), quaternions [B, K, 4])``."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"expected a rigid latent batch [batch, {self.dim}], got {list(z.shape)}")
        batch = z.shape[0]
        positions = z[:, : self.n_position_dims].reshape(batch, self.n_free, 3)
        quaternions = z[:, self.n_position_dims :].reshape(batch, self.n_molecules, 4)
        return positions, quaternions

    def join(self, positions: torch.Tensor, quaternions: torch.Tensor) -> torch.Tensor:
        """``positions [B, K-1, 3]``, ``quaternions [B, K, 4]`` -> ``z [B, D]`` (inverse of :meth:`split`)."""
        batch = quaternions.shape[0]
        if positions.shape != (batch, self.n_free, 3) or quaternions.shape != (batch, self.n_molecules, 4):
            raise ValueError(
                f"expected positions [batch, {self.n_free}, 3] and quaternions [batch, "
                f"{self.n_molecules}, 4], got {list(positions.shape)} and {list(quaternions.shape)}"
            )
        return torch.cat([positions.reshape(batch, -1), quaternions.reshape(batch, -1)], dim=-1)


def uniform_rigid_prior(n_molecules: int) -> ProductDistribution:
    """Uniform latent prior: ``UniformTorus(3(K-1))`` (fractions of the box) x ``UniformS3(K)``.

    ``log_prob`` is ``-K log(2 pi^2)`` (the torus has volume 1); shapes ``[B, 3(K-1) + 4K]``.
    """
    layout = RigidLatentLayout(n_molecules)
    components: list[Distribution] = []
    if layout.n_position_dims:
        components.append(UniformTorus(layout.n_position_dims, period=1.0))
    components.append(UniformS3(layout.n_molecules))
    return ProductDistribution(components)


def lattice_rigid_prior(
    rigid: "RigidBodySystem",
    reference: Union[torch.Tensor, "np.ndarray"],
    position_std: float = 0.02,
    rotation_std: float = 0.2,
) -> ProductDistribution:
    """Latent prior concentrated on a reference structure (a crystal lattice): shapes ``[B, 3(K-1) + 4K]``.

    Positions of molecules 1..K-1 relative to molecule 0 (box fractions, as in
    :class:`RigidCoordinateLayer`) are wrapped normal around the reference's
    (`boltzgen.distributions.WrappedNormalTorus`, standard deviation ``position_std`` nm along every
    axis); orientations are Watson distributions around the reference's quaternions
    (`boltzgen.distributions.WatsonS3`, even in each quaternion, Gaussian rotation vectors of
    standard deviation ``rotation_std`` rad per axis near the mode). Both are exactly normalised
    on the torus x (S^3)^K and sampled exactly, so a generator with this prior keeps exact
    importance weights.

    Args:
        rigid: periodic `RigidBodySystem` with the translation removed (K > 1) or a single molecule.
        reference: configuration ``[N, 3]`` or ``[3N]`` nm (e.g. ``system.positions``).
        position_std: nm, > 0 (unused for K = 1).
        rotation_std: rad, > 0.
    """
    from boltzgen.distributions import WatsonS3, WrappedNormalTorus

    layer = RigidCoordinateLayer(rigid, measure="flow")
    x = torch.as_tensor(reference, dtype=torch.float64).reshape(1, -1)
    if not torch.isfinite(x).all():
        raise ValueError("the reference configuration must be finite")
    if not rotation_std > 0:
        raise ValueError(f"rotation_std must be positive, got {rotation_std!r}")
    with torch.no_grad():
        z, _ = layer.to(torch.float64).inverse(x)
    fractions, quaternions = layer.layout.split(z)
    components: list[Distribution] = []
    if layer.layout.n_free:
        if not position_std > 0:
            raise ValueError(f"position_std must be positive, got {position_std!r}")
        box = rigid.box.to(torch.float64)
        std = (position_std / box).repeat(layer.layout.n_free)
        components.append(WrappedNormalTorus(fractions.reshape(-1), std, period=1.0))
    components.append(WatsonS3(quaternions[0], rotation_std))
    return ProductDistribution(components)


# --------------------------------------------------------------------------------------------
# rigid coordinates -> Cartesian


class RigidCoordinateLayer(Flow):
    """The map from the rigid latent layout ``[B, 3(K-1) + 4K]`` to Cartesian ``x [B, 3N]`` nm.

    Args:
        rigid: the `RigidBodySystem` (``remove_translation=True``; periodic unless K = 1).
        measure: reference measure of the generator density (module docstring): ``"haar"``
            (default; importance weights estimate ``Z = int prod d^3p dOmega exp(-u)``, Haar
            ``8 pi^2``, translation included), ``"flow"`` (``Z_flow``: only the fraction -> nm
            constant) or ``"cartesian"`` (``"haar"`` plus the rigid-manifold volume factor).

    ``forward(z) -> (x [B, 3N], logdet [B])`` with the constant :attr:`log_det_constant`;
    ``inverse(x [B, 3N]) -> (z [B, D], -log_det_constant)``, quaternions with ``w >= 0`` and
    positions of molecules 1..K-1 relative to molecule 0, wrapped into ``[0, 1)``. Virtual-site
    coordinates of ``x`` are ignored by the inverse (they follow from the real atoms).
    """

    def __init__(self, rigid: "RigidBodySystem", measure: str = "haar"):
        from boltzgen.rigid import RigidBodySystem

        super().__init__()
        if not isinstance(rigid, RigidBodySystem):
            raise TypeError(f"rigid must be a RigidBodySystem, got {type(rigid).__name__}")
        if not rigid.remove_translation:
            raise ValueError("RigidCoordinateLayer needs a RigidBodySystem with remove_translation=True")
        if rigid.n_molecules > 1 and not rigid.periodic:
            raise ValueError("more than one molecule needs a periodic box (positions live on the torus)")
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
        self.rigid = rigid
        self.measure = measure
        self.layout = RigidLatentLayout(rigid.n_molecules)
        constant = 0.0
        if self.layout.n_free:
            constant += self.layout.n_free * math.log(rigid.box_volume)
        if measure in ("haar", "cartesian"):
            constant += rigid.log_volume_constant()
        if measure == "cartesian":
            constant += rigid.n_molecules * rigid.template.log_cartesian_volume_factor()
        #: The log-det of :meth:`forward` (a constant, see the module docstring).
        self.log_det_constant = float(constant)

    def extra_repr(self) -> str:
        return f"n_molecules={self.layout.n_molecules}, measure={self.measure!r}, log_det={self.log_det_constant:.6g}"

    def _box(self, like: torch.Tensor) -> torch.Tensor:
        return self.rigid.box.to(like)

    def _forward(self, z, context=None):
        fractions, quaternions = self.layout.split(z)
        positions = fractions * self._box(z) if self.layout.n_free else fractions
        x = self.rigid.to_cartesian(positions, quaternions)
        return x, z.new_full((z.shape[0],), self.log_det_constant)

    def _inverse(self, x, context=None):
        coordinates = self.rigid.from_cartesian(x, random_sign=False)
        positions = coordinates.positions[:, 1:]
        if self.layout.n_free:
            positions = torch.remainder(positions / self._box(x), 1.0)
        z = self.layout.join(positions, coordinates.quaternions)
        return z, x.new_full((x.shape[0],), -self.log_det_constant)


# --------------------------------------------------------------------------------------------
# conditioners


def _local_quaternion_dims(layout: RigidLatentLayout, conditioning: torch.Tensor) -> list[int]:
    """Positions within ``conditioning`` (sorted latent indices) of the quaternion columns."""
    return [i for i, index in enumerate(conditioning.tolist()) if index >= layout.n_position_dims]


def mlp_rigid_conditioner(
    layout: RigidLatentLayout,
    conditioning: torch.Tensor,
    output_bias: torch.Tensor,
    hidden: Sequence[int] = (128, 128),
    activation: Callable[[], torch.nn.Module] = torch.nn.SiLU,
) -> SignInvariantConditioner:
    """MLP conditioner on the conditioning columns of the rigid layout.

    Positions enter as ``(cos 2 pi s, sin 2 pi s)``, quaternions (whole ones only) as their 10
    sign-invariant products. ``conditioning``: sorted latent indices ``[|C|]``; ``output_bias``
    ``[n_params]``: the initial output (identity / near-identity transformer parameters).
    Shapes: ``(x_C [B, |C|], context) -> [B, n_params]``.
    """
    quaternion_dims = _local_quaternion_dims(layout, conditioning)
    n_positions = conditioning.numel() - len(quaternion_dims)
    circular = [True] * n_positions + [False] * (N_SIGN_INVARIANT_FEATURES * (len(quaternion_dims) // 4))
    mlp = MLPConditioner(
        torch.as_tensor(circular, dtype=torch.bool), output_bias.numel(), hidden=hidden,
        activation=activation, output_bias=output_bias,
    )
    return SignInvariantConditioner(conditioning.numel(), quaternion_dims, mlp)


class MoleculeAttentionConditioner(torch.nn.Module):
    """Transformer-encoder conditioner over molecule tokens for rigid coupling layers.

    Each of the K molecules is a token with the features it has in the conditioning set:
    ``cos, sin`` of its 3 normalised position coordinates (zero where the coordinate is
    transformed by the layer, and for molecule 0, which sits at the origin), the 10
    sign-invariant products of its quaternion (zero when transformed), and 4 static flags (which
    of its position coordinates / its quaternion the layer transforms); 20 features. A linear
    embedding plus a learned per-molecule embedding, ``n_layers`` pre-norm
    ``torch.nn.TransformerEncoderLayer`` (no dropout), then a per-token head (linear, activation,
    zero-initialised linear) gives ``n_token_outputs`` numbers per molecule, from which the
    parameters of the transformed variables are gathered; ``output_bias`` is added, so the layer
    starts at the transformer's (near-)identity parameters.

    Args:
        layout: the latent layout.
        conditioning: sorted latent indices ``[|C|]`` the conditioner receives.
        transformed: sorted latent indices ``[|T|]`` the layer transforms (whole quaternions or
            position coordinates, not both).
        params_per_variable: transformer parameters per transformed position coordinate
            (position layers) or per transformed quaternion (rotation layers).
        output_bias: ``[n_params]`` initial output.
        d_model, n_heads, n_layers: encoder width, attention heads, depth.
        activation: activation factory of the head (the encoder uses GELU).

    Sign invariance: quaternions enter only through products, so the output is even in each
    quaternion. Shapes: ``forward(x_C [B, |C|], context ignored) -> [B, n_params]``.
    """

    def __init__(
        self,
        layout: RigidLatentLayout,
        conditioning: torch.Tensor,
        transformed: torch.Tensor,
        params_per_variable: int,
        output_bias: torch.Tensor,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        activation: Callable[[], torch.nn.Module] = torch.nn.SiLU,
    ):
        super().__init__()
        k, n_pos = layout.n_molecules, layout.n_position_dims
        transformed_list = transformed.tolist()
        is_position_layer = all(i < n_pos for i in transformed_list)
        if not is_position_layer and any(i < n_pos for i in transformed_list):
            raise ValueError("a layer must transform either positions or quaternions, not both")
        available = torch.zeros(layout.dim, dtype=torch.bool)
        available[conditioning] = True
        is_transformed = torch.zeros(layout.dim, dtype=torch.bool)
        is_transformed[transformed] = True
        # static per-token masks and flags
        position_available = torch.zeros(k, 3, dtype=torch.bool)
        position_flags = torch.zeros(k, 3)
        if layout.n_free:
            position_available[1:] = available[:n_pos].reshape(layout.n_free, 3)
            position_flags[1:] = is_transformed[:n_pos].reshape(layout.n_free, 3).float()
        quaternion_flags = is_transformed[n_pos:].reshape(k, 4)[:, 0].float()[:, None]
        self.register_buffer("position_available", position_available.repeat(1, 2), persistent=False)  # [K, 6]
        self.register_buffer("flags", torch.cat([position_flags, quaternion_flags], dim=-1), persistent=False)
        self.register_buffer("conditioning", conditioning.clone(), persistent=False)
        # which token outputs make up the parameter vector
        p = int(params_per_variable)
        if is_position_layer:
            self.n_token_outputs = 3 * p
            pairs = [(1 + i // 3, i % 3) for i in transformed_list]  # (molecule, axis), latent order
            gather = [m * 3 * p + a * p + j for m, a in pairs for j in range(p)]
        else:
            self.n_token_outputs = p
            molecules = sorted({(i - n_pos) // 4 for i in transformed_list})
            gather = [m * p + j for m in molecules for j in range(p)]
        if len(gather) != output_bias.numel():
            raise ValueError(f"output_bias has {output_bias.numel()} entries, the layer needs {len(gather)}")
        self.register_buffer("gather", torch.as_tensor(gather, dtype=torch.long), persistent=False)
        self.layout = layout
        n_features = 6 + N_SIGN_INVARIANT_FEATURES + 4
        self.embed = torch.nn.Linear(n_features, d_model)
        self.molecule_embedding = torch.nn.Parameter(0.1 * torch.randn(k, d_model))
        layer = torch.nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward=2 * d_model, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )
        self.encoder = torch.nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        last = torch.nn.Linear(d_model, self.n_token_outputs)
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
        self.head = torch.nn.Sequential(
            torch.nn.LayerNorm(d_model), torch.nn.Linear(d_model, d_model), activation(), last
        )
        self.output_bias = torch.nn.Parameter(
            torch.as_tensor(output_bias, dtype=torch.get_default_dtype()).detach().clone()
        )

    def tokens(self, x_c: torch.Tensor) -> torch.Tensor:
        """``x_C [B, |C|]`` -> token features ``[B, K, 20]`` (see the class docstring)."""
        if x_c.dim() != 2 or x_c.shape[1] != self.conditioning.numel():
            raise ValueError(
                f"expected conditioning inputs [batch, {self.conditioning.numel()}], got {list(x_c.shape)}"
            )
        batch, layout = x_c.shape[0], self.layout
        full = x_c.new_zeros(batch, layout.dim).index_copy(1, self.conditioning, x_c)
        fractions, quaternions = layout.split(full)
        angle = 2.0 * math.pi * fractions
        trig = torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)  # [B, K-1, 6]
        trig = torch.cat([trig.new_zeros(batch, 1, 6), trig], dim=1)
        trig = trig * self.position_available.to(trig.dtype)
        products = sign_invariant_features(quaternions)  # zeros for transformed quaternions
        flags = self.flags.to(x_c.dtype).expand(batch, -1, -1)
        return torch.cat([trig, products, flags], dim=-1)

    def forward(self, x_c: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden = self.embed(self.tokens(x_c)) + self.molecule_embedding
        hidden = self.encoder(hidden)
        out = self.head(hidden).reshape(x_c.shape[0], -1)  # [B, K * n_token_outputs]
        return out[:, self.gather] + self.output_bias


# --------------------------------------------------------------------------------------------
# the coupling flow


def _complement(dim: int, transformed: list[int]) -> torch.Tensor:
    mask = torch.ones(dim, dtype=torch.bool)
    mask[transformed] = False
    return torch.nonzero(mask).flatten()


def _rigid_coupling_layer(
    layout: RigidLatentLayout,
    transformed: list[int],
    transformer: ElementwiseTransformer,
    output_bias: torch.Tensor,
    params_per_variable: int,
    conditioner: str,
    hidden: Sequence[int],
    activation: Callable[[], torch.nn.Module],
    attention: dict,
    conditioner_dtype: Optional[torch.dtype] = None,
) -> CouplingLayer:
    transformed_idx = torch.as_tensor(sorted(transformed), dtype=torch.long)
    conditioning = _complement(layout.dim, transformed)
    if conditioner == "mlp":
        network = mlp_rigid_conditioner(layout, conditioning, output_bias, hidden, activation)
    else:
        network = MoleculeAttentionConditioner(
            layout, conditioning, transformed_idx, params_per_variable, output_bias,
            activation=activation, **attention,
        )
    if conditioner_dtype is not None:
        network = FixedPrecisionConditioner(network, conditioner_dtype)
    return CouplingLayer(layout.dim, transformed_idx, network, transformer, conditioning=conditioning)


def rigid_position_coupling(
    layout: RigidLatentLayout,
    parity: int,
    position_transformer: str = "spline",
    n_bins: int = 8,
    conditioner: str = "mlp",
    hidden: Sequence[int] = (128, 128),
    activation: Callable[[], torch.nn.Module] = torch.nn.SiLU,
    attention: Optional[dict] = None,
    conditioner_dtype: Optional[torch.dtype] = None,
) -> CouplingLayer:
    """Coupling layer on the position coordinates ``(k, a)`` with ``(k + a) % 2 == parity``.

    (k = 1..K-1 molecule, a = axis; a checkerboard, so each molecule has coordinates on both
    sides.) Transformer: all-circular `RationalQuadraticSpline` (``"spline"``, ``n_bins``) or
    `MobiusCircleTransformer` (``"mobius"``); identity at initialisation. Conditioned on the other
    position coordinates and all quaternions (sign-invariant features).
    """
    if layout.n_free == 0:
        raise ValueError("no free positions to transform (K = 1)")
    transformed = [
        layout.position_index(k, a) for k in range(1, layout.n_molecules) for a in range(3)
        if (k + a) % 2 == parity % 2
    ]
    if position_transformer == "spline":
        transformer = RationalQuadraticSpline([True] * len(transformed), n_bins=n_bins)
        per_variable = n_spline_parameters(n_bins, circular=True)
    elif position_transformer == "mobius":
        transformer = MobiusCircleTransformer(len(transformed))
        per_variable = 2
    else:
        raise ValueError(f"position_transformer must be one of {POSITION_TRANSFORMERS}, got {position_transformer!r}")
    return _rigid_coupling_layer(
        layout, transformed, transformer, transformer.identity_parameters(), per_variable,
        conditioner, hidden, activation, attention or {}, conditioner_dtype,
    )


def rigid_rotation_coupling(
    layout: RigidLatentLayout,
    molecules: Sequence[int],
    conditioner: str = "mlp",
    hidden: Sequence[int] = (128, 128),
    activation: Callable[[], torch.nn.Module] = torch.nn.SiLU,
    attention: Optional[dict] = None,
    init_radius: float = 0.1,
    generator: Optional[torch.Generator] = None,
    conditioner_dtype: Optional[torch.dtype] = None,
) -> CouplingLayer:
    """Coupling layer applying double Möbius maps to the quaternions of ``molecules``.

    Conditioned on all positions and the other quaternions (sign-invariant features); the
    conditioner's initial output is `QuaternionMobiusTransformer.near_identity_parameters`
    (``|q| = init_radius``, random directions from ``generator``), so the layer starts within
    ``O(init_radius^2)`` of the identity with non-zero gradients. Odd in each transformed
    quaternion, invariant under sign flips of the others: antipodally equivariant.
    """
    molecules = sorted(set(int(m) for m in molecules))
    if not molecules:
        raise ValueError("a rotation coupling needs at least one molecule")
    transformed = [i for m in molecules for i in layout.quaternion_indices(m)]
    transformer = QuaternionMobiusTransformer(len(molecules))
    bias = transformer.near_identity_parameters(init_radius, generator=generator)
    return _rigid_coupling_layer(
        layout, transformed, transformer, bias, 4, conditioner, hidden, activation, attention or {},
        conditioner_dtype,
    )


def rigid_coupling_flow(
    n_molecules: int,
    n_blocks: int = 4,
    hidden: Sequence[int] = (128, 128),
    *,
    position_transformer: str = "spline",
    n_bins: int = 8,
    conditioner: str = "mlp",
    attention_dim: int = 64,
    attention_heads: int = 4,
    attention_layers: int = 2,
    activation: Callable[[], torch.nn.Module] = torch.nn.SiLU,
    rotation_init_radius: float = 0.1,
    shift_positions: bool = True,
    seed: int = 0,
    conditioner_dtype: Optional[torch.dtype] = None,
) -> SequentialFlow:
    """Coupling flow on the rigid latent layout ``[B, 3(K-1) + 4K]`` (module docstring).

    Args:
        n_molecules: K.
        n_blocks: number of blocks. Each block is (a) two position couplings (the two
            checkerboard halves of the ``(molecule, axis)`` grid; none when K = 1), (b) rotation
            couplings: two (even / odd molecules) when K > 1, one on the single quaternion
            (with learned constant parameters) when K = 1, and (c) with ``"spline"`` positions and
            ``shift_positions``, a fixed random `CircularShift` of the positions between blocks
            (moves the splines' knot at 0), undone by one last shift so that the whole flow
            starts as (nearly) the identity.
        hidden: hidden widths of the MLP conditioners.
        position_transformer: ``"spline"`` (circular RQ splines, ``n_bins`` bins) or
            ``"mobius"`` (circle Möbius maps).
        conditioner: ``"mlp"`` (default) or ``"attention"`` (:class:`MoleculeAttentionConditioner`
            with ``attention_dim``, ``attention_heads``, ``attention_layers``).
        activation: activation factory of the conditioners.
        rotation_init_radius: ``|q|`` of the rotation layers' initial Möbius parameters.
        seed: seeds the random initial Möbius directions, shift offsets and attention weights
            (the global RNG state is left untouched).
        conditioner_dtype: run every conditioner network in this dtype whatever the flow's
            dtype (`boltzgen.flows.conditioners.FixedPrecisionConditioner`; e.g. float32
            networks in a float64 flow, about twice as fast on a CPU); None: the flow's dtype.

    Returns:
        A `SequentialFlow` ``[B, D] -> [B, D]`` (D = ``3(K-1) + 4K``): identity on the positions
        and near the identity on the quaternions at initialisation; antipodally equivariant.
    """
    layout = RigidLatentLayout(n_molecules)
    if isinstance(n_blocks, bool) or int(n_blocks) != n_blocks or n_blocks < 1:
        raise ValueError(f"n_blocks must be a positive integer, got {n_blocks!r}")
    if conditioner not in CONDITIONERS:
        raise ValueError(f"conditioner must be one of {CONDITIONERS}, got {conditioner!r}")
    if position_transformer not in POSITION_TRANSFORMERS:
        raise ValueError(f"position_transformer must be one of {POSITION_TRANSFORMERS}, got {position_transformer!r}")
    attention = dict(d_model=attention_dim, n_heads=attention_heads, n_layers=attention_layers)
    generator = torch.Generator().manual_seed(seed)
    common = dict(conditioner=conditioner, hidden=hidden, activation=activation, attention=attention,
                  conditioner_dtype=conditioner_dtype)
    layers: list[Flow] = []
    total_offset = torch.zeros(layout.n_position_dims, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for block in range(int(n_blocks)):
            if layout.n_free:
                for parity in (block, block + 1):
                    layers.append(rigid_position_coupling(
                        layout, parity, position_transformer=position_transformer, n_bins=n_bins, **common
                    ))
            if layout.n_molecules == 1:
                groups = [[0]]
            else:
                groups = [[m for m in range(layout.n_molecules) if (m + block + j) % 2 == 0] for j in (0, 1)]
            for molecules in groups:
                layers.append(rigid_rotation_coupling(
                    layout, molecules, init_radius=rotation_init_radius, generator=generator, **common
                ))
            if layout.n_free and position_transformer == "spline" and shift_positions and block < n_blocks - 1:
                offsets = torch.rand(layout.n_position_dims, generator=generator, dtype=torch.float64)
                total_offset = total_offset + offsets
                layers.append(CircularShift(layout.circular_mask(), offsets.to(torch.get_default_dtype())))
    if bool((total_offset % 1.0 != 0).any()):
        # undo the accumulated shifts: the whole flow starts as (nearly) the identity map
        layers.append(CircularShift(layout.circular_mask(), (-total_offset % 1.0).to(torch.get_default_dtype())))
    return SequentialFlow(layers)


# --------------------------------------------------------------------------------------------
# generator


def rigid_generator(
    system,
    target=None,
    n_blocks: int = 4,
    prior: Union[str, Distribution] = "uniform",
    measure: str = "haar",
    reference: Optional[Union[torch.Tensor, "np.ndarray"]] = None,
    **flow_options,
):
    """A `BoltzmannGenerator` for a system of K rigid molecules.

    Args:
        system: a `RigidBodySystem` or a `boltzgen.systems.MolecularSystem` (converted with
            `RigidBodySystem.from_molecular_system`).
        target: the target `boltzgen.energy.Energy` of Cartesian ``[B, 3N]`` nm (or None).
        n_blocks: blocks of :func:`rigid_coupling_flow`.
        prior: ``"uniform"`` (:func:`uniform_rigid_prior`: uniform box fractions x uniform
            S^3), ``"lattice"`` (:func:`lattice_rigid_prior` around ``reference`` with its default
            spreads) or any `Distribution` on the latent layout ``[B, 3(K-1) + 4K]`` (it should be
            even in each quaternion, see the module docstring).
        measure: reference measure of :class:`RigidCoordinateLayer` (default ``"haar"``: the
            importance weights estimate ``Z = int prod d^3p dOmega exp(-u)``).
        reference: the configuration ``[N, 3]`` nm of ``prior="lattice"`` (default: the
            positions of a `MolecularSystem`).
        **flow_options: passed to :func:`rigid_coupling_flow`.

    Returns:
        ``BoltzmannGenerator(prior, SequentialFlow([coupling flow, RigidCoordinateLayer]), target)``;
        ``generator.flow[0]`` is the latent flow and ``generator.flow[1]`` the coordinate layer.
    """
    from boltzgen.generator import BoltzmannGenerator
    from boltzgen.rigid import RigidBodySystem

    rigid = system if isinstance(system, RigidBodySystem) else RigidBodySystem.from_molecular_system(system)
    layout = RigidLatentLayout(rigid.n_molecules)
    if isinstance(prior, str):
        if prior == "uniform":
            prior = uniform_rigid_prior(layout.n_molecules)
        elif prior == "lattice":
            if reference is None:
                reference = getattr(system, "positions", None)
            if reference is None:
                raise ValueError("prior='lattice' needs a reference configuration (reference= or a MolecularSystem)")
            prior = lattice_rigid_prior(rigid, reference)
        else:
            raise ValueError(f"prior must be 'uniform', 'lattice' or a Distribution, got {prior!r}")
    elif not isinstance(prior, Distribution):
        raise TypeError(f"prior must be 'uniform' or a Distribution, got {type(prior).__name__}")
    if prior.dim != layout.dim:
        raise ValueError(f"the prior has dim {prior.dim}, the rigid latent space {layout.dim}")
    if target is not None and getattr(target, "dim", 3 * rigid.n_particles) != 3 * rigid.n_particles:
        raise ValueError(f"the target has dim {target.dim}, the system 3N = {3 * rigid.n_particles}")
    flow = SequentialFlow([rigid_coupling_flow(layout.n_molecules, n_blocks, **flow_options),
                           RigidCoordinateLayer(rigid, measure=measure)])
    return BoltzmannGenerator(prior, flow, target)


__all__ = [
    "MoleculeAttentionConditioner",
    "RigidCoordinateLayer",
    "RigidLatentLayout",
    "lattice_rigid_prior",
    "mlp_rigid_conditioner",
    "rigid_coupling_flow",
    "rigid_generator",
    "rigid_position_coupling",
    "rigid_rotation_coupling",
    "uniform_rigid_prior",
]
