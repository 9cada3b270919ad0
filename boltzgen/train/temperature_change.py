"""Temperature-change training: a flow from MD samples at a high temperature to a lower one.

The rigid-body-flow paper (Köhler et al. 2023, METHODS.md §4) learns a map ``f`` that carries
samples of the base ensemble ``p_B ∝ exp(-u_B)`` (MD at the high temperature T_B) into the target
ensemble ``p_T ∝ exp(-u_T)`` (the low temperature T_T), with ``u_B = U / kT_B`` and
``u_T = U / kT_T`` for one potential U. Everything is in reduced units (kT of the state in
question; nats for the log-Jacobian), free energies are reduced, ``F = -log Z``.

Sign conventions (shared with `boltzgen.analysis.perturbation`):

- forward work of a base sample ``x ~ p_B``: ``W_F(x) = u_T(f(x)) - u_B(x) - log|det J_f(x)|``;
- reverse work of a target sample ``y ~ p_T``: ``W_R(y) = u_B(f^-1(y)) - u_T(y) - log|det J_f^-1(y)|``;
- ``dF = F_T - F_B = -log(Z_T / Z_B)``; ``E_B[exp(-W_F)] = Z_T / Z_B`` and ``E_T[exp(-W_R)] = Z_B / Z_T``;
- the loss ``E_B[W_F] = KL(f#p_B || p_T) + dF >= dF`` is an upper bound on dF (Jensen), with
  equality exactly when ``f`` pushes p_B onto p_T (then every work equals dF and the ESS is 1).

The log weights of the pushed-forward samples are ``log w = -W_F``; ``-log mean(w)`` is the
learned free-energy perturbation (LFEP) estimate of dF (`boltzgen.analysis.perturbation.lfep`).

The loss is a function of a batch of fixed base samples (no sampling from the model), so
`boltzgen.train.trainer.Trainer` (which draws its KL batches from the generator's prior) cannot
host it; :func:`train_temperature_change` is a small loop with the Trainer's conventions: Adam,
the learning-rate schedule of a `TrainingStage` (warm-up, cosine decay), gradient clipping by norm,
non-finite steps skipped and counted (too many in a row raise), a seeded batch stream and a
progress bar.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence, Union

import torch

from boltzgen.errors import BoltzgenError
from boltzgen.flows.base import Flow
from boltzgen.progress import progress_bar
from boltzgen.sampling.weights import ess
from boltzgen.train.averaging import ParameterAverage
from boltzgen.train.losses import LinLogCut
from boltzgen.train.trainer import TrainingStage

#: A reduced energy: configurations ``[B, D]`` -> energies ``[B]`` in kT (an `Energy` qualifies).
ReducedEnergy = Callable[[torch.Tensor], torch.Tensor]
#: A minibatch augmentation ``(x [B, D], generator) -> [B, D]`` that leaves the base ensemble invariant.
Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class TemperatureChangeDiagnostics:
    """Per-batch diagnostics of :func:`base_to_target_loss` (detached).

    Attributes:
        works: uncut forward works ``W_F`` ``[B]`` float64 (kT_T units, +inf where ``u_T`` or the
            log-determinant was not finite).
        n_cut: samples whose target energy was above ``cut.high`` or not finite (they enter the loss
            through the lin-log cut) plus those dropped for a non-finite log-determinant.
        mean_target_energy: mean of the finite ``u_T(f(x))`` (kT_T).
        mean_work: mean of the finite works (kT): the uncut loss.
        ess: Kish ESS (normalised, in [0, 1]) of the log weights ``-W_F`` of this batch.
    """

    works: torch.Tensor
    n_cut: int
    mean_target_energy: float
    mean_work: float
    ess: float


def _reduced_energy(target: ReducedEnergy, y: torch.Tensor) -> torch.Tensor:
    u = target(y)
    if u.shape != y.shape[:1]:
        raise ValueError(f"the target energy must return shape [{y.shape[0]}], got {list(u.shape)}")
    return u


def _per_sample(values, n: int, name: str) -> torch.Tensor:
    """``values`` as a flat tensor ``[n]`` (one per sample), or a ValueError naming ``name``."""
    values = torch.as_tensor(values).reshape(-1)
    if values.shape[0] != n:
        raise ValueError(f"{name} has {values.shape[0]} entries for {n} samples")
    return values


def base_to_target_loss(
    flow: Flow,
    x_base: torch.Tensor,
    u_base: torch.Tensor,
    target: ReducedEnergy,
    cut: LinLogCut = LinLogCut(),
    context: Optional[torch.Tensor] = None,
    ess_weight: float = 0.0,
) -> tuple[torch.Tensor, TemperatureChangeDiagnostics]:
    """Mean forward work ``mean_b [cut(u_T(f(x_b))) - u_B(x_b) - log|det J_f(x_b)|]`` (differentiable),
    optionally plus ``ess_weight`` times the batch's ``-log ESS``.

    Args:
        flow: the map ``f`` (``forward(x) -> (y, logdet [B])``), in whatever representation it
            takes; ``target`` takes its output.
        x_base: base-ensemble samples ``[B, D_in]``.
        u_base: their reduced base energies ``u_B(x) = U(x) / kT_B`` ``[B]`` (kT_B), precomputed;
            they carry no gradient and shift the loss by a constant, but make it an estimate of dF.
        target: reduced target energy ``u_T`` (``[B, D_out]`` -> ``[B]``, kT_T), e.g. an `Energy`
            at the target temperature.
        cut: lin-log regulariser of ``u_T`` (`boltzgen.train.losses.LinLogCut`).
        context: optional flow context ``[B, C]``.
        ess_weight: weight ``lambda >= 0`` of the tail penalty
            ``-log ESS_batch = log(B sum w^2 / (sum w)^2)`` of the batch's weights ``w = exp(-W_F)``
            (cut works). The mean work ``E[W_F] = KL + dF`` is mode-seeking and hardly sees the rare
            base samples that carry the largest weights; the gradient of this term moves exactly
            those (it raises the works with more than their share of ``w^2``, lowers the others).
            Its population version, ``log E[w^2] - 2 log E[w]``, is minimal (0) exactly when ``f``
            pushes p_B onto p_T, like the mean work.

    Returns:
        ``(loss, diagnostics)``: the scalar loss (an upper bound on dF = F_T - F_B in kT, up to the
        cut) and `TemperatureChangeDiagnostics`. Samples with a non-finite log-determinant leave
        the average (counted in ``n_cut``); if none is usable the loss is ``+inf``.
    """
    if x_base.dim() != 2:
        raise ValueError(f"x_base must be [B, D], got {list(x_base.shape)}")
    u_base = _per_sample(u_base, x_base.shape[0], "u_base").to(x_base.device)
    y, logdet = flow(x_base, context=context)
    u_target = _reduced_energy(target, y)
    u_base = u_base.to(u_target.dtype).detach()
    usable = torch.isfinite(logdet.detach())
    finite = torch.isfinite(u_target.detach())
    n_cut = int((~finite | (u_target.detach() >= cut.high)).sum()) + int((~usable & finite).sum())
    with torch.no_grad():
        works = (u_target.double() - u_base.double() - logdet.double()).detach()
        works = torch.where(torch.isfinite(works), works, torch.full_like(works, math.inf))
        finite_works = works[torch.isfinite(works)]
        mean_work = float(finite_works.mean()) if finite_works.numel() else math.inf
        mean_target_energy = float(u_target.detach()[finite].double().mean()) if finite.any() else math.inf
        batch_ess = ess(torch.where(torch.isfinite(works), -works, torch.full_like(works, -math.inf)))
    diagnostics = TemperatureChangeDiagnostics(works, n_cut, mean_target_energy, mean_work, batch_ess)
    terms = cut(u_target) - u_base - logdet
    if not bool(usable.all()):
        if not bool(usable.any()):
            return terms.new_tensor(math.inf), diagnostics
        terms = terms[usable]
    loss = terms.mean()
    if ess_weight:
        log_w = -terms
        inverse_ess = torch.logsumexp(2.0 * log_w, 0) - 2.0 * torch.logsumexp(log_w, 0) + math.log(terms.numel())
        loss = loss + ess_weight * inverse_ess
    return loss, diagnostics


@torch.no_grad()
def forward_works(
    flow: Flow,
    x_base: torch.Tensor,
    u_base: torch.Tensor,
    target: ReducedEnergy,
    batch_size: int = 1024,
    context: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Forward works ``W_F = u_T(f(x)) - u_B(x) - log|det J_f(x)|`` ``[N]`` float64 (kT), no cut.

    ``x_base`` ``[N, D_in]`` are base samples with reduced base energies ``u_base`` ``[N]``; the
    log weights of the pushed-forward samples are ``-W_F`` (+inf works, i.e. zero weights, where an
    evaluation failed). Feed them to `boltzgen.analysis.perturbation.lfep` / ``bar``.
    """
    return _works(flow.forward, x_base, u_base, target, batch_size, context, "u_base")


@torch.no_grad()
def reverse_works(
    flow: Flow,
    y_target: torch.Tensor,
    u_target: torch.Tensor,
    base: ReducedEnergy,
    batch_size: int = 1024,
    context: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Reverse works ``W_R = u_B(f^-1(y)) - u_T(y) - log|det J_f^-1(y)|`` ``[N]`` float64 (kT).

    ``y_target`` ``[N, D_out]`` are target-ensemble samples (e.g. MD at T_T) with reduced target
    energies ``u_target`` ``[N]``; ``base`` is the reduced base energy ``u_B`` on the flow's input
    representation. +inf where an evaluation failed.
    """
    return _works(flow.inverse, y_target, u_target, base, batch_size, context, "u_target")


class SymmetryGroup(Protocol):
    """A finite group of volume-preserving maps of the flow's output space: ``len(group)`` elements,
    ``group.apply(y [B, D], k) -> [B, D]`` applies element ``k`` (`boltzgen.symmetry.SymmetryAugmentation`
    qualifies)."""

    def __len__(self) -> int: ...

    def apply(self, y: torch.Tensor, operation: int) -> torch.Tensor: ...


def _flow_list(flows: Union[Flow, Sequence[Flow]]) -> list[Flow]:
    flows = [flows] if isinstance(flows, torch.nn.Module) else list(flows)
    if not flows:
        raise ValueError("need at least one flow")
    return flows


@torch.no_grad()
def mixture_forward_works(
    flows: Union[Flow, Sequence[Flow]],
    x_base: torch.Tensor,
    target: ReducedEnergy,
    base: ReducedEnergy,
    group: Optional[SymmetryGroup] = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Forward works ``[N]`` float64 (kT) of a mixture of flows and of their images under a
    symmetry group, for base samples ``x_base [N, D_in]``.

    The model is the equal-weight mixture of the pushforwards ``q_m = f_m#p_B`` of M flows (an
    ensemble, e.g. flows trained from different seeds), each averaged over a symmetry group G of
    the target: ``q(y) = (1/(M|G|)) sum_m sum_g q_m(g y)``, a normalised density (every ``g``
    preserves volume), exactly G-invariant as the target is, whatever symmetry the flows lack.
    Its work at ``y`` is

        ``W(y) = u_T(y) + log q~(y) = logsumexp_{m,g}(-W_R^m(g y)) - log(M |G|)``,

    with ``W_R^m`` the reverse work of flow m (:func:`reverse_works`) and ``q~`` the mixture of the
    pushforwards of ``exp(-u_B)``. Sample ``i`` is pushed by flow ``i mod M`` (a stratified draw
    of the mixture); no group element needs applying, ``W`` being G-invariant. So
    ``E[exp(-W)] = Z_T / Z_B`` and the LFEP / BAR / ESS estimators apply unchanged; for one flow
    and no group, ``W`` is the plain forward work ``W_F(x)``. Flows that are each right on part of
    the target (one of two symmetric modes, a crystal in one of its equivalent labellings) give
    constant works together; flows with independent errors average them out.

    Requirements: ``u_T(g y) = u_T(y)`` and ``|det g| = 1`` for every element, the identity among
    them, closure under composition (the base energy need not be invariant). Cost per sample: one
    forward pass and ``M |G|`` inverse passes and base-energy evaluations.

    Args:
        flows: one flow or a sequence of M flows, base representation -> target representation,
            each with an inverse.
        x_base: base samples ``[N, D_in]``.
        target: reduced target energy ``u_T`` on the output (kT_T).
        base: reduced base energy ``u_B`` on the input (kT_B).
        group: the symmetry group (`SymmetryGroup`); None for the identity alone.
        batch_size: samples per pass.
    """
    flows = _flow_list(flows)
    works, order = [], []
    for m, flow in enumerate(flows):
        rows = torch.arange(m, x_base.shape[0], len(flows), device=x_base.device)
        for start in range(0, rows.numel(), batch_size):
            chunk = rows[start:start + batch_size]
            y = flow.forward(x_base[chunk])[0]
            works.append(_mixture_work(flows, y, _reduced_energy(target, y), base, group))
            order.append(chunk.cpu())
    if not works:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat(works)[torch.argsort(torch.cat(order))]  # in the order of x_base


@torch.no_grad()
def mixture_reverse_works(
    flows: Union[Flow, Sequence[Flow]],
    y_target: torch.Tensor,
    u_target: torch.Tensor,
    base: ReducedEnergy,
    group: Optional[SymmetryGroup] = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Reverse works ``-W(y)`` ``[N]`` float64 (kT) of the mixture model of
    :func:`mixture_forward_works` for target samples ``y_target [N, D_out]`` with reduced target
    energies ``u_target [N]``; with :func:`mixture_forward_works` they feed BAR."""
    flows = _flow_list(flows)
    u_target = _per_sample(u_target, y_target.shape[0], "u_target")
    works = []
    for start in range(0, y_target.shape[0], batch_size):
        stop = start + batch_size
        works.append(-_mixture_work(flows, y_target[start:stop], u_target[start:stop], base, group))
    return torch.cat(works) if works else torch.zeros(0, dtype=torch.float64)


def _mixture_work(flows: list[Flow], y: torch.Tensor, u_target: torch.Tensor, base: ReducedEnergy,
                  group: Optional[SymmetryGroup]) -> torch.Tensor:
    """``W(y) = logsumexp_{m,g}(-W_R^m(g y)) - log(M|G|)`` ``[B]`` float64 (+inf where every term failed)."""
    n_elements = 1 if group is None else len(group)
    if n_elements < 1:
        raise ValueError("the symmetry group needs at least the identity")
    u_target = u_target.to(y.device).double()
    terms = []
    for k in range(n_elements):
        image = y if group is None else group.apply(y, k)
        for flow in flows:
            x, logdet = flow.inverse(image)
            w_r = _reduced_energy(base, x).double() - u_target - logdet.double()
            terms.append(torch.where(torch.isfinite(w_r), -w_r, torch.full_like(w_r, -math.inf)))
    work = torch.logsumexp(torch.stack(terms), 0) - math.log(len(terms))
    return torch.where(torch.isfinite(work), work, torch.full_like(work, math.inf)).cpu()


def _works(transport, x: torch.Tensor, u_start, end_energy, batch_size: int,
           context: Optional[torch.Tensor], name: str) -> torch.Tensor:
    """``u_end(T(x)) - u_start(x) - log|det J_T(x)|`` ``[N]`` float64 for ``transport`` T (the flow
    or its inverse), in batches; +inf where an evaluation failed."""
    u_start = _per_sample(u_start, x.shape[0], name)
    out = []
    for start in range(0, x.shape[0], batch_size):
        stop = start + batch_size
        y, logdet = transport(x[start:stop], context=None if context is None else context[start:stop])
        u_end = _reduced_energy(end_energy, y)
        out.append(u_end.double() - u_start[start:stop].to(u_end.device).double() - logdet.double())
    works = torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.float64)
    return torch.where(torch.isfinite(works), works, torch.full_like(works, math.inf))


@dataclass
class TemperatureChangeHistory:
    """Result of :func:`train_temperature_change`.

    Attributes:
        records: one dict every ``log_every`` steps and at the last step: ``step``, ``lr``,
            ``loss`` (the cut loss, kT), ``mean_work`` (uncut, kT), ``ess`` (batch ESS),
            ``n_energy_cut``, ``mean_target_energy_kT``, ``grad_norm``; or ``skipped: True``.
        n_steps: optimizer steps attempted.
        n_skipped_steps: steps skipped for a non-finite loss or gradient.
        n_energy_evaluations: target-energy evaluations (samples pushed through the flow), the
            validation's included.
        wall_s: seconds spent.
        validation_records: with validation samples: one dict per check (``step``, 0 for the
            initial flow; ``ess``, the Kish ESS of the validation log weights; ``mean_work``, kT).
        best_step: the step whose parameters the flow was left with (None without validation).
        best_validation_ess: their validation ESS (None without validation).
        last_state: with ``ema_decay``, the flow's state dict with the optimizer's last
            parameters (the flow itself is left with the averaged ones); else None.
    """

    records: list[dict] = field(default_factory=list)
    n_steps: int = 0
    n_skipped_steps: int = 0
    n_energy_evaluations: int = 0
    wall_s: float = 0.0
    validation_records: list[dict] = field(default_factory=list)
    best_step: Optional[int] = None
    best_validation_ess: Optional[float] = None
    last_state: Optional[dict] = None


def _validation_record(flow: Flow, validation: tuple[torch.Tensor, torch.Tensor], target: ReducedEnergy,
                       batch_size: int, step: int) -> dict:
    """ESS and mean work of the flow's forward works on the validation samples (flow in eval mode)."""
    flow.eval()
    works = forward_works(flow, validation[0], validation[1], target, batch_size=batch_size)
    flow.train()
    finite = torch.isfinite(works)  # failed evaluations are +inf works: zero weights
    mean_work = float(works[finite].mean()) if finite.any() else math.inf
    return {"step": step, "ess": ess(-works), "mean_work": mean_work}


def train_temperature_change(
    flow: Flow,
    base_samples: torch.Tensor,
    base_energies: torch.Tensor,
    target: ReducedEnergy,
    n_steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    *,
    warmup_steps: int = 0,
    final_lr_fraction: float = 0.02,
    grad_clip_norm: float = 1e3,
    weight_decay: float = 0.0,
    cut: LinLogCut = LinLogCut(),
    log_every: int = 50,
    max_consecutive_skipped_steps: int = 100,
    quiet: bool = False,
    validation: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    validate_every: int = 500,
    validation_batch_size: int = 256,
    augment: Optional[Augmentation] = None,
    ema_decay: Optional[float] = None,
    ess_weight: float = 0.0,
) -> TemperatureChangeHistory:
    """Minimise :func:`base_to_target_loss` over minibatches of fixed base samples.

    Args:
        flow: the map base -> target (trained in place, on the device of its parameters).
        base_samples: base-ensemble samples ``[M, D_in]`` (e.g. MD frames at T_B).
        base_energies: their reduced base energies ``u_B`` ``[M]`` (kT_B).
        target: reduced target energy ``u_T`` on the flow's output (kT_T).
        n_steps: optimizer steps.
        batch_size: base samples per step, drawn with replacement.
        learning_rate: peak Adam learning rate; linear warm-up over ``warmup_steps``, then cosine
            decay to ``learning_rate * final_lr_fraction`` (`TrainingStage.learning_rate_at`).
        seed: seeds the minibatch stream (a CPU ``torch.Generator``); the flow's initialisation is
            the caller's.
        grad_clip_norm: gradient norm clip; weight_decay: Adam's.
        cut: lin-log cut of the target energy.
        log_every: history record interval (steps).
        max_consecutive_skipped_steps: raise `BoltzgenError` after this many non-finite steps in a row.
        quiet: no progress bar.
        validation: optional ``(samples [V, D_in], reduced base energies [V])``, base-ensemble
            samples kept out of ``base_samples``. The Kish ESS of their forward-work weights is
            checked before training, every ``validate_every`` steps and after the last step, and
            the flow is left with the parameters of the best check (model selection: the batch
            ESS of this loss swings by a factor of several between nearby steps, and a lower
            mean work can come with a heavier weight tail). Estimates must then use samples
            other than the validation ones.
        validate_every: steps between validation checks.
        validation_batch_size: samples per flow evaluation in a check.
        augment: optional map of each minibatch ``(x [B, D_in], generator) -> [B, D_in]`` that
            leaves the base ensemble and the base energies invariant, e.g. a random symmetry
            operation of a crystal per sample (`boltzgen.symmetry.SymmetryAugmentation`); drawn
            from the minibatch stream's generator. The energies ``u_B`` of the batch are reused
            unchanged: invariance is the caller's promise.
        ema_decay: optional decay ``d`` of an exponential moving average of the parameters,
            ``avg <- avg + (1 - min(d, (1 + n) / (10 + n))) (theta - avg)`` after optimizer step n
            (the ramp keeps early averages from holding the initial parameters). With it, the
            validation checks and the returned flow use the averaged parameters, and
            ``history.last_state`` keeps the optimizer's own last parameters.
        ess_weight: weight of the batch ``-log ESS`` tail penalty of :func:`base_to_target_loss`
            (0: the mean work alone, the loss of the paper).

    Returns:
        `TemperatureChangeHistory`; the flow is left in eval mode.
    """
    if base_samples.dim() != 2 or base_samples.shape[0] == 0:
        raise ValueError(f"base_samples must be a non-empty [M, D] tensor, got {list(base_samples.shape)}")
    base_energies = torch.as_tensor(base_energies).reshape(-1)
    if base_energies.shape[0] != base_samples.shape[0]:
        raise ValueError(f"base_energies has {base_energies.shape[0]} entries for {base_samples.shape[0]} samples")
    if not torch.isfinite(base_energies).all():
        raise ValueError("base_energies must be finite (they are MD samples of the base ensemble)")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every!r}")
    if validate_every < 1:
        raise ValueError(f"validate_every must be >= 1, got {validate_every!r}")
    if not ess_weight >= 0.0:
        raise ValueError(f"ess_weight must be >= 0, got {ess_weight!r}")
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in (0, 1), got {ema_decay!r}")
    if validation is not None:
        x_val, u_val = validation
        u_val = torch.as_tensor(u_val).reshape(-1)
        if x_val.dim() != 2 or x_val.shape[0] == 0 or x_val.shape[1] != base_samples.shape[1] \
                or u_val.shape[0] != x_val.shape[0]:
            raise ValueError(
                f"validation must be (samples [V, {base_samples.shape[1]}], energies [V]) with V >= 1, got "
                f"{list(x_val.shape)} and {list(u_val.shape)}"
            )
    schedule = TrainingStage(
        name="temperature_change", n_steps=n_steps, nll_weight=0.0, kl_weight=1.0, learning_rate=learning_rate,
        batch_size=batch_size, kl_batch_size=batch_size, warmup_steps=warmup_steps,
        final_lr_fraction=final_lr_fraction,
    )
    parameters = [p for p in flow.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the flow has no trainable parameters")
    device = parameters[0].device
    base_samples = base_samples.to(device)
    base_energies = base_energies.to(device)
    optimizer = torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay)
    batches = torch.Generator(device="cpu").manual_seed(int(seed))
    history = TemperatureChangeHistory()
    consecutive_skips = 0
    start = time.perf_counter()
    flow.train()
    best_state = None
    average = None if ema_decay is None else ParameterAverage(parameters, ema_decay)

    def check(step: int) -> None:
        nonlocal best_state
        with average.swapped_in() if average is not None else contextlib.nullcontext():
            record = _validation_record(flow, validation, target, validation_batch_size, step)
            history.validation_records.append(record)
            history.n_energy_evaluations += validation[0].shape[0]
            if history.best_validation_ess is None or record["ess"] > history.best_validation_ess:
                history.best_step, history.best_validation_ess = step, record["ess"]
                best_state = {k: v.detach().clone() for k, v in flow.state_dict().items()}

    if validation is not None:
        validation = (x_val.to(device), u_val.to(device))
        check(0)
    with progress_bar(n_steps, desc="temperature change", unit="step", quiet=quiet) as bar:
        for step in range(n_steps):
            lr = schedule.learning_rate_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, base_samples.shape[0], (batch_size,), generator=batches).to(device)
            x_batch = base_samples[idx] if augment is None else augment(base_samples[idx], batches)
            loss, diag = base_to_target_loss(flow, x_batch, base_energies[idx], target, cut, ess_weight=ess_weight)
            history.n_energy_evaluations += batch_size
            optimizer.zero_grad(set_to_none=True)
            record: dict = {"step": step + 1, "lr": lr}
            grad_norm = None
            if torch.isfinite(loss):
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip_norm)
            if grad_norm is None or not torch.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                history.n_skipped_steps += 1
                consecutive_skips += 1
                record["skipped"] = True
                if consecutive_skips >= max_consecutive_skipped_steps:
                    raise BoltzgenError(
                        f"temperature-change training diverged: {consecutive_skips} consecutive steps with a "
                        f"non-finite loss or gradient (up to step {step + 1}); lower the learning rate or "
                        "check the base samples and energies"
                    )
            else:
                optimizer.step()
                if average is not None:
                    average.update()
                consecutive_skips = 0
                record.update(
                    loss=float(loss.detach()), mean_work=diag.mean_work, ess=diag.ess, n_energy_cut=diag.n_cut,
                    mean_target_energy_kT=diag.mean_target_energy, grad_norm=float(grad_norm),
                )
            history.n_steps += 1
            bar.update(1)
            if (step + 1) % log_every == 0 or step + 1 == n_steps:
                history.records.append(record)
                bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k in ("loss", "ess")})
            if validation is not None and ((step + 1) % validate_every == 0 or step + 1 == n_steps):
                check(step + 1)
    if average is not None:
        history.last_state = {k: v.detach().clone() for k, v in flow.state_dict().items()}
        average.copy_to_parameters()
    if best_state is not None:
        flow.load_state_dict(best_state)
    history.wall_s = time.perf_counter() - start
    flow.eval()
    return history
