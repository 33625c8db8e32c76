"""Fine-tuning and evaluating se_hub classifiers on a directory of images: what is specific to
classification (model, data, loss, top-k evaluation, the Hub export). The training itself is
:mod:`se_hub.tasks.engine`'s.

Python::

    import se_hub.tasks
    result = se_hub.tasks.finetune(model='se_resnet50b.ra2_in1k', data='flowers/', epochs=10,
                                   output='runs/flowers', batch_size=32, lr=5e-4, ema=True)
    result.model            # the fine-tuned model (the exported weights), eval mode, on the CPU
    se_hub.tasks.evaluate('local-dir:runs/flowers', 'flowers/').top1

Shell: ``se-hub finetune --model ... --data DIR --epochs N --output OUT`` and
``se-hub evaluate --model local-dir:OUT --data DIR``. Several processes:
``torchrun --nproc_per_node N $(which se-hub) finetune ...``.

What ``OUT`` holds: ``metrics.jsonl`` (one JSON object per epoch), ``curves.png``, ``last.pth``
(every epoch) and ``best.pth`` (the best val top-1), both written atomically, and the fine-tuned
model in timm's Hub format (``config.json``, ``model.safetensors``, ``README.md``) so that
``timm.create_model('local-dir:OUT', pretrained=True)`` rebuilds it after ``import se_hub``.

Top-k is top-min(5, classes): the metrics name their k (``top3`` for three classes).
"""
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import factory
from ..files import write_error
from .data import DataError, find_splits, worker_errors_named
from .distributed import autocast, plan_device
from .engine import Engine, Progress, Task, TrainConfig


@dataclass
class FinetuneOptions(TrainConfig):
    """Options of :func:`finetune` (``se-hub finetune --help`` describes each): the engine's
    :class:`~se_hub.tasks.engine.TrainConfig` and what classification adds. ``lr`` and
    ``weight_decay`` left at None take the optimizer's default (1e-3 and 0.05 for adamw; 1e-2 and
    1e-4 for sgd and momentum, the paper's plain momentum SGD)."""
    what: ClassVar[str] = 'fine-tuning'
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    pretrained: bool = True
    # architecture arguments of the model (se_layer, se_args, se_placement, se_stages, ...), recorded in the
    # export so that it reloads; with pretrained weights the model must keep their shapes
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    # add SE units to the (pretrained, SE-free) model before training, output unchanged at the start
    # (se_hub.retrofit); retrofit_args are its options: se_args, placement, stages
    retrofit: bool = False
    retrofit_args: Dict[str, Any] = field(default_factory=dict)
    # with pretrained weights: SE units start fresh, every other tensor loads (se_hub.factory)
    fresh_se: bool = False
    img_size: Optional[int] = None  # default: the model's pretrained input size
    label_smoothing: float = 0.1
    freeze_backbone: bool = False  # train the classifier only
    freeze_bn: bool = False  # BatchNorm statistics and affine parameters stay as loaded
    augment: bool = True
    cutout: int = 0  # side of the square Cutout zeroes in each training image (0: none)
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    push: Optional[str] = None  # Hub repo id to publish the export to
    check_images: bool = True  # open every image's header before training

    def __post_init__(self):
        sgd = self.optimizer.lower() in ('sgd', 'momentum', 'nesterov')
        if self.lr is None:
            self.lr = 1e-2 if sgd else 1e-3
        if self.weight_decay is None:
            self.weight_decay = 1e-4 if sgd else 0.05
        if self.cutout < 0:
            raise ValueError(f'cutout must be 0 (off) or a square side in pixels, got {self.cutout}')
        self.model_kwargs = dict(self.model_kwargs or ())  # a dict, or the CLI's KEY=VALUE pairs
        self.retrofit_args = dict(self.retrofit_args or ())
        unknown = sorted(set(self.retrofit_args) - {'se_args', 'placement', 'stages'})
        if unknown:
            raise ValueError(f"unknown retrofit option(s) {', '.join(unknown)}; se_hub.retrofit takes se_args, "
                             'placement, stages')
        if self.retrofit_args and not self.retrofit:
            raise ValueError(f'retrofit options {dict(self.retrofit_args)} given without retrofit (--retrofit)')


# options that change the computation: a resumed run with other values cannot continue exactly
_SAME_ON_RESUME = ('model_kwargs', 'batch_size', 'img_size', 'optimizer', 'lr', 'weight_decay', 'momentum',
                   'warmup_epochs', 'sched', 'decay_epochs', 'decay_rate', 'min_lr', 'label_smoothing', 'layer_decay',
                   'freeze_backbone', 'freeze_bn', 'ema', 'ema_decay', 'amp', 'augment', 'cutout', 'drop_rate',
                   'drop_path_rate', 'grad_clip', 'seed', 'retrofit', 'retrofit_args')


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
    top_k: float  # top-k accuracy (%), k = min(5, the model's classes)
    k: int
    loss: float
    count: int
    classes: List[str]  # rows of the confusion matrix (the data's classes)
    predicted_classes: List[str]  # its columns (the model's classes)
    confusion: List[List[int]] = field(default_factory=list)


def top_k_of(num_classes: int) -> int:
    """The k of "top-5" for a model with ``num_classes`` outputs."""
    return min(5, num_classes)


class Cutout:
    """Cutout (DeVries & Taylor, 2017): one ``size`` x ``size`` square of a normalised image tensor
    set to zero. Its centre is uniform over the image, so near a border the square is clipped
    (the paper's choice: some images keep more than others). Draws from torch's RNG, which the
    engine seeds per process and per DataLoader worker."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f'cutout size must be at least 1, got {size}')
        self.size = int(size)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        cy, cx = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
        y0, y1 = max(0, cy - self.size // 2), min(h, cy - self.size // 2 + self.size)
        x0, x1 = max(0, cx - self.size // 2), min(w, cx - self.size // 2 + self.size)
        image = image.clone()
        image[..., y0:y1, x0:x1] = 0
        return image

    def __repr__(self) -> str:
        return f'Cutout(size={self.size})'


def train_transform(data_config: Dict[str, Any], augment: bool, cutout: int = 0):
    """timm's transform for training (``augment``: random-resized crop and flip), then Cutout on
    the normalised tensor."""
    from timm.data import create_transform
    from torchvision import transforms
    transform = create_transform(**data_config, is_training=augment)
    if cutout:
        transform = transforms.Compose([transform, Cutout(cutout)])
    return transform


# ------------------------------------------------------------------------------------ the model

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


# ------------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def _evaluate_loader(model: nn.Module, loader, device: torch.device, plan, label_map: Optional[List[int]],
                     num_true: int, num_pred: int, confusion: bool = False, progress=None) -> Dict[str, Any]:
    """Sums over ``loader`` (this process's share): loss, top-1 / top-k hits, count, confusion."""
    model.eval()
    k = top_k_of(num_pred)
    loss_sum = hits1 = hitsk = count = 0.0
    matrix = torch.zeros(num_true, num_pred, dtype=torch.int64)
    mapping = torch.tensor(label_map, device=device) if label_map is not None else None
    with worker_errors_named():
        for images, targets in loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with autocast(plan):
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
    """Top-1 / top-k (k = min(5, classes)) and the confusion matrix of ``model`` on the ``split``
    of ``data``.

    ``model``: ``MODEL[.TAG]`` (pretrained weights), ``local-dir:OUT`` / a directory written by
    :func:`finetune`, ``hf-hub:REPO``, or a module. The data's classes are matched to the model's
    ``label_names`` by name. With ``output``, writes ``confusion.png``, ``confusion.txt`` and
    ``evaluation.json`` there.
    """
    from timm.data import create_transform
    from torch.utils.data import DataLoader

    from ..plots import draw_confusion, format_confusion
    if split not in ('train', 'val'):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    plan = plan_device(device, amp, environ={})
    dev = torch.device(plan.device)
    splits = find_splits(data)
    if isinstance(model, str):
        model = factory.create_model(factory.model_spec(model), pretrained=True)
    label_map = _label_map(model, splits.classes)
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    pred_names = list(names) if names else list(splits.classes)
    dataset = getattr(splits, split)
    dataset.transform = create_transform(**factory.data_config(model, img_size), is_training=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == 'cuda')
    model.to(dev)
    with Progress(len(loader), 'evaluate', progress) as bar:
        s = _evaluate_loader(model, loader, dev, plan, label_map, len(splits.classes), model.num_classes,
                             confusion=True, progress=bar)
    n = max(1.0, s['count'])
    # columns: the model's outputs; rows: the data's classes
    result = EvalResult(top1=100 * s['hits1'] / n, top_k=100 * s['hitsk'] / n, k=s['k'], loss=s['loss_sum'] / n,
                        count=int(s['count']), classes=list(splits.classes), predicted_classes=pred_names,
                        confusion=s['confusion'].tolist())
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        draw_confusion(result.confusion, result.classes, result.predicted_classes, out / 'confusion.png')
        (out / 'confusion.txt').write_text(
            format_confusion(result.confusion, result.classes, result.predicted_classes) + '\n', encoding='utf-8')
        (out / 'evaluation.json').write_text(json.dumps(asdict(result), indent=1) + '\n', encoding='utf-8')
    return result


# --------------------------------------------------------------------------------------- training

class ClassificationTask(Task):
    """An se_hub classifier on a data directory (folders, CSV or Places-365), cross-entropy with
    label smoothing, top-1 / top-k on the val split, exported in timm's Hub format."""
    name = 'classification'
    score = 'top1'

    def __init__(self, model_spec: str, data, opts: FinetuneOptions):
        self.spec, self.opts = factory.model_spec(model_spec), opts
        self.splits = find_splits(data, check_images=opts.check_images)
        self.classes = self.splits.classes
        if len(self.classes) < 2:
            raise DataError(f'{self.splits.root} has one class ({self.classes[0]}): a classifier needs at least two '
                            '(add a folder of images for each other class)')
        self.train_set = self.splits.train
        self.criterion = nn.CrossEntropyLoss(label_smoothing=opts.label_smoothing)
        # the weights the run started from (hub.weights_origin: 'model.tag', 'local-dir:...', None for random);
        # kept in every checkpoint, as a resumed run builds the network without them
        self.start_weights: Optional[str] = None

    def build(self, engine: Engine, resuming: bool) -> nn.Module:
        from timm.data import create_transform
        opts = self.opts
        net = factory.create_model(self.spec, pretrained=opts.pretrained and not resuming,
                                   num_classes=len(self.classes), drop_rate=opts.drop_rate,
                                   drop_path_rate=opts.drop_path_rate, model_kwargs=opts.model_kwargs,
                                   fresh_se=opts.fresh_se, log=engine.log)
        if opts.retrofit:  # before the optimizer exists; on resume the same architecture, then last.pth loads
            from ..retrofit import retrofit
            net = retrofit(net, **opts.retrofit_args)
        if resuming:  # built without weights (last.pth loads): its provenance is the first run's
            net.loaded_weights = self.start_weights
        self.start_weights = getattr(net, 'loaded_weights', None)
        _record_input_size(net, opts.img_size)
        data_cfg = factory.data_config(net, opts.img_size)
        self.splits.train.transform = train_transform(data_cfg, opts.augment, opts.cutout)
        self.splits.val.transform = create_transform(**data_cfg, is_training=False)
        _freeze(net, opts.freeze_backbone, opts.freeze_bn)
        if opts.retrofit and opts.freeze_backbone:  # the new SE units are not the pretrained backbone: they train
            from ..layers import SqueezeExcite
            for m in net.modules():
                if isinstance(m, SqueezeExcite):
                    m.requires_grad_(True)
        from torch.utils.data import DataLoader
        self.val_loader = DataLoader(engine.share(self.splits.val), batch_size=opts.batch_size, shuffle=False,
                                     num_workers=opts.num_workers, pin_memory=engine.device.type == 'cuda')
        self.k = top_k_of(len(self.classes))
        return net

    def train_mode(self, net: nn.Module) -> None:
        _train_mode(net, self.opts.freeze_backbone, self.opts.freeze_bn)

    def loss(self, model: nn.Module, batch, device: torch.device):
        images, targets = batch
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        return self.criterion(model(images), targets), targets.numel(), {}

    def evaluate(self, net: nn.Module, engine: Engine, prefix: str = '') -> Dict[str, Any]:
        n = len(self.classes)
        s = _evaluate_loader(net, self.val_loader, engine.device, engine.plan, None, n, n)
        loss_sum, hits1, hitsk, count = engine.pg.sum([s['loss_sum'], s['hits1'], s['hitsk'], s['count']])
        c = max(1.0, count)
        row = {f'{prefix}val_loss': loss_sum / c, f'{prefix}top1': 100 * hits1 / c,
               f'{prefix}top{self.k}': 100 * hitsk / c}
        if not prefix:
            row['val_images'] = int(count)
        return row

    def meta(self) -> Dict[str, Any]:
        return {'model_spec': self.spec, 'classes': list(self.classes), 'options': asdict(self.opts),
                'loaded_weights': self.start_weights}

    def check_resume(self, ckpt: Dict[str, Any], path: Path) -> None:
        self.start_weights = ckpt.get('loaded_weights')
        if ckpt['classes'] != list(self.classes):
            old, new = ckpt['classes'], list(self.classes)
            diff = sorted(set(old) ^ set(new))
            what = f"differing classes: {', '.join(diff[:6])}" if diff else 'same classes in another order'
            raise ValueError(f'the data has {len(new)} classes, the checkpoint {path} was trained on {len(old)} '
                             f'({what}); resume with the same data, or fine-tune into another --output')
        if ckpt['model_spec'] != self.spec:
            raise ValueError(f"{path} fine-tunes {ckpt['model_spec']}, not {self.spec}")
        changed = [k for k in _SAME_ON_RESUME if ckpt['options'].get(k) != getattr(self.opts, k)]
        if changed:
            import sys
            print(f"warning: {', '.join(changed)} differ from the run in {path.parent}; the resumed run will not "
                  'match an uninterrupted one', file=sys.stderr)

    def start_text(self, engine: Engine) -> str:
        s = self.splits
        retrofitted = ' with SE retrofitted' if self.opts.retrofit else ''
        return (f'fine-tuning {self.spec}{retrofitted} on {s.root} ({s.layout} layout: {len(s.train)} train / '
                f'{len(s.val)} val images, {len(self.classes)} classes) for {self.opts.epochs} epochs, '
                f'{engine.pg.world} process(es) on {engine.device.type}')

    def epoch_text(self, row: Dict[str, Any]) -> str:
        k = self.k
        ema = f"  EMA top-1 {row['ema_top1']:6.2f}" if 'ema_top1' in row else ''
        return (f"  val loss {row['val_loss']:.4f}  top-1 {row['top1']:6.2f}  top-{k} {row[f'top{k}']:6.2f}"
                f'{ema}')

    def curves(self, history):
        k = self.k
        return ((('train loss', 'train_loss'), ('val loss', 'val_loss')),
                (('val top-1', 'top1'), (f'val top-{k}', f'top{k}'), ('EMA top-1', 'ema_top1')),
                'accuracy (%)', (0, 100), f'{self.spec} on {self.splits.root.name}')

    def export(self, net: nn.Module, ckpt: Dict[str, Any], which: str, engine: Engine) -> FinetuneResult:
        from ..hub import push_to_hub, save_pretrained
        net.load_state_dict(ckpt['ema'] if ckpt.get('ema') is not None else ckpt['model'])
        net.eval()
        row = engine.history[ckpt['epoch'] - 1]
        k = self.k
        top1, topk = row.get('ema_top1', row['top1']), row.get(f'ema_top{k}', row[f'top{k}'])
        metrics = [{'dataset': f"{self.splits.root.name} (val, {row['val_images']} images)",
                    'top1': round(top1, 2), f'top{k}': round(topk, 2), 'provenance': 'se-hub finetune',
                    'reference': f"epoch {ckpt['epoch']} of {self.opts.epochs} ({which})"}]
        retrofitted = ' with SE units retrofitted (se_hub.retrofit)' if self.opts.retrofit else ''
        notes = (f"Fine-tuned with `se-hub finetune` from `{self.spec}`{retrofitted} on {len(self.classes)} classes "
                 f"({', '.join(self.classes[:10])}{', ...' if len(self.classes) > 10 else ''}).")
        try:
            save_pretrained(net, engine.out, label_names=self.classes, metrics=metrics, notes=notes)
        except Exception as e:  # a full disk: safetensors names no file; the export's files are replaced last
            error = write_error(engine.out / _failed_file(e), e)
            if error is None:
                raise
            raise error from e
        pushed = None
        if self.opts.push:
            pushed = push_to_hub(net, self.opts.push, label_names=self.classes, metrics=metrics, notes=notes)
            engine.log(f'pushed to {self.opts.push}: {pushed}')
        engine.log(f"exported the {which} weights (epoch {ckpt['epoch']}: top-1 {top1:.2f}%) to {engine.out}")
        return FinetuneResult(engine.out, net, list(self.classes), list(engine.history), engine.best_epoch,
                              engine.best_score, which, pushed)


def _failed_file(error: BaseException) -> str:
    """The export file a failed ``save_pretrained`` was writing: the one an OSError names, else the
    weights (safetensors' errors name no file; the weights are most of an export's bytes)."""
    while error is not None:
        if isinstance(error, OSError) and error.filename:
            return Path(error.filename).name
        error = error.__cause__ or error.__context__
    return 'model.safetensors'


def finetune(model: str, data, epochs: int, output, **options) -> FinetuneResult:
    """Fine-tune ``model`` (``MODEL[.TAG]``, ``local-dir:PATH``, ``hf-hub:REPO``) on ``data`` (a
    directory, see :mod:`se_hub.tasks.data`) for ``epochs`` epochs, writing to ``output``.

    ``options`` are the fields of :class:`FinetuneOptions` (``epochs`` aside). Refuses to overwrite a run already in
    ``output`` unless ``resume=True``. Returns a :class:`FinetuneResult` (None on the ranks other
    than 0 of a multi-process run).
    """
    opts = FinetuneOptions.from_options(epochs, options)
    engine = Engine(opts, output)  # checks the options first
    task = ClassificationTask(model, data, opts)
    return engine.run(task)
