"""Knowledge distillation: train a small student from labels, a teacher's logits or a teacher embedding.

The setting of the tutorials: a few inputs carry labels, many more (the *transfer set*) carry only
what the teacher says about them. Each training step draws a labelled mini-batch (cross-entropy)
and a transfer mini-batch (the distillation term); ``mode`` picks the distillation term:

* ``"plain"`` – none: cross-entropy on the labelled examples only.
* ``"logit"`` – Hinton et al. (2015): ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` between teacher
  logits ``t`` and student logits ``s`` at temperature ``T``.
* ``"nfk"``   – the student's penultimate features go through a linear head (trained with it) that
  regresses a per-example target, the teacher's low-rank NFK embedding (Zhang et al., ICLR 2022).
  Any per-example target works here, e.g. the teacher's penultimate activations (FitNets-style).
* ``"logit+nfk"`` – both terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import NFKError, NFKTypeError

MODES = ("plain", "logit", "nfk", "logit+nfk")


@dataclass
class StudentResult:
    """A trained student.

    Attributes
    ----------
    net : nn.Sequential
        The student classifier (eval mode).
    head : nn.Linear or None
        The regression head from penultimate features to the target embedding (``"nfk"`` modes).
    losses : list of float
        Mean total loss per epoch.
    """

    net: nn.Sequential
    head: nn.Linear | None = None
    losses: list[float] = field(default_factory=list)


@torch.no_grad()
def teacher_logits(teacher: nn.Module, X: Tensor, batch_size: int = 512) -> Tensor:
    """The teacher's logits on ``X`` (eval mode, no gradient)."""
    teacher.eval()
    return torch.cat([teacher(X[i : i + batch_size]) for i in range(0, len(X), batch_size)])


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton's distillation loss ``T² · KL(p_teacher^T ‖ p_student^T)``, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2


def labelled_subset(y: Tensor, per_class: int, seed: int = 0) -> Tensor:
    """Indices of ``per_class`` examples of each class, drawn by a seeded permutation (sorted)."""
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c)[:, 0]
        if len(idx) < per_class:
            raise NFKError(f"Class {int(c)} has {len(idx)} examples, fewer than per_class={per_class}.")
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(chosen).sort().values


def _check_inputs(
    student: nn.Module, X: Tensor, y: Tensor, labelled: Tensor, mode: str,
    logits: Tensor | None, targets: Tensor | None,
) -> None:
    if mode not in MODES:
        raise NFKError(f"mode={mode!r} is not one of {', '.join(repr(m) for m in MODES)}.")
    if not isinstance(student, nn.Sequential) and "nfk" in mode:
        raise NFKTypeError(
            "mode='nfk' needs an nn.Sequential student (its penultimate layer feeds the head)."
        )
    if len(y) != len(X):
        raise NFKError(f"X has {len(X)} rows but y has {len(y)}.")
    if len(labelled) == 0:
        raise NFKError("There are no labelled examples: pass a non-empty `labelled`.")
    if "logit" in mode and (logits is None or len(logits) != len(X)):
        raise NFKError(f"mode={mode!r} needs the teacher (or its logits) for every row of X.")
    if "nfk" in mode and (targets is None or targets.dim() != 2 or len(targets) != len(X)):
        raise NFKError(f"mode={mode!r} needs targets of shape (len(X), k), one embedding row per input.")


def train_student(
    student: nn.Sequential,
    X: Tensor,
    y: Tensor,
    *,
    mode: str = "plain",
    labelled: Tensor | None = None,
    teacher: nn.Module | None = None,
    logits: Tensor | None = None,
    targets: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    epochs: int = 50,
    lr: float = 3e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> StudentResult:
    """Train ``student`` on a few labels plus a distillation term on the whole transfer set ``X``.

    Parameters
    ----------
    student : nn.Sequential
        The student classifier (trained in place, left in eval mode).
    X : Tensor (N, ...)
        The transfer set: every input the teacher's signal is available for.
    y : Tensor (N,)
        Labels; only the rows in ``labelled`` are used.
    mode : {"plain", "logit", "nfk", "logit+nfk"}
        The distillation term (see the module docstring).
    labelled : Tensor, optional
        Indices (or a boolean mask) of the rows whose labels the student may use; default all.
    teacher : nn.Module, optional
        Gives the logits for ``"logit"`` modes (or pass ``logits`` directly).
    logits : Tensor (N, C), optional
        Precomputed teacher logits on ``X``.
    targets : Tensor (N, k), optional
        Per-example regression targets for ``"nfk"`` modes, e.g. ``LowRankNFK(...).fit_transform(X)``.
        They are rescaled to unit mean squared norm, so ``beta`` means the same for any embedding.
    temperature : float
        Softmax temperature ``T`` of the logit term.
    alpha, beta : float
        Weights of the logit term and of the embedding term (the cross-entropy has weight 1).
    epochs : int
        Passes over the transfer set; each step also draws a labelled mini-batch.
    lr, batch_size, weight_decay : training settings (Adam).
    seed : int
        Seeds the head's initialisation and the mini-batch order.

    Returns
    -------
    StudentResult
    """
    if labelled is None:
        labelled = torch.arange(len(X))
    elif labelled.dtype == torch.bool:
        labelled = torch.nonzero(labelled)[:, 0]
    if teacher is not None and logits is None and "logit" in mode:
        logits = teacher_logits(teacher, X)
    _check_inputs(student, X, y, labelled, mode, logits, targets)
    if temperature <= 0:
        raise NFKError(f"temperature must be positive, got {temperature}.")

    gen = torch.Generator().manual_seed(seed)
    head = None
    params = list(student.parameters())
    if "nfk" in mode:
        targets = targets.to(X.dtype)
        targets = targets / targets.pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
        hidden = student[-1].in_features
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            head = nn.Linear(hidden, targets.shape[1]).to(X.dtype)
        params += list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    body = student[:-1]

    steps = max(1, -(-len(X) // batch_size))
    losses = []
    student.train()
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        total = 0.0
        for s in range(steps):
            lab = labelled[torch.randint(len(labelled), (min(batch_size, len(labelled)),), generator=gen)]
            loss = F.cross_entropy(student(X[lab]), y[lab])
            if mode != "plain":
                idx = perm[s * batch_size : (s + 1) * batch_size]
                feats = body(X[idx])
                out = student[-1](feats)
                if "logit" in mode:
                    loss = loss + alpha * kd_loss(out, logits[idx], temperature)
                if "nfk" in mode:
                    loss = loss + beta * (head(feats) - targets[idx]).pow(2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / steps)
    student.eval()
    if head is not None:
        head.eval()
    return StudentResult(student, head, losses)
