"""Settings of the `boltzgen run` job: model size, training schedule, sample counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RunProfile:
    """One named set of job settings.

    Attributes:
        name: ``quick``, ``full`` or ``smoke``.
        n_coupling_layers: coupling layers (an even number: they come in pairs).
        hidden: hidden layer widths of each conditioner MLP.
        n_bins: rational-quadratic spline bins, or mixture components of the smooth transformers.
        max_train_frames: training frames used at most (the rest of the data set is held out).
        nll_steps: optimizer steps of the maximum-likelihood stage.
        kl_steps: steps of the mixed NLL + reverse-KL stage.
        batch_size: data frames per step; kl_batch_size: generated samples per KL step.
        nll_learning_rate, kl_learning_rate: peak learning rates of the two stages.
        kl_weight: weight of the reverse KL next to the NLL (weight 1) in the second stage.
        force_weight: weight of force matching (relative squared force error) in both stages of
            spline flows, used when the data carry forces.
        smooth_force_weight: the same for smooth flows (``--flow smooth``). Their C-infinity
            density needs strong force matching: at weight 1 the quick model's force error was
            92 kT/nm and its potential too stiff for 1 fs MD, at 30 it was 35 kT/nm
            (benchmarks/smooth_ad2.py); spline flows diverge at 30.
        n_samples: generated samples for weights, ESS and free energies.
        n_metric_samples: samples on each side of the E-W2 / T-W2 metrics (BENCHMARKS.md: 10,000).
        n_bootstrap: bootstrap resamples for error bars.
    """

    name: str
    n_coupling_layers: int
    hidden: tuple[int, ...]
    n_bins: int
    max_train_frames: int
    nll_steps: int
    kl_steps: int
    batch_size: int
    kl_batch_size: int
    nll_learning_rate: float
    kl_learning_rate: float
    kl_weight: float
    force_weight: float
    n_samples: int
    n_metric_samples: int
    n_bootstrap: int
    smooth_force_weight: float = 30.0

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, RunProfile] = {
    # The README's main command: about 15 minutes on 2 CPU cores.
    "quick": RunProfile(
        name="quick", n_coupling_layers=8, hidden=(128, 128), n_bins=8, max_train_frames=40_000,
        nll_steps=1500, kl_steps=200, batch_size=256, kl_batch_size=256,
        nll_learning_rate=1e-3, kl_learning_rate=5e-5, kl_weight=0.1, force_weight=1.0,
        n_samples=20_000, n_metric_samples=10_000, n_bootstrap=200,
    ),
    # The benchmark profile: a larger model, mostly reverse-KL training (the 46k shipped frames are
    # fitted within a few thousand NLL steps; longer NLL training only overfits). A GPU helps.
    "full": RunProfile(
        name="full", n_coupling_layers=12, hidden=(256, 256), n_bins=12, max_train_frames=45_000,
        nll_steps=3000, kl_steps=20_000, batch_size=512, kl_batch_size=1024,
        nll_learning_rate=1e-3, kl_learning_rate=1e-4, kl_weight=1.0, force_weight=1.0,
        n_samples=100_000, n_metric_samples=10_000, n_bootstrap=500,
    ),
    # Seconds: the end-to-end test of the job's plumbing (numbers are meaningless).
    "smoke": RunProfile(
        name="smoke", n_coupling_layers=2, hidden=(16,), n_bins=4, max_train_frames=500,
        nll_steps=6, kl_steps=3, batch_size=32, kl_batch_size=16,
        nll_learning_rate=1e-3, kl_learning_rate=1e-4, kl_weight=0.3, force_weight=1.0,
        n_samples=300, n_metric_samples=200, n_bootstrap=20,
    ),
}


def get_profile(name: str) -> RunProfile:
    """The profile called ``name``; ValueError listing the available ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; available: {', '.join(PROFILES)}") from None


#: Loss terms of ``boltzgen run --loss``.
LOSS_TERMS = ("nll", "fm", "kl")


def loss_weights(spec: str | None, profile: RunProfile, flow: str = "spline") -> dict[str, float]:
    """Weights ``{"nll", "fm", "kl"}`` from a ``--loss`` spec such as ``"nll,fm,kl"`` or
    ``"nll=1,fm=3,kl=0.1"``: listed terms without a weight take the profile's (nll 1,
    fm ``force_weight``, or ``smooth_force_weight`` for ``flow="smooth"``, kl ``kl_weight``),
    terms not listed get 0. None: the profile's recipe (all three). The reverse KL only enters
    the second training stage.
    """
    fm = profile.smooth_force_weight if flow == "smooth" else profile.force_weight
    defaults = {"nll": 1.0, "fm": fm, "kl": profile.kl_weight}
    if spec is None:
        return defaults
    weights = dict.fromkeys(LOSS_TERMS, 0.0)
    for item in (part.strip() for part in spec.split(",")):
        name, _, value = item.partition("=")
        name = name.strip().lower()
        if name not in LOSS_TERMS:
            raise ValueError(f"unknown loss term {name!r} in --loss {spec!r}; terms: {', '.join(LOSS_TERMS)}")
        try:
            weight = float(value) if value else defaults[name]
        except ValueError:
            raise ValueError(f"loss weight of {name!r} must be a number, got {value!r}") from None
        if not weight >= 0:
            raise ValueError(f"loss weight of {name!r} must be >= 0, got {weight}")
        weights[name] = weight
    if weights["nll"] == 0 and weights["fm"] == 0:
        raise ValueError(f"--loss {spec!r}: the first training stage needs nll or fm with a positive weight")
    return weights
