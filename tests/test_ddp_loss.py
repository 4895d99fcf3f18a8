"""The distributed loss equals the single-process loss on the global batch, gradients included.

Two CPU ranks (gloo) each hold half of a fixed global batch and run a tiny DDP-wrapped projector.
Checked on every rank against a single-process reference computed in the same process:
- the loss value;
- the gradient reaching each rank's local embeddings: world_size x the reference rows (the backward
  of all_gather sums the identical per-rank losses' gradients);
- the DDP-averaged parameter gradient: exactly the single-process gradient, so no loss rescaling.
"""

from __future__ import annotations

import copy
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.loss import BarlowTwinsLoss, barlow_twins_loss

WORLD = 2
GLOBAL_BATCH, IN_DIM, OUT_DIM = 8, 6, 5
TIMEOUT_S = 180  # generous: two spawned ranks importing torch on a busy 2-core machine


class TwoViews(nn.Module):
    """Both views in one forward, as a DDP-wrapped Barlow Twins model does it."""

    def __init__(self, proj: nn.Module):
        super().__init__()
        self.proj = proj

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.proj(x1), self.proj(x2)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        gen = torch.Generator().manual_seed(0)
        x1 = torch.randn(GLOBAL_BATCH, IN_DIM, generator=gen)
        x2 = x1 + 0.5 * torch.randn(GLOBAL_BATCH, IN_DIM, generator=gen)
        torch.manual_seed(1)
        proj = nn.Linear(IN_DIM, OUT_DIM)

        # Single-process reference on the whole batch.
        ref_model = copy.deepcopy(proj)
        r1, r2 = ref_model(x1), ref_model(x2)
        r1.retain_grad()
        r2.retain_grad()
        ref = barlow_twins_loss(r1, r2)
        ref.loss.backward()

        # Distributed: this rank's half of the batch.
        model = DistributedDataParallel(TwoViews(copy.deepcopy(proj)))
        n = GLOBAL_BATCH // WORLD
        rows = slice(rank * n, (rank + 1) * n)
        z1, z2 = model(x1[rows], x2[rows])
        z1.retain_grad()
        z2.retain_grad()
        out = BarlowTwinsLoss()(z1, z2)
        out.loss.backward()

        tol = dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.loss, ref.loss, **tol)
        torch.testing.assert_close(out.c, ref.c, **tol)
        torch.testing.assert_close(z1.grad, WORLD * r1.grad[rows], **tol)
        torch.testing.assert_close(z2.grad, WORLD * r2.grad[rows], **tol)
        got = model.module.proj
        torch.testing.assert_close(got.weight.grad, ref_model.weight.grad, **tol)
        torch.testing.assert_close(got.bias.grad, ref_model.bias.grad, **tol)
        # Both ranks leave together: a rank that tears gloo down while its peer is still talking to it
        # can abort the peer ("terminate called without an active exception"), seen once in CI.
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_distributed_loss_matches_single_process():
    ctx = mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    # join() re-raises a worker's exception (e.g. a failed assertion) here.
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            pytest.fail(f"distributed workers did not finish within {TIMEOUT_S} s")
