"""Losses of the branch phase: SFT on response tokens, optionally mixed with top-k distillation, and the
retain term that keeps an expert's predictions on other traces at the backbone's."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from alloy.branch.data import IGNORE_INDEX


def kd_loss(student_logits: torch.Tensor, teacher_indices: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """Top-k distillation loss, averaged over tokens.

    For each token n: p = softmax(teacher_logits[n] / T) over the teacher's k ids (renormalized on the
    top k), log q = log_softmax(student_logits[n] / T) over the full vocabulary, read at those ids;
    the loss is T² · Σ_j p_j (log p_j − log q_j), i.e. KL(p ‖ q) on the teacher's support, scaled by
    T² so that its gradients keep their size as T changes.

    Shapes: student_logits (N, V); teacher_indices (N, k) int64; teacher_logits (N, k).
    """
    t = float(temperature)
    log_p = torch.log_softmax(teacher_logits.float() / t, dim=-1)
    log_q = torch.log_softmax(student_logits.float() / t, dim=-1).gather(-1, teacher_indices.long())
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * (t * t)


def branch_loss(logits: torch.Tensor, labels: torch.Tensor,
                teacher: tuple[torch.Tensor, torch.Tensor] | None = None, temperature: float = 1.0,
                alpha: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss, sft, kd) of one batch of a causal LM.

    `logits` (B, L, V) and `labels` (B, L) with IGNORE_INDEX outside the response; position i predicts
    label i+1. `teacher` is (indices, logits) with one row per response token of the batch, in row-major
    order (example by example, token by token). Without a teacher the loss is the SFT cross-entropy;
    with one it is (1 − alpha)·sft + alpha·kd.
    """
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    rows = logits[:, :-1][mask]
    sft = F.cross_entropy(rows.float(), shifted[mask])
    if teacher is None:
        return sft, sft, None
    indices, teacher_logits = teacher
    if indices.shape[0] != rows.shape[0]:
        raise ValueError(f"teacher rows ({indices.shape[0]}) do not match response tokens ({rows.shape[0]})")
    kd = kd_loss(rows, indices.to(rows.device), teacher_logits.to(rows.device), temperature)
    return (1.0 - alpha) * sft + alpha * kd, sft, kd


def retain_loss(student_logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(reference ‖ student) over the full vocabulary at every response position, averaged over them.

    `student_logits` (B, L, V) may be wider than `reference_logits` and `labels` (B, L', V) and (B, L')
    (its rows are padded further); both are read at the positions that predict a response token of
    `labels`, as in `branch_loss`.
    """
    width = labels.shape[1]
    mask = labels[:, 1:] != IGNORE_INDEX
    log_q = torch.log_softmax(student_logits[:, :width - 1][mask].float(), dim=-1)
    log_p = torch.log_softmax(reference_logits[:, :width - 1][mask].float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()
