"""Training: losses (NLL, reverse KL with the lin-log cut) and a resumable staged trainer."""

from boltzgen.train.checkpoint import load_checkpoint, save_checkpoint
from boltzgen.train.losses import LinLogCut, nll_loss, reverse_kl_loss
from boltzgen.train.trainer import Trainer, TrainerConfig, TrainingStage, TrainingState

__all__ = [
    "LinLogCut",
    "Trainer",
    "TrainerConfig",
    "TrainingStage",
    "TrainingState",
    "load_checkpoint",
    "nll_loss",
    "reverse_kl_loss",
    "save_checkpoint",
]
