"""Data-parallel training over several processes (``torchrun``, PyTorch DDP).

``torchrun --nproc_per_node=K -m train --config NAME --out DIR`` starts K
processes; each finds its rank in the environment (RANK, WORLD_SIZE,
LOCAL_RANK), joins the process group (NCCL on CUDA, gloo on the CPU) and
trains on its slice of every global batch:

* ``batch_size`` is the global batch. Every rank draws the same epoch
  permutation and the same per-sample augmentation parameters for the whole
  global batch from the run's seeded generator and keeps its contiguous slice
  (rank r: pairs ``[r B/K, (r+1) B/K)``), so the global batch, and every
  image's two views, are exactly those of a single-process run.
* NT-Xent sees the negatives of all ranks: the head outputs are gathered
  with :func:`gather_with_grad` (its backward sums the gradients of all ranks
  and keeps the local slice), see :func:`train.losses.nt_xent_sharded`.
* Every BatchNorm (backbone, head, SimSiam's predictor) is synchronised
  (:func:`convert_sync_batchnorm`): batch statistics over the global batch,
  as in a single process. Without it the loss would differ from the
  single-process loss whenever the batch is split.
* The backbone is wrapped in ``DistributedDataParallel`` (gradients averaged
  during the backward); the head's and the predictor's gradients are
  averaged explicitly (:meth:`World.average_`), also inside the bilevel
  inner steps, so after every step the head is identical on all ranks.
  Epoch-end head updates (PCA refits, slow schemes) run on every rank and
  rank 0's head is then broadcast.
* Only rank 0 writes files (config.yaml, metrics.jsonl, checkpoints); the
  checkpoint's config records ``world_size``.

With one process nothing of this is used: the single-process trainer runs.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from repdiag.errors import UserError
from repdiag.precision import full_precision


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank, number of processes, GPU index on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process (and so collectives to call)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    def average_(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Average ``tensors`` over all ranks in place (one all-reduce); returns them."""
        if not self.distributed or not tensors:
            return tensors
        for group in _by_dtype(tensors):
            flat = _flatten_dense_tensors(group)
            dist.all_reduce(flat)
            flat.div_(self.world_size)
            for t, avg in zip(group, _unflatten_dense_tensors(flat, group), strict=True):
                t.copy_(avg)
        return tensors

    def average_grads_(self, params) -> None:
        """Average the ``.grad`` of ``params`` over all ranks (those that have one)."""
        self.average_([p.grad for p in params if p.grad is not None])

    def mean(self, value: float) -> float:
        """The mean of a number over all ranks (the same on every rank)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def broadcast_(self, tensors: list[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` on every rank with rank ``src``'s values."""
        if not self.distributed:
            return
        for t in tensors:
            dist.broadcast(t.data if isinstance(t, nn.Parameter) else t, src)

    def broadcast_module_(self, *modules: nn.Module) -> None:
        """Rank 0's parameters and buffers (e.g. BN statistics) on every rank."""
        self.broadcast_([t for m in modules for t in [*m.parameters(), *m.buffers()]])

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SINGLE = World()


def _by_dtype(tensors):
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return list(groups.values())


def env_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when not started by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def init_world(device: torch.device, timeout_s: float = 1800.0) -> tuple[World, torch.device]:
    """This process's :class:`World` and device, joining the process group if needed.

    A process group that is already initialised (a test, or a caller's own
    set-up) is used as it is. Otherwise, when torchrun's WORLD_SIZE is above 1,
    the group is initialised from the environment (``env://``: MASTER_ADDR,
    MASTER_PORT, RANK) with NCCL for a CUDA device, gloo otherwise. On CUDA
    each process takes the GPU ``LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
    else:
        size = env_world_size()
        if size <= 1:
            return SINGLE, device
        if not dist.is_available():
            raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if size > 1 and device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s): "
                            "start at most one process per GPU (torchrun --nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return World(rank, size, local), device


def shutdown() -> None:
    """Leave the process group (end of a torchrun run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------- collectives with gradients
class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient and keeps the local slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rank: int, size: int) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x)
        ctx.rank, ctx.n = rank, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None, None


def gather_with_grad(x: torch.Tensor, world: World) -> torch.Tensor:
    """The rows of ``x`` of all ranks, concatenated in rank order, differentiable.

    The gradient that reaches ``x`` is the sum over ranks of each rank's
    gradient of the gathered tensor at this rank's slice: the full derivative
    of the sum of all ranks' losses w.r.t. this rank's rows. With DDP dividing
    gradients by the world size, a per-rank loss that is the mean over the
    local anchors gives exactly the single-process gradient of the mean over
    all anchors. Every rank must pass the same number of rows.
    """
    if not world.distributed:
        return x
    return _GatherWithGrad.apply(x, world.rank, world.world_size)


class _AllReduceSum(torch.autograd.Function):
    """all_reduce(SUM) whose backward is again an all_reduce(SUM) (the sum's adjoint)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch, on any device.

    torch's ``nn.SyncBatchNorm`` runs on GPUs only; this one also runs on the
    CPU (gloo), which the tests use. In training mode with several processes
    the per-channel sum and then the sum of squared deviations from the
    global mean are all-reduced (two passes, float32), so the output, the
    gradients and the running statistics (unbiased variance over the global
    count) equal those of ``BatchNorm`` over the concatenated batch. In eval
    mode, or in one process, it is plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        with full_precision(x.device):
            xf = x.float()
            count = torch.full((1,), xf.numel() // max(1, c), dtype=torch.float32, device=x.device)
            total = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]))
            n = total[c]
            mean = total[:c] / n
            xc = xf - mean.view(shape)
            var = _AllReduceSum.apply((xc * xc).sum(dims)) / n
            y = xc * torch.rsqrt(var + self.eps).view(shape)
            if self.affine:
                y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = (self.momentum if self.momentum is not None
                     else 1.0 / float(self.num_batches_tracked))
                nf = float(n)
                unbiased = var.detach() * (nf / max(nf - 1.0, 1.0))
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(unbiased, alpha=f)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm in ``module`` synchronised across ranks (same parameters and buffers).

    torch's ``nn.SyncBatchNorm`` on CUDA (its fused kernels), :class:`SyncBatchNorm`
    elsewhere. The parameter and buffer tensors are the same objects, so
    state-dict keys and optimizers are unaffected.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out


def wrap_backbone(backbone: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The backbone in ``DistributedDataParallel`` (gradients averaged in the backward pass).

    Buffers are not broadcast at every forward: with synchronised BatchNorm
    the running statistics are computed identically on every rank.
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return DistributedDataParallel(backbone, device_ids=ids, forward_sync_buffers=False)
    return DistributedDataParallel(backbone, device_ids=ids, broadcast_buffers=False)
