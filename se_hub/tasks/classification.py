"""Fine-tuning and evaluating se_hub classifiers on a directory of images.

Python::

    import se_hub.tasks
    result = se_hub.tasks.finetune(model='se_resnet50b.ra2_in1k', data='flowers/', epochs=10,
                                   output='runs/flowers', batch_size=32, lr=5e-4, ema=True)
    result.model            # the fine-tuned model (the exported weights), eval mode, on the CPU
    se_hub.tasks.evaluate('local-dir:runs/flowers', 'flowers/').top1

Shell: ``se-hub finetune --model ... --data DIR --epochs N --output OUT`` and
``se-hub evaluate --model local-dir:OUT --data DIR``. Several processes:
``torchrun --nproc_per_node N $(which se-hub) finetune ...`` (DistributedDataParallel; gloo on
CPU, nccl on GPU; ``--batch-size`` is per process; only rank 0 writes).

What ``OUT`` holds (see :func:`finetune`): ``metrics.jsonl`` (one JSON object per epoch),
``curves.png``, ``last.pth`` (every epoch) and ``best.pth`` (the best val top-1), both written
atomically, and the fine-tuned model in timm's Hub format (``config.json``,
``model.safetensors``, ``README.md``) so that ``timm.create_model('local-dir:OUT',
pretrained=True)`` rebuilds it after ``import se_hub``.

Resuming (``resume=True`` / ``--resume``) restores model, optimizer, LR schedule, EMA, AMP
scaler, epoch counter, metrics history and the random state of every process; the data order
is a function of (seed, epoch). With the same settings (and ``num_workers=0`` or the same
worker count) a resumed run ends with the same weights as one that was never interrupted.
"""
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints
from .data import DataError, find_splits, worker_error_message

LAST, BEST, METRICS, CURVES = 'last.pth', 'best.pth', 'metrics.jsonl', 'curves.png'
CHECKPOINT_VERSION = 1


@dataclass
class FinetuneOptions:
    """Options of :func:`finetune` (``se-hub finetune --help`` describes each)."""
    pretrained: bool = True
    batch_size: int = 32  # per process
    img_size: Optional[int] = None  # default: the model's pretrained input size
    optimizer: str = 'adamw'  # 'adamw', 'sgd' (Nesterov), 'momentum' (plain, the paper's); any timm name
    lr: Optional[float] = None  # default 1e-3 (adamw) / 1e-2 (sgd)
    weight_decay: Optional[float] = None  # default 0.05 (adamw) / 1e-4 (sgd)
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    sched: str = 'cosine'  # 'cosine' (to min_lr over the run) or 'step' (x decay_rate every decay_epochs)
    decay_epochs: float = 30.0  # step schedule only
    decay_rate: float = 0.1  # step schedule only
    min_lr: float = 0.0
    label_smoothing: float = 0.1
    layer_decay: Optional[float] = None  # e.g. 0.75: each earlier layer group gets 0.75x the LR
    freeze_backbone: bool = False  # train the classifier only
    freeze_bn: bool = False  # BatchNorm statistics and affine parameters stay as loaded
    ema: bool = False
    ema_decay: float = 0.998
    amp: str = 'auto'  # 'auto' (CUDA: bf16 if supported else fp16; CPU: off), 'off', 'bf16', 'fp16'
    augment: bool = True
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    grad_clip: Optional[float] = None
    seed: int = 0
    num_workers: int = 2
    device: Optional[str] = None
    deterministic: bool = False
    resume: bool = False
    export: str = 'best'  # which weights OUT's Hub export holds: 'best' or 'last'
    push: Optional[str] = None  # Hub repo id to publish the export to
    progress: bool = True
    check_images: bool = True  # open every image's header before training


# options that change the computation: a resumed run with other values cannot continue exactly
_SAME_ON_RESUME = ('batch_size', 'img_size', 'optimizer', 'lr', 'weight_decay', 'momentum', 'warmup_epochs',
                   'sched', 'decay_epochs', 'decay_rate', 'min_lr', 'label_smoothing', 'layer_decay',
                   'freeze_backbone', 'freeze_bn', 'ema', 'ema_decay', 'amp', 'augment', 'drop_rate',
                   'drop_path_rate', 'grad_clip', 'seed')


@dataclass
class FinetuneResult:
    output: Path
    model: nn.Module  # the exported weights, eval mode, CPU
    classes: List[str]
    history: List[Dict[str, Any]]
    best_epoch: int
    best_top1: float
    exported: str  # 'best' or 'last'
    pushed: Optional[str] = None


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    count: int
    topk: int  # k of "top-5" (fewer when there are fewer classes)
    classes: List[str]  # rows of the confusion matrix (the data's classes)
    predicted_classes: List[str]  # its columns (the model's classes)
    confusion: List[List[int]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- setup

class _Dist:
    """The process group when launched by torchrun (WORLD_SIZE > 1), else a single process."""

    def __init__(self, device: Optional[str]):
        import torch.distributed as dist
        self.dist = dist
        self.world = int(os.environ.get('WORLD_SIZE', '1'))
        self.rank = int(os.environ.get('RANK', '0'))
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        if device is None:
            device = f'cuda:{local_rank}' if torch.cuda.is_available() else 'cpu'
        self.device = torch.device(device)
        if self.device.type == 'cuda':
            torch.cuda.set_device(self.device)
        self.owned = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group('nccl' if self.device.type == 'cuda' else 'gloo')
            self.owned = True
        self.active = self.world > 1 and dist.is_initialized()
        if self.active:
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
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

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) everywhere: each rank updated its own from its
        own batches, and rank 0's are the ones saved."""
        if self.active:
            for b in module.buffers():
                self.dist.broadcast(b, 0)

    def barrier(self) -> None:
        if self.active:
            self.dist.barrier()

    def close(self) -> None:
        if self.owned:
            self.dist.destroy_process_group()


def _seed_all(seed: int) -> None:
    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    amp = (amp or 'off').lower()
    if amp in ('off', 'none', 'fp32', 'false'):
        return None
    if amp == 'auto':
        if device.type != 'cuda':
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == 'bf16':
        return torch.bfloat16
    if amp == 'fp16':
        if device.type != 'cuda':
            raise ValueError('--amp fp16 needs a CUDA device (use --amp bf16 on a CPU)')
        return torch.float16
    raise ValueError(f"unknown --amp {amp!r}: choose auto, off, bf16 or fp16")


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _model_spec(spec: str) -> str:
    return f'local-dir:{spec}' if Path(spec).is_dir() else spec


def _create_model(spec: str, pretrained: bool, **kwargs) -> nn.Module:
    import timm

    from ..hub import _architecture
    from ..models.catalog import split_model_name
    if isinstance(spec, str) and not spec.startswith(('local-dir:', 'hf-hub:')):
        split_model_name(spec)
    model = timm.create_model(spec, pretrained=pretrained, **{k: v for k, v in kwargs.items() if v})
    _architecture(model)  # a local-dir: / hf-hub: model must be an se_hub one too
    return model


def _data_config(model: nn.Module, img_size: Optional[int]) -> Dict[str, Any]:
    from timm.data import resolve_data_config
    cfg = resolve_data_config({}, model=model)
    if img_size:
        cfg['input_size'] = (cfg['input_size'][0], img_size, img_size)
    return cfg


def _record_input_size(model: nn.Module, img_size: Optional[int]) -> None:
    """The exported config describes the resolution the model was fine-tuned at."""
    cfg = dict(model.pretrained_cfg)
    if img_size and tuple(cfg.get('input_size', ())[1:]) != (img_size, img_size):
        cfg['input_size'] = (cfg['input_size'][0], img_size, img_size)
        cfg.pop('test_input_size', None)
        cfg['pool_size'] = None
    model.pretrained_cfg = cfg


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


def _freeze(model: nn.Module, backbone: bool, bn: bool) -> None:
    head = {id(p) for p in model.get_classifier().parameters()}
    if backbone and not head:
        raise ValueError('--freeze-backbone: the model has no classifier parameters to train')
    for p in model.parameters():
        if backbone and id(p) not in head:
            p.requires_grad_(False)
    if bn:
        for m in model.modules():
            if _is_bn(m):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)


def _train_mode(model: nn.Module, backbone_frozen: bool, bn_frozen: bool) -> None:
    """Train mode, except frozen BatchNorm layers (their running statistics stay fixed)."""
    model.train()
    if backbone_frozen or bn_frozen:
        head = {id(m) for m in model.get_classifier().modules()}
        for m in model.modules():
            if _is_bn(m) and (bn_frozen or id(m) not in head):
                m.eval()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit='step', disable=not enabled, leave=False, dynamic_ncols=True,
                file=sys.stderr)


# ------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def _evaluate_loader(model: nn.Module, loader, device: torch.device, amp_dtype, label_map: Optional[List[int]],
                     num_true: int, num_pred: int, confusion: bool = False, progress=None) -> Dict[str, Any]:
    """Sums over ``loader`` (this process's share): loss, top-1 / top-k hits, count, confusion."""
    model.eval()
    k = min(5, num_pred)
    loss_sum = hits1 = hitsk = count = 0.0
    matrix = torch.zeros(num_true, num_pred, dtype=torch.int64)
    mapping = torch.tensor(label_map, device=device) if label_map is not None else None
    try:
        for images, targets in loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with _autocast(device, amp_dtype):
                logits = model(images)
            logits = logits.float()
            model_targets = mapping[targets] if mapping is not None else targets
            loss_sum += F.cross_entropy(logits, model_targets, reduction='sum').item()
            top = logits.topk(k, dim=1).indices
            hits1 += (top[:, 0] == model_targets).sum().item()
            hitsk += (top == model_targets[:, None]).any(dim=1).sum().item()
            count += targets.numel()
            if confusion:
                flat = targets.cpu() * num_pred + top[:, 0].cpu()
                matrix += torch.bincount(flat, minlength=num_true * num_pred).view(num_true, num_pred)
            if progress is not None:
                progress.update()
    except Exception as e:
        message = worker_error_message(e)
        if message:
            raise DataError(message) from None
        raise
    return {'loss_sum': loss_sum, 'hits1': hits1, 'hitsk': hitsk, 'count': count, 'k': k, 'confusion': matrix}


def _label_map(model: nn.Module, classes: Sequence[str]) -> Optional[List[int]]:
    """Index of each data class among the model's outputs (None: the same order)."""
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    if names:
        names = list(names)
        missing = [c for c in classes if c not in names]
        if missing:
            raise ValueError(f"the data's class(es) {', '.join(missing[:5])} are not among the model's "
                             f"{len(names)} labels ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
        return None if names == list(classes) else [names.index(c) for c in classes]
    if model.num_classes != len(classes):
        raise ValueError(f'the model has {model.num_classes} outputs and no label names, the data has '
                         f'{len(classes)} classes: cannot tell which output is which class')
    return None


def evaluate(model: Union[str, nn.Module], data, batch_size: int = 64, img_size: Optional[int] = None,
             split: str = 'val', output=None, num_workers: int = 2, device: Optional[str] = None,
             amp: str = 'auto', progress: bool = True) -> EvalResult:
    """Top-1 / top-5 and the confusion matrix of ``model`` on the ``split`` of ``data``.

    ``model``: ``MODEL[.TAG]`` (pretrained weights), ``local-dir:OUT`` / a directory written by
    :func:`finetune`, ``hf-hub:REPO``, or a module. The data's classes are matched to the model's
    ``label_names`` by name. With ``output``, writes ``confusion.png``, ``confusion.txt`` and
    ``evaluation.json`` there.
    """
    from timm.data import create_transform
    from torch.utils.data import DataLoader

    from .curves import draw_confusion, format_confusion
    if split not in ('train', 'val'):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    dev = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    splits = find_splits(data)
    if isinstance(model, str):
        model = _create_model(_model_spec(model), pretrained=True)
    label_map = _label_map(model, splits.classes)
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    pred_names = list(names) if names else list(splits.classes)
    dataset = getattr(splits, split)
    dataset.transform = create_transform(**_data_config(model, img_size), is_training=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == 'cuda')
    model.to(dev)
    with _progress(len(loader), 'evaluate', progress) as bar:
        s = _evaluate_loader(model, loader, dev, _amp_dtype(amp, dev), label_map, len(splits.classes),
                             model.num_classes, confusion=True, progress=bar)
    n = max(1.0, s['count'])
    # columns: the model's outputs; rows: the data's classes
    result = EvalResult(top1=100 * s['hits1'] / n, top5=100 * s['hitsk'] / n, loss=s['loss_sum'] / n,
                        count=int(s['count']), topk=s['k'], classes=list(splits.classes),
                        predicted_classes=pred_names, confusion=s['confusion'].tolist())
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        draw_confusion(result.confusion, result.classes, result.predicted_classes, out / 'confusion.png')
        (out / 'confusion.txt').write_text(
            format_confusion(result.confusion, result.classes, result.predicted_classes) + '\n', encoding='utf-8')
        (out / 'evaluation.json').write_text(json.dumps(asdict(result), indent=1) + '\n', encoding='utf-8')
    return result


# --------------------------------------------------------------------------------------- training

def _options(options: Dict[str, Any]) -> FinetuneOptions:
    known = {f.name for f in fields(FinetuneOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown fine-tuning option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    opts = FinetuneOptions(**options)
    sgd = opts.optimizer.lower() in ('sgd', 'momentum', 'nesterov')
    if opts.lr is None:
        opts.lr = 1e-2 if sgd else 1e-3
    if opts.weight_decay is None:
        opts.weight_decay = 1e-4 if sgd else 0.05
    if opts.export not in ('best', 'last'):
        raise ValueError(f"export must be 'best' or 'last', not {opts.export!r}")
    if opts.batch_size < 1:
        raise ValueError('batch size must be at least 1')
    if opts.sched not in ('cosine', 'step'):
        raise ValueError(f"sched must be 'cosine' or 'step', not {opts.sched!r}")
    if opts.sched == 'step' and not (opts.decay_epochs > 0 and 0 < opts.decay_rate <= 1):
        raise ValueError(f'the step schedule needs decay_epochs > 0 and 0 < decay_rate <= 1, got '
                         f'{opts.decay_epochs} and {opts.decay_rate}')
    return opts


def _check_resumable(ckpt: Dict[str, Any], path: Path, model_spec: str, classes: List[str],
                     opts: FinetuneOptions) -> None:
    if ckpt.get('version') != CHECKPOINT_VERSION or 'model' not in ckpt:
        raise ValueError(f'{path} is not a checkpoint written by se_hub finetune')
    if ckpt['classes'] != list(classes):
        old, new = ckpt['classes'], list(classes)
        diff = sorted(set(old) ^ set(new))
        what = f"differing classes: {', '.join(diff[:6])}" if diff else 'same classes in another order'
        raise ValueError(f'the data has {len(new)} classes, the checkpoint {path} was trained on {len(old)} '
                         f'({what}); resume with the same data, or fine-tune into another --output')
    if ckpt['model_spec'] != model_spec:
        raise ValueError(f"{path} fine-tunes {ckpt['model_spec']}, not {model_spec}")


def finetune(model: str, data, epochs: int, output, **options) -> FinetuneResult:
    """Fine-tune ``model`` (``MODEL[.TAG]``, ``local-dir:PATH``, ``hf-hub:REPO``) on ``data`` (a
    directory, see :mod:`se_hub.tasks.data`) for ``epochs`` epochs, writing to ``output``.

    ``options`` are the fields of :class:`FinetuneOptions`. Refuses to overwrite a run already in
    ``output`` unless ``resume=True``. Returns a :class:`FinetuneResult` (None on the ranks other
    than 0 of a multi-process run).
    """
    opts = _options(options)
    if int(epochs) < 1:
        raise ValueError('epochs must be at least 1')
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    env = _Dist(opts.device)
    try:
        return _Trainer(model, data, int(epochs), Path(output), opts, env).run()
    finally:
        env.close()
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.benchmark = deterministic[2]


class _Trainer:
    def __init__(self, model_spec: str, data, epochs: int, output: Path, opts: FinetuneOptions, env: _Dist):
        self.spec, self.data, self.epochs, self.out, self.opts, self.env = model_spec, data, epochs, output, opts, env
        self.log = print if env.main else (lambda *a, **k: None)

    # ---- preparation
    def _prepare(self) -> None:
        from timm.data import create_transform
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler, StepLRScheduler
        from timm.utils import ModelEmaV3
        from torch.utils.data import DataLoader, DistributedSampler, Subset

        opts, env = self.opts, self.env
        if opts.deterministic:
            os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.splits = find_splits(self.data, check_images=opts.check_images)
        self.classes = self.splits.classes
        self.spec = _model_spec(self.spec)
        last = self.out / LAST
        self.ckpt = None
        if opts.resume:
            if not last.is_file():
                raise FileNotFoundError(f'nothing to resume: {last} not found')
            self.ckpt = checkpoints.load(last)
            _check_resumable(self.ckpt, last, self.spec, self.classes, opts)
            changed = [k for k in _SAME_ON_RESUME if self.ckpt['options'].get(k) != getattr(opts, k)]
            if changed:
                self.log(f"warning: {', '.join(changed)} differ from the run in {self.out}; "
                         'the resumed run will not match an uninterrupted one', file=sys.stderr)
        elif last.exists():
            raise FileExistsError(f'{self.out} already holds a fine-tuning run ({LAST}); pass --resume to continue '
                                  'it, or choose another --output')

        _seed_all(opts.seed + env.rank)
        self.net = _create_model(self.spec, pretrained=opts.pretrained and self.ckpt is None,
                                 num_classes=len(self.classes), drop_rate=opts.drop_rate,
                                 drop_path_rate=opts.drop_path_rate)
        _record_input_size(self.net, opts.img_size)
        data_cfg = _data_config(self.net, opts.img_size)
        self.splits.train.transform = create_transform(**data_cfg, is_training=opts.augment)
        self.splits.val.transform = create_transform(**data_cfg, is_training=False)
        _freeze(self.net, opts.freeze_backbone, opts.freeze_bn)
        self.net.to(env.device)
        self.amp_dtype = _amp_dtype(opts.amp, env.device)

        cuda = env.device.type == 'cuda'
        self.sampler = DistributedSampler(self.splits.train, num_replicas=env.world, rank=env.rank, shuffle=True,
                                          seed=opts.seed)
        self.train_loader = DataLoader(self.splits.train, batch_size=opts.batch_size, sampler=self.sampler,
                                       num_workers=opts.num_workers, pin_memory=cuda)
        val_share = Subset(self.splits.val, range(env.rank, len(self.splits.val), env.world))  # no padding
        self.val_loader = DataLoader(val_share, batch_size=opts.batch_size, shuffle=False,
                                     num_workers=opts.num_workers, pin_memory=cuda)

        self.optimizer = create_optimizer_v2(self.net, opt=opts.optimizer, lr=opts.lr,
                                             weight_decay=opts.weight_decay, momentum=opts.momentum,
                                             layer_decay=opts.layer_decay)
        self.steps_per_epoch = len(self.train_loader)
        total = self.steps_per_epoch * self.epochs
        warmup = min(int(round(opts.warmup_epochs * self.steps_per_epoch)), max(0, total - 1))
        # both schedules count optimizer steps, so the LR follows the step exactly, also on resume
        if opts.sched == 'step':
            decay_steps = max(1, int(round(opts.decay_epochs * self.steps_per_epoch)))
            self.scheduler = StepLRScheduler(self.optimizer, decay_t=decay_steps, decay_rate=opts.decay_rate,
                                             warmup_t=warmup, warmup_lr_init=opts.lr * 0.01, t_in_epochs=False)
        else:
            self.scheduler = CosineLRScheduler(self.optimizer, t_initial=total, lr_min=opts.min_lr,
                                               warmup_t=warmup, warmup_lr_init=opts.lr * 0.01, t_in_epochs=False)
        self.scaler = torch.amp.GradScaler('cuda') if self.amp_dtype == torch.float16 else None
        self.ema = ModelEmaV3(self.net, decay=opts.ema_decay, use_warmup=True) if opts.ema else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=opts.label_smoothing)
        self.model = self.net
        if env.active:
            from torch.nn.parallel import DistributedDataParallel
            self.model = DistributedDataParallel(self.net, device_ids=[env.device.index] if cuda else None)

        self.start_epoch, self.step, self.history = 0, 0, []
        self.best_epoch, self.best_score = 0, -math.inf
        if self.ckpt is not None:
            self._restore(self.ckpt)
        if env.main:
            self.out.mkdir(parents=True, exist_ok=True)
            checkpoints.remove_stale_temporaries(self.out)
            if self.ckpt is not None:
                # the last epoch's best.pth may have been cut short by a kill: it equals last.pth then
                if self.best_epoch == self.start_epoch and self.best_epoch > 0:
                    checkpoints.copy_atomic(last, self.out / BEST)
                self._write_metrics(rewrite=True)
        env.barrier()

    def _restore(self, ckpt: Dict[str, Any]) -> None:
        self.net.load_state_dict(ckpt['model'])
        self.optimizer.load_state_dict(ckpt['optimizer'])
        if ckpt['epochs'] == self.epochs:
            self.scheduler.load_state_dict(ckpt['scheduler'])
        else:  # the schedule is a function of the step: recomputed for the new length
            self.log(f"note: {ckpt['epochs']} epochs were planned, now {self.epochs}: the LR schedule is "
                     'stretched to the new length from here on')
        if self.scaler is not None and ckpt.get('scaler'):
            self.scaler.load_state_dict(ckpt['scaler'])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt['ema'] if ckpt.get('ema') else ckpt['model'])
        self.start_epoch, self.step = ckpt['epoch'], ckpt['step']
        self.history = list(ckpt['history'])
        self.best_epoch, self.best_score = ckpt['best_epoch'], ckpt['best_score']
        states = ckpt.get('rng') or []
        if len(states) == self.env.world:
            checkpoints.set_rng_state(states[self.env.rank])
        else:  # another number of processes: a fresh, still deterministic, random state
            _seed_all(self.opts.seed + 1000 * self.start_epoch + self.env.rank)
        self.scheduler.step_update(self.step)

    # ---- one epoch
    def _train_epoch(self, epoch: int) -> Dict[str, float]:
        opts, env = self.opts, self.env
        self.sampler.set_epoch(epoch)
        _train_mode(self.model, opts.freeze_backbone, opts.freeze_bn)
        loss_sum = seen = 0.0
        start = time.perf_counter()
        bar = _progress(self.steps_per_epoch, f'epoch {epoch + 1}/{self.epochs}', opts.progress and env.main)
        try:
            for images, targets in self.train_loader:
                images = images.to(env.device, non_blocking=True)
                targets = targets.to(env.device, non_blocking=True)
                with _autocast(env.device, self.amp_dtype):
                    loss = self.criterion(self.model(images), targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f'the loss is {loss.item()} at epoch {epoch + 1}; the last good '
                                             f'checkpoint is {self.out / LAST} (lower --lr?)')
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    if opts.grad_clip:
                        self.scaler.unscale_(self.optimizer)
                        nn.utils.clip_grad_norm_(self.net.parameters(), opts.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.backward()
                    if opts.grad_clip:
                        nn.utils.clip_grad_norm_(self.net.parameters(), opts.grad_clip)
                    self.optimizer.step()
                self.step += 1
                self.scheduler.step_update(self.step)
                if self.ema is not None:
                    self.ema.update(self.net, step=self.step)
                n = targets.numel()
                loss_sum += loss.item() * n
                seen += n
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f'{loss_sum / seen:.4f}', img_s=f'{seen * env.world / max(elapsed, 1e-9):.1f}',
                                refresh=False)
                bar.update()
        except Exception as e:
            message = worker_error_message(e)
            if message:
                raise DataError(message) from None
            raise
        finally:
            bar.close()
        total_loss, total_seen = env.sum([loss_sum, seen])
        elapsed = time.perf_counter() - start
        return {'train_loss': total_loss / max(1.0, total_seen), 'train_images_per_s': total_seen / elapsed,
                'train_time_s': elapsed}

    def _validate(self, model: nn.Module) -> Dict[str, float]:
        s = _evaluate_loader(model, self.val_loader, self.env.device, self.amp_dtype, None, len(self.classes),
                             len(self.classes))
        loss_sum, hits1, hitsk, count = self.env.sum([s['loss_sum'], s['hits1'], s['hitsk'], s['count']])
        n = max(1.0, count)
        return {'val_loss': loss_sum / n, 'top1': 100 * hits1 / n, 'top5': 100 * hitsk / n, 'val_images': int(count)}

    # ---- outputs
    def _write_metrics(self, rewrite: bool = False) -> None:
        from .curves import draw_curves
        path = self.out / METRICS
        if rewrite:
            checkpoints.write_text_atomic(path, ''.join(json.dumps(h) + '\n' for h in self.history))
        else:
            with open(path, 'a', encoding='utf-8') as f:
                f.write(json.dumps(self.history[-1]) + '\n')
        if self.history:
            checkpoints.write_atomic(self.out / CURVES, lambda f: draw_curves(
                self.history, f, title=f'{self.spec} on {self.splits.root.name}'))

    def _checkpoint(self, rng: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {
            'version': CHECKPOINT_VERSION, 'model_spec': self.spec, 'classes': list(self.classes),
            'options': asdict(self.opts), 'epoch': len(self.history), 'epochs': self.epochs, 'step': self.step,
            'model': self.net.state_dict(), 'optimizer': self.optimizer.state_dict(),
            'scheduler': self.scheduler.state_dict(), 'scaler': self.scaler.state_dict() if self.scaler else None,
            'ema': self.ema.module.state_dict() if self.ema is not None else None,
            'history': self.history, 'best_epoch': self.best_epoch, 'best_score': self.best_score, 'rng': rng,
        }

    def _export(self) -> FinetuneResult:
        from ..hub import push_to_hub, save_pretrained
        which = self.opts.export if (self.out / BEST).is_file() else 'last'
        ckpt = checkpoints.load(self.out / (BEST if which == 'best' else LAST))
        net = self.net.cpu()
        net.load_state_dict(ckpt['ema'] if ckpt.get('ema') is not None else ckpt['model'])
        net.eval()
        row = self.history[ckpt['epoch'] - 1]
        top1, top5 = row.get('ema_top1', row['top1']), row.get('ema_top5', row['top5'])
        metrics = [{'dataset': f"{self.splits.root.name} (val, {row['val_images']} images)",
                    'top1': round(top1, 2), 'top5': round(top5, 2), 'provenance': 'se-hub finetune',
                    'reference': f"epoch {ckpt['epoch']} of {self.epochs} ({which})"}]
        notes = (f"Fine-tuned with `se-hub finetune` from `{self.spec}` on {len(self.classes)} classes "
                 f"({', '.join(self.classes[:10])}{', ...' if len(self.classes) > 10 else ''}).")
        save_pretrained(net, self.out, label_names=self.classes, metrics=metrics, notes=notes)
        pushed = None
        if self.opts.push:
            pushed = push_to_hub(net, self.opts.push, label_names=self.classes, metrics=metrics, notes=notes)
            self.log(f'pushed to {self.opts.push}: {pushed}')
        self.log(f"exported the {which} weights (epoch {ckpt['epoch']}: top-1 {top1:.2f}%) to {self.out}")
        return FinetuneResult(self.out, net, list(self.classes), list(self.history), self.best_epoch,
                              self.best_score, which, pushed)

    def run(self) -> FinetuneResult:
        self._prepare()
        env = self.env
        if self.start_epoch == 0:
            self.log(f'fine-tuning {self.spec} on {self.splits.root} ({self.splits.layout} layout: '
                     f'{len(self.splits.train)} train / {len(self.splits.val)} val images, {len(self.classes)} '
                     f'classes) for {self.epochs} epochs, {env.world} process(es) on {env.device.type}')
        else:
            self.log(f'resuming {self.out} after epoch {self.start_epoch} of {self.epochs}')
        for epoch in range(self.start_epoch, self.epochs):
            row = {'epoch': epoch + 1}
            row.update(self._train_epoch(epoch))
            env.broadcast_buffers(self.net)
            if self.ema is not None:
                env.broadcast_buffers(self.ema.module)
            row.update(self._validate(self.net))
            if self.ema is not None:
                ema = self._validate(self.ema.module)
                row.update({'ema_top1': ema['top1'], 'ema_top5': ema['top5'], 'ema_val_loss': ema['val_loss']})
            row['lr'] = max(g['lr'] for g in self.optimizer.param_groups)
            score = row['ema_top1'] if self.ema is not None else row['top1']
            is_best = score > self.best_score
            if is_best:
                self.best_epoch, self.best_score = epoch + 1, score
            self.history.append(row)
            rng = env.gather(checkpoints.rng_state())
            if env.main:
                checkpoints.save_atomic(self._checkpoint(rng), self.out / LAST)
                if is_best:
                    checkpoints.copy_atomic(self.out / LAST, self.out / BEST)
                self._write_metrics()
                ema_text = f"  EMA top-1 {row['ema_top1']:6.2f}" if self.ema is not None else ''
                self.log(f"epoch {epoch + 1}/{self.epochs}  train loss {row['train_loss']:.4f}  "
                         f"val loss {row['val_loss']:.4f}  top-1 {row['top1']:6.2f}  top-5 {row['top5']:6.2f}"
                         f"{ema_text}  lr {row['lr']:.2e}  {row['train_images_per_s']:.1f} img/s  "
                         f"{row['train_time_s']:.1f}s{'  *best*' if is_best else ''}", flush=True)
        env.barrier()
        result = self._export() if env.main else None
        env.barrier()
        return result


# ------------------------------------------------------------------------------------------- CLI

def finetune_command(args) -> int:
    """``se-hub finetune`` (arguments defined in se_hub/cli.py)."""
    options = {f.name: getattr(args, f.name) for f in fields(FinetuneOptions) if hasattr(args, f.name)}
    result = finetune(args.model, args.data, args.epochs, args.output, **options)
    if result is not None:
        print(f'{result.output}: best val top-1 {result.best_top1:.2f}% at epoch {result.best_epoch}; '
              f"reload with timm.create_model('local-dir:{result.output}', pretrained=True) after import se_hub")
    return 0


def evaluate_command(args) -> int:
    """``se-hub evaluate`` (arguments defined in se_hub/cli.py)."""
    from .curves import format_confusion
    r = evaluate(args.model, args.data, batch_size=args.batch_size, img_size=args.img_size, split=args.split,
                 output=args.output, num_workers=args.num_workers, device=args.device, progress=args.progress)
    if args.json:
        print(json.dumps(asdict(r), indent=1))
        return 0
    print(f'{args.model} on {args.data} ({args.split}, {r.count} images): top-1 {r.top1:.2f}%  '
          f'top-{r.topk} {r.top5:.2f}%  loss {r.loss:.4f}')
    print(format_confusion(r.confusion, r.classes, r.predicted_classes))
    if args.output:
        print(f'wrote {Path(args.output) / "confusion.png"}, confusion.txt, evaluation.json')
    return 0
