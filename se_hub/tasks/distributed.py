"""Devices and processes of a fine-tuning run, apart from the training itself: :func:`plan_device`
decides device, process-group backend and mixed precision from the command line and the torchrun
environment (a pure function, tested for every case without a GPU); :class:`ProcessGroup` holds the
torchrun process group (gloo on CPU, nccl on CUDA) and reduces numbers over it; :class:`EpochSampler`
gives each process its share of an epoch in an order that depends on the seed and the epoch only."""
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Mapping, Optional, Sequence

import torch

AMP_CHOICES = ('auto', 'off', 'bf16', 'fp16')


class DeviceError(ValueError):
    """A --device / --amp choice this machine or this launch cannot honour."""


# ------------------------------------------------------------------------------------ devices

@dataclass(frozen=True)
class DevicePlan:
    """Where one process runs and how: what :func:`plan_device` decided."""
    device: str  # 'cpu', 'cuda:0', ...
    amp: Optional[str]  # None (float32), 'bfloat16' or 'float16'
    scaler: bool  # fp16 needs a GradScaler
    backend: Optional[str]  # process-group backend; None for a single process
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def amp_dtype(self) -> Optional[torch.dtype]:
        return getattr(torch, self.amp) if self.amp else None


def _cuda_facts():
    if not torch.cuda.is_available():
        return 0, False
    return torch.cuda.device_count(), torch.cuda.is_bf16_supported()


def plan_device(device: Optional[str] = None, amp: str = 'auto', environ: Optional[Mapping[str, str]] = None,
                cuda_devices: Optional[int] = None, bf16_supported: Optional[bool] = None) -> DevicePlan:
    """Device, mixed precision and process-group backend of this process.

    ``device``: None (CUDA when there is one, else the CPU), ``cpu``, ``cuda`` (under torchrun:
    the GPU of this process's ``LOCAL_RANK``) or ``cuda:N`` (one process only). ``amp``: ``auto``
    (CUDA: bf16 where supported, else fp16 with a scaler; CPU: off), ``off``, ``bf16``, ``fp16``
    (CUDA only). ``environ`` / ``cuda_devices`` / ``bf16_supported`` default to this machine's
    (they are arguments so that every case can be tested without a GPU)."""
    env = os.environ if environ is None else environ
    if cuda_devices is None or bf16_supported is None:
        count, bf16 = _cuda_facts()
        cuda_devices = count if cuda_devices is None else cuda_devices
        bf16_supported = bf16 if bf16_supported is None else bf16_supported
    try:
        world, rank, local_rank = (int(env.get(k, d)) for k, d in (('WORLD_SIZE', 1), ('RANK', 0), ('LOCAL_RANK', 0)))
    except ValueError:
        raise DeviceError('WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)') from None
    launched = world > 1
    text = (device or '').strip().lower()
    if not text:
        text = 'cuda' if cuda_devices else 'cpu'
    kind, _, index = text.partition(':')
    if kind == 'cpu' and not index:
        dev = 'cpu'
    elif kind == 'cuda':
        if not cuda_devices:
            raise DeviceError(f'--device {device}: torch finds no CUDA device on this machine '
                              f'(torch {torch.__version__}, CUDA build: {torch.version.cuda or "no"}); '
                              'use --device cpu, or install a CUDA build of torch')
        if index:
            if not index.isdigit():
                raise DeviceError(f'--device {device}: expected cuda or cuda:N (N a GPU number)')
            if launched:
                raise DeviceError(f'--device {device} names one GPU, but torchrun started {world} processes: '
                                  'use --device cuda (each process takes the GPU of its LOCAL_RANK; choose GPUs '
                                  'with CUDA_VISIBLE_DEVICES)')
            n = int(index)
        else:
            n = local_rank
        if n >= cuda_devices:
            what = f'LOCAL_RANK {n}' if not index else f'cuda:{n}'
            raise DeviceError(f'--device {device}: {what} needs GPU {n}, but this machine shows {cuda_devices} '
                              f'GPU(s) (0..{cuda_devices - 1})')
        dev = f'cuda:{n}'
    else:
        raise DeviceError(f'--device {device}: choose cpu, cuda or cuda:N')

    choice = (amp or 'off').lower()
    if choice not in AMP_CHOICES:
        raise DeviceError(f'--amp {amp}: choose one of {", ".join(AMP_CHOICES)}')
    cuda = dev.startswith('cuda')
    if choice == 'auto':
        precision = ('bfloat16' if bf16_supported else 'float16') if cuda else None
    elif choice == 'bf16':
        if cuda and not bf16_supported:
            raise DeviceError(f'--amp bf16: GPU {dev} does not support bfloat16; use --amp fp16')
        precision = 'bfloat16'
    elif choice == 'fp16':
        if not cuda:
            raise DeviceError('--amp fp16 needs a CUDA device (on a CPU use --amp bf16 or --amp off)')
        precision = 'float16'
    else:
        precision = None
    backend = ('nccl' if cuda else 'gloo') if launched else None
    return DevicePlan(dev, precision, precision == 'float16', backend, world, rank, local_rank)


def autocast(plan: DevicePlan):
    dtype = plan.amp_dtype
    return torch.autocast(torch.device(plan.device).type, dtype=dtype or torch.float32, enabled=dtype is not None)


class ProcessGroup:
    """The torchrun process group (created here when needed, destroyed by :meth:`close`)."""

    def __init__(self, plan: DevicePlan):
        import torch.distributed as dist
        self.dist, self.plan = dist, plan
        self.device = torch.device(plan.device)
        if self.device.type == 'cuda':
            torch.cuda.set_device(self.device)
        self.owned = False
        if plan.world > 1 and not dist.is_initialized():
            dist.init_process_group(plan.backend, rank=plan.rank, world_size=plan.world)
            self.owned = True
        self.active = plan.world > 1 and dist.is_initialized()
        self.world = dist.get_world_size() if self.active else 1
        self.rank = dist.get_rank() if self.active else 0
        self.main = self.rank == 0

    def sum(self, values: Sequence[float]) -> List[float]:
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        if self.active:
            self.dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> List[Any]:
        if not self.active:
            return [obj]
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            self.dist.barrier()

    def close(self) -> None:
        if self.owned:
            self.dist.destroy_process_group()


# --------------------------------------------------------------------------------- data order

class EpochSampler(torch.utils.data.Sampler):
    """This process's share of one epoch: a permutation that depends on (seed, epoch) only, padded
    to a multiple of the process count (as DistributedSampler), then every world-th index from
    rank. With ``flip=True`` each index comes with a horizontal-flip decision drawn the same way.
    A resumed run therefore sees the same batches as an uninterrupted one."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True,
                 flip: bool = False):
        self.size, self.seed, self.rank, self.world, self.shuffle, self.flip = size, seed, rank, world, shuffle, flip
        self.epoch = 0
        self.per_rank = math.ceil(size / world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist() if self.shuffle else list(range(self.size))
        flips = (torch.rand(self.size, generator=g) < 0.5).tolist() if self.flip else None
        order += order[:self.per_rank * self.world - self.size]
        mine = order[self.rank::self.world]
        return iter([(i, flips[i]) for i in mine] if flips is not None else mine)
