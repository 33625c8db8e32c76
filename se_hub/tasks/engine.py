"""The one fine-tuning engine of se_hub: classification and detection supply a model, data, a loss
and an evaluation (a :class:`Task`); the engine does everything else.

- devices and processes (:mod:`.distributed`): :func:`plan_device` decides device, process-group
  backend and mixed precision; :class:`ProcessGroup` holds the torchrun process group;
- seeding (``timm.utils.random_seed``: seed + rank), the data order (:class:`EpochSampler`: a
  function of seed and epoch only), AMP (bf16, or fp16 with a ``GradScaler``), EMA
  (``timm.utils.ModelEmaV3``), gradient clipping, the optimizer
  (``timm.optim.create_optimizer_v2``) and a per-step LR schedule (``timm.scheduler``);
- outputs: one run per output directory (a lock on it, :mod:`.output_lock`), atomic
  ``last.pth`` / ``best.pth`` (:mod:`se_hub.files`), exact resume (model,
  optimizer, schedule, EMA, scaler, the RNG of every process, the step), ``metrics.jsonl`` (one
  row per epoch), ``curves.png``, progress (a bar on a terminal, plain lines otherwise), and the
  task's export by rank 0.

Several processes: ``torchrun --nproc_per_node N $(which se-hub) finetune ...`` (or
``finetune-detect``): DistributedDataParallel, ``--batch-size`` per process, only rank 0 writes.
"""
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional

import torch
from torch import nn

from .. import files
from . import checkpoints
from .distributed import EpochSampler, ProcessGroup, autocast, plan_device
from .output_lock import hold_output

LAST, BEST, METRICS, CURVES = 'last.pth', 'best.pth', 'metrics.jsonl', 'curves.png'
CHECKPOINT_VERSION = 2
SCHEDULES = ('cosine', 'step')
EXPORTS = ('best', 'last')  # which weights a run exports: the best epoch's (by the task's score) or the last


# ---------------------------------------------------------------------------------- progress

class Progress:
    """A tqdm bar on a terminal; elsewhere (CI logs, nohup, a file) one plain line every
    ``every`` steps and never a carriage return."""

    def __init__(self, total: int, desc: str, enabled: bool = True, every: int = 50, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.desc, self.every, self.count = total, desc, max(1, int(every)), 0
        self.enabled = enabled
        self.bar = None
        self.postfix: Dict[str, str] = {}
        isatty = getattr(self.stream, 'isatty', lambda: False)
        if enabled and isatty():
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, unit='step', leave=False, dynamic_ncols=True, file=self.stream)

    def update(self, **postfix: str) -> None:
        self.count += 1
        self.postfix = postfix
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update()
        elif self.enabled and self.count % self.every == 0 and self.count < self.total:
            extra = ''.join(f'  {k} {v}' for k, v in postfix.items())
            print(f'{self.desc}  step {self.count}/{self.total}{extra}', file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------- the task

@dataclass
class TrainConfig:
    """What the engine needs to know of a run. Each task's options extend it (``FinetuneOptions``,
    ``DetectOptions``), re-declaring only the defaults that differ; the engine takes that object."""
    what: ClassVar[str] = 'training'  # names the options in errors
    epochs: int
    batch_size: int = 32  # per process
    optimizer: str = 'adamw'  # any timm optimizer name: adamw, sgd (Nesterov), momentum (plain)
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    layer_decay: Optional[float] = None
    sched: str = 'cosine'  # per-step cosine to min_lr, or step decay (SCHEDULES)
    warmup_epochs: float = 1.0
    warmup_steps: Optional[int] = None  # overrides warmup_epochs
    warmup_lr_factor: float = 0.01  # the warm-up starts at lr x this
    decay_epochs: float = 30.0
    decay_rate: float = 0.1
    min_lr: float = 0.0
    ema: bool = False
    ema_decay: float = 0.998
    amp: str = 'auto'  # distributed.AMP_CHOICES: auto (CUDA: bf16 if supported, else fp16; CPU: off), off, bf16, fp16
    grad_clip: Optional[float] = None
    seed: int = 0
    num_workers: int = 2
    device: Optional[str] = None
    deterministic: bool = False
    resume: bool = False
    export: str = 'best'  # EXPORTS: the weights the task exports at the end
    progress: bool = True
    log_every: int = 50  # plain progress lines (not a terminal): one every this many steps

    @classmethod
    def from_options(cls, epochs: int, options: Mapping[str, Any]):
        """``cls(epochs, **options)``; an unknown option name is one error that lists the known ones."""
        known = {f.name for f in fields(cls)} - {'epochs'}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown {cls.what} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(epochs=int(epochs), **options)

    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        """Every option's default (``epochs`` has none)."""
        out = {}
        for f in fields(cls):
            if f.default is not MISSING:
                out[f.name] = f.default
            elif f.default_factory is not MISSING:
                out[f.name] = f.default_factory()
        return out


class Task:
    """What a task supplies. ``net`` is the model as built (never the DDP wrapper)."""
    name = 'task'
    score = 'score'  # the row key that picks the best epoch (higher is better)
    flip = False  # ask EpochSampler for horizontal-flip decisions
    find_unused_parameters = False
    collate_fn: Optional[Callable] = None
    train_set: Any = None

    def build(self, engine: 'Engine', resuming: bool) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch, device: torch.device):
        """(loss tensor, images in the batch, {name: float} for the epoch's averages)."""
        raise NotImplementedError

    def evaluate(self, net: nn.Module, engine: 'Engine', prefix: str = '') -> Dict[str, Any]:
        """Metrics over the whole validation set (reduced over processes), keys prefixed."""
        return {}

    def train_mode(self, net: nn.Module) -> None:
        net.train()

    def meta(self) -> Dict[str, Any]:
        """Kept in each checkpoint; :meth:`check_resume` compares it with the run being resumed."""
        return {}

    def check_resume(self, ckpt: Dict[str, Any], path: Path) -> None:
        pass

    def start_text(self, engine: 'Engine') -> str:
        return f'{self.name}: {engine.config.epochs} epochs'

    def epoch_text(self, row: Dict[str, Any]) -> str:
        return ''

    def curves(self, history: List[Dict[str, Any]]):
        """(loss series keys, metric series keys, metric panel title, y range or None, chart title)."""
        return [], [], '', None, ''

    def export(self, net: nn.Module, ckpt: Dict[str, Any], which: str, engine: 'Engine') -> Any:
        return None


# -------------------------------------------------------------------------------- the engine

class Engine:
    """Runs a :class:`Task` for ``config.epochs`` epochs into ``output``."""

    def __init__(self, config: TrainConfig, output):
        if int(config.epochs) < 1:
            raise ValueError('epochs must be at least 1')
        if config.batch_size < 1:
            raise ValueError('batch size must be at least 1')
        if config.sched not in SCHEDULES:
            raise ValueError(f"sched must be 'cosine' or 'step', not {config.sched!r}")
        if config.sched == 'step' and not (config.decay_epochs > 0 and 0 < config.decay_rate <= 1):
            raise ValueError(f'the step schedule needs decay_epochs > 0 and 0 < decay_rate <= 1, got '
                             f'{config.decay_epochs} and {config.decay_rate}')
        if config.export not in EXPORTS:
            raise ValueError(f"export must be 'best' or 'last', not {config.export!r}")
        self.config, self.out = config, Path(output)
        self.plan = plan_device(config.device, config.amp)
        self.pg: Optional[ProcessGroup] = None

    # ---- small helpers the tasks use
    @property
    def device(self) -> torch.device:
        return torch.device(self.plan.device)

    @property
    def main(self) -> bool:
        return self.pg is None or self.pg.main

    def log(self, *args, **kwargs) -> None:
        if self.main:
            print(*args, **kwargs)

    def loader(self, dataset, shuffle: bool, flip: bool = False, batch_size: Optional[int] = None,
               collate_fn=None, drop_last: bool = False):
        from torch.utils.data import DataLoader
        pg = self.pg
        sampler = EpochSampler(len(dataset), self.config.seed, pg.rank, pg.world, shuffle, flip)
        return DataLoader(dataset, batch_size=batch_size or self.config.batch_size, sampler=sampler,
                          num_workers=self.config.num_workers, collate_fn=collate_fn, drop_last=drop_last,
                          pin_memory=self.device.type == 'cuda')

    def share(self, dataset):
        """This process's share of an evaluation set: every world-th item, no padding (each item
        is counted once over the processes)."""
        from torch.utils.data import Subset
        return Subset(dataset, range(self.pg.rank, len(dataset), self.pg.world))

    # ---- the run
    def run(self, task: Task):
        deterministic = (torch.are_deterministic_algorithms_enabled(),
                         torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
        if self.config.deterministic:
            os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.pg = ProcessGroup(self.plan)
        try:
            # one run per output directory (rank 0 writes, so rank 0 holds it); a --resume of a missing one fails
            # in _prepare without making it
            with hold_output(self.out, create=not self.config.resume) if self.pg.main else nullcontext():
                self._prepare(task)
                return self._fit(task)
        finally:
            self.pg.close()
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
            torch.backends.cudnn.benchmark = deterministic[2]

    def _prepare(self, task: Task) -> None:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler, StepLRScheduler
        from timm.utils import ModelEmaV3, random_seed

        cfg, pg = self.config, self.pg
        last = self.out / LAST
        self.ckpt = None
        if cfg.resume:
            if not last.is_file():
                raise FileNotFoundError(f'nothing to resume: {last} not found (leave out --resume to start a new run)')
            self.ckpt = checkpoints.load(last)
            if self.ckpt.get('version') != CHECKPOINT_VERSION or self.ckpt.get('task') != task.name:
                raise ValueError(f'{last} is not a checkpoint of se-hub {task.name} (version {CHECKPOINT_VERSION})')
            task.check_resume(self.ckpt, last)
        elif last.exists():
            raise FileExistsError(f'{self.out} already holds a run ({LAST}); pass --resume to continue it, or '
                                  'choose another --output')

        random_seed(cfg.seed, pg.rank)
        self.net = task.build(self, resuming=self.ckpt is not None)
        self.net.to(self.device)
        self.train_loader = self.loader(task.train_set, shuffle=True, flip=task.flip, collate_fn=task.collate_fn)
        self.steps_per_epoch = len(self.train_loader)
        self.optimizer = create_optimizer_v2(self.net, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                             momentum=cfg.momentum, layer_decay=cfg.layer_decay)
        total = self.steps_per_epoch * cfg.epochs
        warmup = (cfg.warmup_steps if cfg.warmup_steps is not None
                  else int(round(cfg.warmup_epochs * self.steps_per_epoch)))
        warmup = min(max(0, warmup), max(0, total - 1))
        start_lr = cfg.lr * cfg.warmup_lr_factor
        # both schedules count optimizer steps: the LR follows the step exactly, also on resume
        if cfg.sched == 'step':
            decay = max(1, int(round(cfg.decay_epochs * self.steps_per_epoch)))
            self.scheduler = StepLRScheduler(self.optimizer, decay_t=decay, decay_rate=cfg.decay_rate,
                                             warmup_t=warmup, warmup_lr_init=start_lr, t_in_epochs=False)
        else:
            self.scheduler = CosineLRScheduler(self.optimizer, t_initial=total, lr_min=cfg.min_lr, warmup_t=warmup,
                                               warmup_lr_init=start_lr, t_in_epochs=False)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.plan.scaler else None
        self.ema = ModelEmaV3(self.net, decay=cfg.ema_decay, use_warmup=True) if cfg.ema else None
        self.model = self.net
        if pg.active:
            from torch.nn.parallel import DistributedDataParallel
            self.model = DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                find_unused_parameters=task.find_unused_parameters)
        self.start_epoch, self.step, self.history = 0, 0, []
        self.best_epoch, self.best_score = 0, -math.inf
        if self.ckpt is not None:
            self._restore(self.ckpt, task)
        if pg.main:
            self.out.mkdir(parents=True, exist_ok=True)
            files.remove_stale_temporaries(self.out)
            if self.ckpt is not None:
                # a kill between last.pth and best.pth of the best epoch: best equals last then
                if self.best_epoch == self.start_epoch and self.best_epoch > 0:
                    files.copy_atomic(last, self.out / BEST)
                self._write_metrics(task, rewrite=True)
        pg.barrier()

    def _restore(self, ckpt: Dict[str, Any], task: Task) -> None:
        self.net.load_state_dict(ckpt['model'])
        self.optimizer.load_state_dict(ckpt['optimizer'])
        if ckpt['epochs'] == self.config.epochs:
            self.scheduler.load_state_dict(ckpt['scheduler'])
        else:  # the schedule is a function of the step: recomputed for the new length
            self.log(f"note: {ckpt['epochs']} epochs were planned, now {self.config.epochs}: the LR schedule is "
                     'stretched to the new length from here on')
        if self.scaler is not None and ckpt.get('scaler'):
            self.scaler.load_state_dict(ckpt['scaler'])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt['ema'] if ckpt.get('ema') else ckpt['model'])
        self.start_epoch, self.step = ckpt['epoch'], ckpt['step']
        self.history = list(ckpt['history'])
        self.best_epoch, self.best_score = ckpt['best_epoch'], ckpt['best_score']
        states = ckpt.get('rng') or []
        if len(states) == self.pg.world:
            checkpoints.set_rng_state(states[self.pg.rank])
        else:  # another number of processes: a fresh, still deterministic, random state
            from timm.utils import random_seed
            random_seed(self.config.seed + 1000 * self.start_epoch, self.pg.rank)
        self.scheduler.step_update(self.step)

    def _train_epoch(self, task: Task, epoch: int) -> Dict[str, float]:
        from .data import worker_errors_named
        cfg, pg = self.config, self.pg
        self.train_loader.sampler.set_epoch(epoch)
        task.train_mode(self.net)
        sums: Dict[str, float] = {}
        seen = 0
        lr = max(g['lr'] for g in self.optimizer.param_groups)
        start = time.perf_counter()
        bar = Progress(self.steps_per_epoch, f'epoch {epoch + 1}/{cfg.epochs}', cfg.progress and pg.main,
                       every=cfg.log_every)
        with bar, worker_errors_named():
            for batch in self.train_loader:
                with autocast(self.plan):
                    loss, n, parts = task.loss(self.model, batch, self.device)
                if not torch.isfinite(loss):
                    last = self.out / LAST
                    kept = f'the last good checkpoint is {last}' if last.exists() else 'no checkpoint was written yet'
                    hint = 'lower --lr' + (f', or --amp off (this ran {self.plan.amp})' if self.plan.amp else '')
                    raise FloatingPointError(f'the loss is {loss.item()} at epoch {epoch + 1} {parts}; {kept} '
                                             f'({hint}?)')
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    if cfg.grad_clip:
                        self.scaler.unscale_(self.optimizer)
                        nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.backward()
                    if cfg.grad_clip:
                        nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
                    self.optimizer.step()
                lr = max(g['lr'] for g in self.optimizer.param_groups)  # the LR this step trained with
                self.step += 1
                self.scheduler.step_update(self.step)
                if self.ema is not None:
                    self.ema.update(self.net, step=self.step)
                seen += n
                sums['loss'] = sums.get('loss', 0.0) + loss.item() * n
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v * n
                elapsed = time.perf_counter() - start
                bar.update(loss=f"{sums['loss'] / max(1, seen):.4f}",
                           img_s=f'{seen * pg.world / max(elapsed, 1e-9):.1f}')
        keys = sorted(sums)
        totals = pg.sum([sums[k] for k in keys] + [seen])
        elapsed = time.perf_counter() - start
        n = max(1.0, totals[-1])
        row = {f'train_{k}': totals[i] / n for i, k in enumerate(keys)}
        row.update({'lr': lr, 'train_images_per_s': totals[-1] / elapsed, 'train_time_s': elapsed})
        return row

    def _sync_buffers(self) -> None:
        """Rank 0's BatchNorm statistics everywhere (each process updated its own from its own
        batches; rank 0's are the ones saved)."""
        if self.pg.active:
            from timm.utils import distribute_bn
            distribute_bn(self.net, self.pg.world, reduce=False)
            if self.ema is not None:
                distribute_bn(self.ema.module, self.pg.world, reduce=False)

    def _fit(self, task: Task):
        cfg, pg = self.config, self.pg
        self.log(task.start_text(self) if self.start_epoch == 0 else
                 f'resuming {self.out} after epoch {self.start_epoch} of {cfg.epochs}')
        for epoch in range(self.start_epoch, cfg.epochs):
            row: Dict[str, Any] = {'epoch': epoch + 1}
            row.update(self._train_epoch(task, epoch))
            self._sync_buffers()
            row.update(task.evaluate(self.net, self))
            if self.ema is not None:
                row.update(task.evaluate(self.ema.module, self, prefix='ema_'))
            key = f'ema_{task.score}' if self.ema is not None and f'ema_{task.score}' in row else task.score
            score = row.get(key)
            is_best = score is not None and score > self.best_score
            if is_best:
                self.best_epoch, self.best_score = epoch + 1, score
            self.history.append(row)
            rng = pg.gather(checkpoints.rng_state())
            if pg.main:
                files.save_atomic(self._checkpoint(task, rng), self.out / LAST)
                if is_best:
                    files.copy_atomic(self.out / LAST, self.out / BEST)
                self._write_metrics(task)
                self.log(f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.4f}"
                         f"{task.epoch_text(row)}  lr {row['lr']:.2e}  {row['train_images_per_s']:.1f} img/s  "
                         f"{row['train_time_s']:.1f}s{'  *best*' if is_best else ''}", flush=True)
        pg.barrier()
        result = None
        if pg.main:
            which = self.config.export if (self.out / BEST).is_file() else 'last'
            ckpt = checkpoints.load(self.out / (BEST if which == 'best' else LAST))
            result = task.export(self.net.cpu(), ckpt, which, self)
        pg.barrier()
        return result

    def _checkpoint(self, task: Task, rng: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {
            'version': CHECKPOINT_VERSION, 'task': task.name, **task.meta(), 'config': asdict(self.config),
            'epoch': len(self.history), 'epochs': self.config.epochs, 'step': self.step,
            'model': self.net.state_dict(), 'optimizer': self.optimizer.state_dict(),
            'scheduler': self.scheduler.state_dict(), 'scaler': self.scaler.state_dict() if self.scaler else None,
            'ema': self.ema.module.state_dict() if self.ema is not None else None,
            'history': self.history, 'best_epoch': self.best_epoch, 'best_score': self.best_score, 'rng': rng,
        }

    def _write_metrics(self, task: Task, rewrite: bool = False) -> None:
        from ..plots import draw_curves
        path = self.out / METRICS
        if rewrite:
            files.write_text_atomic(path, ''.join(json.dumps(h) + '\n' for h in self.history))
        else:
            with open(path, 'a', encoding='utf-8') as f:
                f.write(json.dumps(self.history[-1]) + '\n')
        if self.history:
            losses, metrics, metric_title, y_range, title = task.curves(self.history)
            files.write_atomic(self.out / CURVES, lambda f: draw_curves(
                self.history, f, title=title, loss_keys=losses, metric_keys=metrics, metric_title=metric_title,
                metric_range=y_range))


def read_metrics(output) -> List[Dict[str, Any]]:
    """The rows of ``output/metrics.jsonl``."""
    return [json.loads(line) for line in (Path(output) / METRICS).read_text(encoding='utf-8').splitlines() if line]
