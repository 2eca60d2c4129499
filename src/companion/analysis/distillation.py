"""Knowledge distillation: a student trained on a teacher's softened output distribution (Hinton et al. 2015)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from companion.nn.output import ModelOutput

__all__ = ["DistillationModel", "distillation_loss"]


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 2.0,
    targets: Tensor | None = None,
    alpha: float = 1.0,
) -> Tensor:
    r"""Hinton et al. (2015): the distillation loss of a student against a teacher.

    $\alpha\, \tau^2\, \mathrm{KL}(p_T^{\tau} \,\|\, p_S^{\tau}) + (1-\alpha)\, \mathrm{CE}(y, p_S)$, where
    $p^{\tau} = \operatorname{softmax}(z / \tau)$; the $\tau^2$ keeps the gradient scale of the soft
    term independent of $\tau$. Logits (..., V); targets (...) with -100 = ignore.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} != teacher logits {tuple(teacher_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha < 1.0 and targets is None:
        raise ValueError("alpha < 1 mixes in the hard-label loss: pass targets")
    V = student_logits.shape[-1]
    log_p_s = F.log_softmax(student_logits.reshape(-1, V) / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.reshape(-1, V) / temperature, dim=-1)
    soft = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2
    if alpha == 1.0:
        return soft
    hard = F.cross_entropy(student_logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
    return alpha * soft + (1.0 - alpha) * hard


class DistillationModel(nn.Module):
    """Wraps (student, frozen teacher) so `companion.training.trainer.train` minimises `distillation_loss`."""

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float = 2.0, alpha: float = 1.0):
        super().__init__()
        if student.config.vocab_size != teacher.config.vocab_size:
            raise ValueError(
                f"student vocab_size {student.config.vocab_size} != teacher vocab_size {teacher.config.vocab_size}"
            )
        self.student, self.teacher = student, teacher.eval()
        self.teacher.requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        self.config = student.config

    def train(self, mode: bool = True) -> DistillationModel:
        """Train mode for the student only; the teacher stays in eval mode."""
        self.student.train(mode)
        self.teacher.eval()
        self.training = mode
        return self

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> ModelOutput:
        """idx (B, T) -> the student's ModelOutput, its loss the distillation loss (None without targets)."""
        out = self.student(idx)  # logits (B, T, V)
        if targets is None:
            return out._replace(loss=None)
        with torch.no_grad():
            teacher_logits = self.teacher(idx).logits  # (B, T, V)
        loss = distillation_loss(out.logits, teacher_logits, self.temperature, targets, self.alpha)
        return out._replace(loss=loss)
