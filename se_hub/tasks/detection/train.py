"""Training a detector on the engine (:mod:`se_hub.tasks.engine`): the detection task, its
options, the exported detector and its loader."""
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Optional, Union

import torch
from torch import nn

from ... import files
from .. import checkpoints
from ..distributed import autocast
from ..engine import LAST, Engine, Task, TrainConfig
from .coco import COCO_STATS, CocoDetection, PathLike, coco_metrics, collate, predict_coco, same_categories
from .model import create_detector, rebuild_detector

EXPORT_WEIGHTS, EXPORT_CONFIG = 'detector.safetensors', 'detector.json'


@dataclass
class DetectOptions(TrainConfig):
    """Options of :func:`train_detector` (``se-hub finetune-detect --help`` describes each): the
    engine's :class:`~se_hub.tasks.engine.TrainConfig` with the defaults of torchvision's detection
    recipe (SGD at 0.01, a linear warm-up over 100 steps from lr / 1000, gradient clipping at 10),
    and what detection adds."""
    what: ClassVar[str] = 'detection'
    batch_size: int = 4  # per process
    optimizer: str = 'sgd'
    lr: float = 0.01
    weight_decay: float = 1e-4
    warmup_steps: Optional[int] = 100
    warmup_lr_factor: float = 0.001
    grad_clip: Optional[float] = 10.0
    hflip: bool = True
    eval_every: int = 1  # COCO evaluation every this many epochs (and after the last)


class DetectionTask(Task):
    """A torchvision detector on an SE backbone, trained on a COCO-format set; COCO mAP on the
    validation set; exported as ``detector.safetensors`` + ``detector.json``."""
    name = 'detection'
    score = 'mAP'
    find_unused_parameters = True  # a batch without positives leaves some heads out of the loss

    def __init__(self, make_detector: Callable[[bool], nn.Module], train_json: PathLike, train_images: PathLike,
                 val_json: Optional[PathLike], val_images: Optional[PathLike], opts: DetectOptions):
        self.make_detector, self.opts = make_detector, opts
        self.train_json = train_json
        self.train_set = CocoDetection(train_json, train_images, train=True)
        self.val_set = None
        if val_json is not None:
            if val_images is None:
                raise ValueError('a validation annotation file needs its image folder (--val-images)')
            self.val_set = CocoDetection(val_json, val_images)
            same_categories(self.train_set, self.val_set)
        if not self.train_set.categories:
            raise ValueError(f'{train_json} lists no category')
        self.categories = self.train_set.categories
        self.flip = opts.hflip
        self.collate_fn = collate

    def build(self, engine: Engine, resuming: bool) -> nn.Module:
        detector = self.make_detector(resuming)
        self.config = dict(getattr(detector, 'se_hub_config', {}))
        if self.config.get('num_classes') is not None and self.config['num_classes'] < len(self.categories) + 1:
            raise ValueError(f"the detector has {self.config['num_classes']} classes (background included) but "
                             f'{self.train_json} has {len(self.categories)} categories: create it with '
                             f'num_classes={len(self.categories) + 1}')
        self.train_set.masks = self.config.get('kind') == 'maskrcnn'
        self.detector = detector
        return detector

    def loss(self, model: nn.Module, batch, device: torch.device):
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        losses = model(images, targets)
        return sum(losses.values()), len(images), {k: float(v.detach()) for k, v in losses.items()}

    def evaluate(self, net: nn.Module, engine: Engine, prefix: str = '') -> Dict[str, Any]:
        epoch = len(engine.history) + 1
        if self.val_set is None or not (epoch % max(1, self.opts.eval_every) == 0 or epoch == self.opts.epochs):
            return {}
        mine = engine.share(self.val_set)
        with autocast(engine.plan):
            records = predict_coco(net, mine, self.opts.batch_size, engine.device, 0)
        merged = [r for part in engine.pg.gather(records) for r in part]
        return {f'{prefix}{k}': v for k, v in coco_metrics(self.val_set, merged).items()}

    def meta(self) -> Dict[str, Any]:
        return {'detector_config': self.config, 'categories': self.categories, 'options': asdict(self.opts)}

    def check_resume(self, ckpt: Dict[str, Any], path: Path) -> None:
        old = [(c['id'], c['name']) for c in ckpt['categories']]
        new = [(c['id'], c['name']) for c in self.categories]
        if old != new:
            raise ValueError(f'{path} was trained on the categories {old}, {self.train_json} has {new}: resume '
                             'with the same data, or train into another --output')

    def start_text(self, engine: Engine) -> str:
        c = self.config
        return (f"training a {c.get('kind', 'detector')} on {c.get('backbone', '?')} with {len(self.train_set)} "
                f"train{f' / {len(self.val_set)} val' if self.val_set is not None else ''} images, "
                f'{len(self.categories)} categories, for {self.opts.epochs} epochs, {engine.pg.world} process(es) on '
                f'{engine.device.type}')

    def epoch_text(self, row: Dict[str, Any]) -> str:
        text = ''.join(f'  {k} {row[k]:.4f}' for k in ('mAP', 'mAP50', 'ema_mAP') if k in row)
        return text

    def curves(self, history):
        parts = sorted({k for h in history for k in h if k.startswith('train_loss_') or
                        (k.startswith('train_') and k not in ('train_loss', 'train_images_per_s', 'train_time_s'))})
        losses = [('train loss', 'train_loss')] + [(k[6:], k) for k in parts][:4]
        metrics = [('val mAP', 'mAP'), ('val mAP50', 'mAP50'), ('EMA mAP', 'ema_mAP')]
        c = self.config
        return losses, metrics, 'COCO mAP', (0, 1), f"{c.get('kind', '')} {c.get('backbone', '')}"

    def export(self, net: nn.Module, ckpt: Dict[str, Any], which: str, engine: Engine) -> Dict[str, Any]:
        from safetensors.torch import save
        state = ckpt['ema'] if ckpt.get('ema') is not None else ckpt['model']
        net.load_state_dict(state)
        net.eval()
        row = engine.history[ckpt['epoch'] - 1]
        description = {'format': 'se_hub detector', 'config': self.config, 'categories': self.categories,
                       'epoch': ckpt['epoch'], 'epochs': self.opts.epochs, 'weights': which,
                       'metrics': {k: row[k] for k in COCO_STATS if k in row}}
        data = save({k: v.contiguous() for k, v in net.state_dict().items()})
        files.write_bytes_atomic(engine.out / EXPORT_WEIGHTS, data)
        files.write_text_atomic(engine.out / EXPORT_CONFIG, json.dumps(description, indent=1) + '\n')
        engine.log(f"exported the {which} weights (epoch {ckpt['epoch']}) to {engine.out}: "
                   f"load_detector('{engine.out}') rebuilds it")
        final = next((h for h in reversed(engine.history) if 'mAP' in h), None)
        return {'history': list(engine.history), 'final': {k: final[k] for k in COCO_STATS} if final else None,
                'detector': net, 'exported': which}


def train_detector(detector: Union[nn.Module, Callable[[bool], nn.Module]], train_json: PathLike,
                   train_images: PathLike, val_json: Optional[PathLike] = None, val_images: Optional[PathLike] = None,
                   epochs: int = 12, output: PathLike = 'output', **options: Any) -> Optional[Dict[str, Any]]:
    """Fine-tune ``detector`` (a module, or a function ``resuming -> module``) on a COCO-format set
    with the engine; evaluate on the validation set every ``eval_every`` epochs (and after the
    last). ``options``: the fields of :class:`DetectOptions`. ``OUTPUT`` receives ``last.pth`` /
    ``best.pth`` (atomic), ``metrics.jsonl``, ``curves.png`` and the exported detector.
    Returns ``{'history', 'final' (last COCO metrics or None), 'detector', 'exported'}`` (None on
    the ranks other than 0 of a multi-process run)."""
    opts = DetectOptions.from_options(epochs, options)
    engine = Engine(opts, output)
    make = detector if not isinstance(detector, nn.Module) else (lambda resuming: detector)
    return engine.run(DetectionTask(make, train_json, train_images, val_json, val_images, opts))


def load_detector(path: PathLike, map_location: str = 'cpu') -> nn.Module:
    """The detector exported by :func:`train_detector` / ``se-hub finetune-detect`` into the
    folder ``path`` (``detector.json`` + ``detector.safetensors``), or the one in a training
    checkpoint (``last.pth`` / ``best.pth``; its EMA weights when it has them). No download.
    ``detector.categories`` lists the COCO categories of labels 1..K."""
    path = Path(path)
    if path.is_dir():
        from safetensors.torch import load_file
        described = path / EXPORT_CONFIG
        if not described.is_file():
            raise FileNotFoundError(f'{path} holds no exported detector ({EXPORT_CONFIG}): it is written at the end '
                                    'of se-hub finetune-detect')
        info = json.loads(described.read_text(encoding='utf-8'))
        detector = rebuild_detector(info['config'])
        detector.load_state_dict(load_file(str(path / EXPORT_WEIGHTS), device=map_location))
        detector.categories = info['categories']
        return detector.eval()
    state = checkpoints.load(path, map_location)
    detector = rebuild_detector(state['detector_config'])
    detector.load_state_dict(state['ema'] if state.get('ema') is not None else state['model'])
    detector.categories = state.get('categories')
    return detector.eval()


def finetune_detector(kind: str, backbone: str, train_json: PathLike, train_images: PathLike,
                      val_json: Optional[PathLike], val_images: Optional[PathLike], epochs: int, output: PathLike,
                      detector_args: Optional[Dict[str, Any]] = None, **options: Any) -> Optional[Dict[str, Any]]:
    """:func:`train_detector` of a new ``create_detector(kind, backbone, num_classes, **detector_args)``
    with one class per category of ``train_json`` plus the background; a resumed run rebuilds the
    detector from its ``last.pth`` instead (no download). ``options``: the fields of :class:`DetectOptions`."""
    import importlib.util
    if importlib.util.find_spec('pycocotools') is None:
        raise ModuleNotFoundError("finetune-detect needs pycocotools: pip install 'se-hub[detection]'")
    last = Path(output) / LAST

    def make(resuming: bool) -> nn.Module:
        if resuming:
            return rebuild_detector(checkpoints.load(last)['detector_config'])
        num_classes = len(CocoDetection(train_json, train_images).categories) + 1
        return create_detector(kind, backbone, num_classes, **(detector_args or {}))

    return train_detector(make, train_json, train_images, val_json, val_images, epochs=epochs, output=output,
                          **options)
