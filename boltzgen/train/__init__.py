"""Training: losses (NLL, reverse KL with the lin-log cut, force matching, temperature change) and
a resumable staged trainer."""

from boltzgen.train.checkpoint import load_checkpoint, save_checkpoint
from boltzgen.train.losses import LinLogCut, force_matching_loss, nll_loss, reverse_kl_loss
from boltzgen.train.temperature_change import (
    TemperatureChangeDiagnostics,
    TemperatureChangeHistory,
    base_to_target_loss,
    forward_works,
    mixture_forward_works,
    mixture_reverse_works,
    reverse_works,
    train_temperature_change,
)
from boltzgen.train.trainer import Trainer, TrainerConfig, TrainingStage, TrainingState

__all__ = [
    "LinLogCut",
    "Trainer",
    "TrainerConfig",
    "TrainingStage",
    "TrainingState",
    "force_matching_loss",
    "load_checkpoint",
    "nll_loss",
    "reverse_kl_loss",
    "save_checkpoint",
    # temperature-change training (base ensemble -> target ensemble)
    "TemperatureChangeDiagnostics",
    "TemperatureChangeHistory",
    "base_to_target_loss",
    "forward_works",
    "mixture_forward_works",
    "mixture_reverse_works",
    "reverse_works",
    "train_temperature_change",
]
