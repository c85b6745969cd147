"""The losses of DINO-style self-distillation, in torch.

- :class:`DINOHead` and :func:`dino_loss` with :func:`centered_targets`: the projection head (MLP → bottleneck →
  L2-normalised → weight-normalised prototypes), the teacher's centering and sharpening and the cross-entropy
  between teacher and student views — Caron et al., "Emerging Properties in Self-Supervised Vision
  Transformers" (DINO), ICCV 2021, Sec. 3.1 and Alg. 1.
- :func:`sinkhorn_targets`: the teacher's Sinkhorn-Knopp centering that DINOv2 and DINOv3 use instead of the
  running centre — Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
  Assignments" (SwAV), NeurIPS 2020, Sec. 3.1; Oquab et al. (DINOv2), Sec. 4: a few alternating
  normalisations make every prototype equally used within the batch, so the teacher cannot put every image
  on one prototype (the collapse a running centre only slowly corrects on small batches).
- :func:`ibot_loss`: the masked-image-modelling loss on patch tokens — Zhou et al., "iBOT: Image BERT
  Pre-Training with Online Tokenizer", ICLR 2022: the student sees masked patches and predicts the teacher's
  (centred, sharpened) patch-token distribution at those positions.
- :func:`koleo_loss`: the Kozachenko–Leonenko differential-entropy regulariser that spreads features in a batch
  — Sablayrolles et al., "Spreading vectors for similarity search", ICLR 2019, as used in Oquab et al.,
  "DINOv2: Learning Robust Visual Features without Supervision", TMLR 2024, Sec. 4.
- :func:`gram_loss`: Gram anchoring — Siméoni et al., "DINOv3", arXiv:2508.10104 (2025), Sec. 4: the
  patch-to-patch cosine-similarity (Gram) matrix of the student is pulled towards that of an earlier "Gram
  teacher", which keeps dense features from degrading during long training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DINOHead", "centered_targets", "dino_loss", "gram_loss", "ibot_loss", "koleo_loss", "sinkhorn_targets",
           "update_center"]


class DINOHead(nn.Module):
    """DINO's projection head: a 3-layer MLP (GELU) to a ``bottleneck``-d code, L2-normalised, then a
    weight-normalised linear layer to ``out_dim`` prototypes (norm fixed to 1, as DINO's ``norm_last_layer``).

    Parameters
    ----------
    in_dim : int
        Backbone width.
    out_dim : int
        Number of prototypes K.
    hidden_dim, bottleneck_dim : int
        MLP width and code size.
    """

    def __init__(self, in_dim: int, out_dim: int = 4096, hidden_dim: int = 1024, bottleneck_dim: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # weight normalisation with the gain frozen at 1: the prototypes are unit vectors (DINO, Sec. 3.1)
        self.prototypes = nn.Parameter(torch.randn(out_dim, bottleneck_dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return z @ F.normalize(self.prototypes, dim=-1, eps=1e-6).t()


def centered_targets(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """Teacher probabilities: ``softmax((t - center) / temp)`` — centering then sharpening (DINO, Eq. 4)."""
    return F.softmax((teacher_logits.float() - center) / temp, dim=-1)


@torch.no_grad()
def sinkhorn_targets(teacher_logits: torch.Tensor, temp: float, n_iter: int = 3) -> torch.Tensor:
    """Teacher probabilities by Sinkhorn-Knopp: ``Q = exp(t / temp)`` scaled so that its columns (prototypes)
    share the batch equally and each row (sample) sums to one, ``n_iter`` alternations (SwAV, Alg. 1; DINOv2).

    Parameters
    ----------
    teacher_logits : tensor
        (B, K) teacher logits (cosines to the prototypes).
    temp : float
        Teacher temperature.
    n_iter : int
        Alternating normalisations (3 in SwAV and DINOv2).

    Returns
    -------
    tensor
        (B, K) rows summing to one.
    """
    logits = teacher_logits.float() / temp
    if logits.shape[0] == 0:  # a step with no masked patch (iBOT): no targets, not a crash
        return logits.clone()
    # subtracting the maximum keeps exp finite; the normalisations below remove the constant again
    q = torch.exp(logits - logits.max()).t()  # (K, B)
    n_proto, n_rows = q.shape
    q = q / q.sum().clamp_min(1e-30)
    for _ in range(int(n_iter)):
        q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-30) / n_proto
        q = q / q.sum(dim=0, keepdim=True).clamp_min(1e-30) / n_rows
    return (q * n_rows).t()


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """EMA of the teacher's mean logits: ``c ← m c + (1 − m) mean(t)`` (DINO, Eq. 4). Updated in place."""
    center.mul_(momentum).add_(teacher_logits.float().mean(dim=0, keepdim=True), alpha=1 - momentum)
    return center


def dino_loss(student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor],
              student_temp: float) -> torch.Tensor:
    """Cross-entropy between every teacher view and every *other* student view (DINO, Alg. 1).

    Parameters
    ----------
    student_logits : list of tensor
        One (B, K) tensor per student view (the 2 global views first, then the local ones).
    teacher_probs : list of tensor
        One (B, K) tensor per teacher view (the global views), from :func:`centered_targets`.
    student_temp : float
        Student temperature (0.1).
    """
    total, n = student_logits[0].new_zeros((), dtype=torch.float32), 0
    logp = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_logits]
    for i, t in enumerate(teacher_probs):
        for j, lp in enumerate(logp):
            if i == j:
                continue
            total = total - (t * lp).sum(dim=-1).mean()
            n += 1
    return total / max(n, 1)


def ibot_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor,
              student_temp: float) -> torch.Tensor:
    """iBOT's masked-patch cross-entropy, averaged per image over its masked patches, then over images.

    Parameters
    ----------
    student_logits, teacher_probs : tensor
        (M, K) at the masked positions only (``masks`` flattened, row-major over images then patches).
    masks : tensor of bool
        (B, N) patch masks; images with no masked patch do not count.
    """
    if student_logits.shape[0] == 0:
        return student_logits.new_zeros((), dtype=torch.float32)
    per_token = -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(dim=-1)
    counts = masks.sum(dim=1)  # (B,)
    owner = torch.repeat_interleave(torch.arange(masks.shape[0], device=masks.device), counts)
    weights = 1.0 / counts.clamp_min(1).float()[owner]
    return (per_token * weights).sum() / (counts > 0).sum().clamp_min(1)


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regulariser: ``−mean log ρ_i``, ρ_i the distance from each L2-normalised row to its nearest
    neighbour in the batch (DINOv2, Sec. 4; Sablayrolles et al. 2019)."""
    if x.shape[0] < 2:
        return x.new_zeros((), dtype=torch.float32)
    z = F.normalize(x.float(), dim=-1, eps=1e-6)
    d = torch.cdist(z, z)
    d = d + torch.eye(z.shape[0], device=z.device, dtype=d.dtype) * 1e4  # not its own neighbour
    return -torch.log(d.min(dim=1).values + eps).mean()


def gram_loss(student_patches: torch.Tensor, gram_teacher_patches: torch.Tensor) -> torch.Tensor:
    """Gram anchoring (DINOv3, Sec. 4): ``‖X_s X_sᵀ − X_g X_gᵀ‖²_F`` averaged over entries and images, with
    X the L2-normalised patch features (B, N, D) of the student and of the Gram teacher."""
    s = F.normalize(student_patches.float(), dim=-1, eps=1e-6)
    g = F.normalize(gram_teacher_patches.float(), dim=-1, eps=1e-6)
    return ((s @ s.transpose(1, 2) - g @ g.transpose(1, 2)) ** 2).mean()

