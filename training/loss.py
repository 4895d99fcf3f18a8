"""Barlow Twins objective (paper eq. 1-2), single-process and distributed.

The loss depends on batch statistics (the per-dimension mean/std and the cross-correlation over the
batch), so under data parallelism it must be computed on the *global* batch: every rank gathers all
ranks' embeddings and evaluates the same global loss. See :class:`BarlowTwinsLoss` for why the
gradients then come out right under DDP without any rescaling.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

# Variance floor of the batch normalisation. It equals the eps of the affine-free BatchNorm1d the
# original Barlow Twins code uses for the same step, so the two normalisations agree.
NORM_EPS = 1e-5


class BarlowTwinsOutput(NamedTuple):
    loss: torch.Tensor  # alpha * on_diag + lambd * off_diag (float32 scalar)
    on_diag: torch.Tensor  # sum_i (1 - C_ii)^2, unweighted
    off_diag: torch.Tensor  # sum_{i != j} C_ij^2, unweighted
    c: torch.Tensor  # (D, D) cross-correlation matrix, detached (for logging)


def batch_normalise(z: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """Standardise each dimension over the batch: (z - mean) / sqrt(biased var + eps).

    The biased (1/N) variance makes Zhat^T Zhat / N a true correlation, so C_ii lies in [-1, 1]
    (slightly inside because of eps); an unbiased std would let |C_ii| reach N/(N-1).
    """
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.005, alpha: float = 1.0, eps: float = NORM_EPS
) -> BarlowTwinsOutput:
    """Barlow Twins loss of two (N, D) embedding batches; N is the whole (global) batch.

    Runs in float32 whatever the input precision: the D x D correlations of a half-precision batch
    would lose the small off-diagonal terms the redundancy penalty is made of.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"need two (N, D) batches of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.shape[0] < 2:
        raise ValueError("batch statistics need at least 2 samples")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        n = z1.shape[0]
        c = batch_normalise(z1.float(), eps).T @ batch_normalise(z2.float(), eps) / n
        diag = torch.diagonal(c)
        on_diag = (1.0 - diag).pow(2).sum()
        off_diag = c.pow(2).sum() - diag.pow(2).sum()
        loss = alpha * on_diag + lambd * off_diag
    return BarlowTwinsOutput(loss=loss, on_diag=on_diag, off_diag=off_diag, c=c.detach())


class _GatherRows(torch.autograd.Function):
    """All ranks' (n, D) rows concatenated in rank order; the backward sums the gradient over ranks.

    Written with the public collectives because ``torch.distributed.nn.functional.all_gather`` (same
    semantics) is deprecated and its suggested replacement is a private module. Backward: every rank's
    loss depends on every row, so a rank's rows get the sum over ranks of the gradient each rank's loss
    sends them: an all-reduce of the full gradient, then this rank's slice (gloo has no reduce-scatter).
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group=group)
        ctx.n = z.shape[0]
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size(group=group))]
        dist.all_gather(parts, z, group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None


def _gather_batch(z: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Concatenate every rank's (n, D) rows in rank order, keeping the autograd graph."""
    return _GatherRows.apply(z.contiguous(), group)


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins loss on the global batch, also under ``torch.distributed``.

    When a process group with more than one rank is initialised, each rank's (n, D) embeddings are
    gathered (in float32, rank order) with an autograd-aware all-gather (``_GatherRows``), and every
    rank computes the *same* global loss over all W*n rows. All ranks must pass the same local batch size
    (``drop_last=True``). Batch statistics are global; any BatchNorm inside the projector is not
    covered by this and needs SyncBatchNorm separately.

    Gradient scaling under DDP: the backward of the gather sums, over the W ranks, the gradient
    each rank's (identical) loss sends to a row. So a rank's local rows receive W x dL/dz_local,
    where L is the single-process loss on the concatenated batch; its parameter gradient is
    W x (the single-process gradient's contribution of its own rows). DDP then *averages* over
    ranks: (1/W) * sum_r W * g_r = sum_r g_r, exactly the single-process gradient. Hence the loss
    is *not* rescaled. (Dividing it by W would make the per-row gradients match the single-process
    ones but leave the averaged parameter gradient W times too small; normalising by the local
    batch and summing across ranks, as the original code did, mis-scales it too.)
    """

    def __init__(
        self,
        lambd: float = 0.005,
        alpha: float = 1.0,
        eps: float = NORM_EPS,
        group: dist.ProcessGroup | None = None,
    ):
        super().__init__()
        self.lambd = lambd
        self.alpha = alpha
        self.eps = eps
        self.group = group

    def world_size(self) -> int:
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(group=self.group)
        return 1

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> BarlowTwinsOutput:
        z1, z2 = z1.float(), z2.float()
        if self.world_size() > 1:
            z1, z2 = _gather_batch(z1, self.group), _gather_batch(z2, self.group)
        return barlow_twins_loss(z1, z2, lambd=self.lambd, alpha=self.alpha, eps=self.eps)
