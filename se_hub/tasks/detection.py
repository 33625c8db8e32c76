"""Object detection on SE backbones: torchvision's Faster R-CNN, RetinaNet and Mask R-CNN on any
se_hub model, fine-tuned and evaluated on COCO-format data (COCO mAP from pycocotools).

The backbone is the timm ``features_only`` model (pretrained weights resolved by se_hub) under
torchvision's FeaturePyramidNetwork. As in torchvision's ``resnet_fpn_backbone``, a pretrained
backbone gets frozen BatchNorm and only its last ``trainable_layers`` stages train (3 by
default); a backbone trained from scratch trains everything with ordinary BatchNorm. Stages are
the model's own ``feature_info`` stages (stem, then one per feature level), so this works for
every family, not only for torchvision's ``layerN`` names.

Reference (Hu et al., "Squeeze-and-Excitation Networks", Faster R-CNN on COCO minival,
AP@0.5 / AP): ResNet-50 57.9 / 38.0, SE-ResNet-50 61.0 / 40.4; ResNet-101 60.1 / 39.9,
SE-ResNet-101 62.7 / 41.9.

Data: a COCO annotation JSON and its image folder, for training and for validation. Labels
1..K follow the categories sorted by id; 0 is the background (``num_classes`` = K + 1, as
torchvision counts it). ``se-hub finetune-detect`` is the command-line face of
:func:`train_detector`.

Training runs on :mod:`se_hub.tasks.engine` (AMP, EMA, several processes with torchrun, atomic
``last.pth`` / ``best.pth``, exact ``--resume``, ``metrics.jsonl`` with the COCO metrics of each
evaluated epoch, ``curves.png``). The run's output folder also holds the exported detector
(``detector.safetensors`` + ``detector.json``), rebuilt by ``load_detector(OUTPUT)``.
"""
import contextlib
import io
import json
import os
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from .. import files
from . import checkpoints
from .engine import LAST, Engine, Task, TrainConfig, autocast

PathLike = Union[str, os.PathLike]
KINDS = ('fasterrcnn', 'retinanet', 'maskrcnn')
EXPORT_WEIGHTS, EXPORT_CONFIG = 'detector.safetensors', 'detector.json'
# names of COCOeval.stats, in order
COCO_STATS = ('mAP', 'mAP50', 'mAP75', 'mAP_small', 'mAP_medium', 'mAP_large',
              'AR1', 'AR10', 'AR100', 'AR_small', 'AR_medium', 'AR_large')


# --------------------------------------------------------------------------------------------
# backbone


def _stage_of_children(body: nn.Module) -> List[Tuple[nn.Module, int]]:
    """(child, stage) for each top-level child of a timm features model: stage k holds the modules
    up to and including the k-th feature point of ``feature_info`` (stage 0 is the stem)."""
    points = [info['module'].replace('.', '_') for info in body.feature_info.info]
    out, stage = [], 0
    for name, child in body.named_children():
        out.append((child, min(stage, len(points) - 1)))
        if stage < len(points) and name == points[stage]:
            stage += 1
    if stage < len(points):
        raise ValueError(f'cannot map the feature stages {points} of {type(body).__name__} onto its modules')
    return out


class RetinaNetP6P7(LastLevelP6P7):
    """torchvision's P6 / P7 block (same submodules and state-dict keys), with its two convolutions in
    float32 when a CPU autocast is on.

    Why: oneDNN's bfloat16 backward for a strided convolution with a 1x1 output reads memory it never
    wrote, so P7's weight gradient comes out NaN at random (torch 2.4 and 2.14 here) once the padded
    image side is 64 pixels or less: a NaN loss one step later, depending on what the process freed
    before. P6 and P7 work on maps 64x and 128x smaller than the image, so float32 there costs next to
    nothing; on CUDA, and without autocast, this is torchvision's block."""

    def forward(self, p: List[torch.Tensor], c: List[torch.Tensor], names: List[str]):
        if not (p[-1].device.type == 'cpu' and torch.is_autocast_enabled('cpu')):
            return super().forward(p, c, names)
        dtype = self.p6.weight.dtype  # only the block's input (P5, or C5) as float32, the other levels untouched
        if self.use_P5:
            p = p[:-1] + [p[-1].to(dtype)]
        else:
            c = c[:-1] + [c[-1].to(dtype)]
        with torch.autocast('cpu', enabled=False):
            return super().forward(p, c, names)


class SEBackboneWithFPN(nn.Module):
    """A timm ``features_only`` model followed by a FeaturePyramidNetwork; returns the ordered
    feature maps torchvision's detectors take ('0', '1', ... then the extra levels)."""

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_blocks: Optional[nn.Module] = None,
                 trainable_layers: Optional[int] = None):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels,
                                         extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool())
        self.out_channels = out_channels
        self.feature_names = [str(i) for i in range(len(body.feature_info.channels()))]
        stages = _stage_of_children(body)
        num_stages = len(body.feature_info.info)
        trainable_layers = num_stages if trainable_layers is None else trainable_layers
        if not 0 <= trainable_layers <= num_stages:
            raise ValueError(f'trainable_layers must be in 0..{num_stages} for this backbone, got {trainable_layers}')
        self.trainable_layers = trainable_layers
        self._frozen = [child for child, stage in stages if stage < num_stages - trainable_layers]
        for child in self._frozen:
            child.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for child in self._frozen:  # frozen stages keep their BatchNorm statistics
            child.eval()
        return self

    def forward(self, x: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        return self.fpn(OrderedDict(zip(self.feature_names, self.body(x))))


def create_backbone(backbone: str, pretrained: bool = True, trainable_layers: Optional[int] = None,
                    num_levels: int = 4, out_channels: int = 256, extra_blocks: Optional[nn.Module] = None,
                    freeze_bn: Optional[bool] = None) -> SEBackboneWithFPN:
    """The last ``num_levels`` feature levels of ``backbone`` (timm features_only) under an FPN.
    ``trainable_layers`` (stages counted from the top, stem included): None -> 3 when pretrained,
    all otherwise. ``freeze_bn`` None -> frozen BatchNorm when pretrained."""
    from timm.layers import freeze_batch_norm_2d

    import se_hub  # noqa: F401  (registers the models)

    from .._compat import create_model
    body = create_model(backbone, pretrained=pretrained, features_only=True,
                             out_indices=tuple(range(-num_levels, 0)))
    if freeze_bn if freeze_bn is not None else pretrained:
        body = freeze_batch_norm_2d(body)
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else len(body.feature_info.info)
    elif not pretrained and trainable_layers < len(body.feature_info.info):
        frozen = len(body.feature_info.info) - trainable_layers
        warnings.warn(f'a backbone without pretrained weights is frozen in its first {frozen} stage(s) '
                      f'(trainable_layers={trainable_layers})', stacklevel=2)
    return SEBackboneWithFPN(body, out_channels, extra_blocks, trainable_layers)


def create_detector(kind: str, backbone: str, num_classes: int, pretrained_backbone: bool = True,
                    trainable_layers: Optional[int] = None, fpn_channels: int = 256, min_size: int = 800,
                    max_size: int = 1333, anchor_sizes: Optional[Sequence[int]] = None,
                    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), freeze_bn: Optional[bool] = None,
                    **detector_kwargs: Any) -> nn.Module:
    """A torchvision detector (``fasterrcnn``, ``retinanet`` or ``maskrcnn``) on the se_hub model
    ``backbone``.

    ``num_classes`` counts the background (K categories -> K + 1). ``trainable_layers``: how many
    stages of the backbone train, from the top (torchvision's default 3 for a pretrained
    backbone; all when it is trained from scratch). ``anchor_sizes``: one base size per pyramid
    level (5 levels; torchvision's (32, 64, 128, 256, 512) by default; RetinaNet adds its three
    octave scales to each). Further keyword arguments go to the torchvision class
    (``rpn_pre_nms_top_n_train``, ``box_detections_per_img``, ...). The configuration is kept in
    ``detector.se_hub_config`` (checkpoints carry it; :func:`load_detector` rebuilds from it).
    """
    from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    if kind not in KINDS:
        raise ValueError(f'kind must be one of {", ".join(KINDS)}, got {kind!r}')
    if num_classes < 2:
        raise ValueError(f'num_classes counts the background: at least 2, got {num_classes}')
    config = dict(kind=kind, backbone=backbone, num_classes=num_classes, trainable_layers=trainable_layers,
                  fpn_channels=fpn_channels, min_size=min_size, max_size=max_size,
                  anchor_sizes=list(anchor_sizes) if anchor_sizes else None, aspect_ratios=list(aspect_ratios),
                  freeze_bn=freeze_bn if freeze_bn is not None else pretrained_backbone, **detector_kwargs)
    retina = kind == 'retinanet'
    # RetinaNet: C3-C5 -> P3-P7; the R-CNNs: C2-C5 -> P2-P6 (P6 by max-pool, for the RPN only)
    extra = RetinaNetP6P7(fpn_channels, fpn_channels) if retina else LastLevelMaxPool()
    body = create_backbone(backbone, pretrained_backbone, trainable_layers, 3 if retina else 4, fpn_channels,
                           extra, config['freeze_bn'])
    config['trainable_layers'] = body.trainable_layers
    base = list(anchor_sizes) if anchor_sizes else [32, 64, 128, 256, 512]
    if len(base) != 5:
        raise ValueError(f'anchor_sizes needs one size per pyramid level (5), got {list(base)}')
    if retina:
        sizes = tuple(tuple(int(s * 2 ** (k / 3)) for k in range(3)) for s in base)
    else:
        sizes = tuple((int(s),) for s in base)
    anchors = AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))
    cfg = body.body.pretrained_cfg
    common = dict(min_size=min_size, max_size=max_size, image_mean=list(cfg.get('mean', (0.485, 0.456, 0.406))),
                  image_std=list(cfg.get('std', (0.229, 0.224, 0.225))))
    if retina:
        model = RetinaNet(body, num_classes, anchor_generator=anchors, **common, **detector_kwargs)
    else:
        kwargs = dict(rpn_anchor_generator=anchors,
                      box_roi_pool=MultiScaleRoIAlign(body.feature_names, output_size=7, sampling_ratio=2))
        if kind == 'maskrcnn':
            kwargs['mask_roi_pool'] = MultiScaleRoIAlign(body.feature_names, output_size=14, sampling_ratio=2)
        kwargs.update(detector_kwargs)
        model = (MaskRCNN if kind == 'maskrcnn' else FasterRCNN)(body, num_classes, **common, **kwargs)
    model.se_hub_config = config
    return model


# --------------------------------------------------------------------------------------------
# COCO-format data


def _quiet_coco(annotation_file: PathLike):
    from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(annotation_file))


class CocoDetection(torch.utils.data.Dataset):
    """Images of a COCO annotation file as (image tensor in [0, 1], target) for torchvision's
    detectors: boxes (x1, y1, x2, y2), labels 1..K (categories sorted by id), image_id, and masks
    with ``masks=True``. ``train=True`` leaves out crowd regions and empty boxes. An index may be
    ``(index, flip)`` to flip the image horizontally (the training sampler decides)."""

    def __init__(self, annotation_file: PathLike, image_dir: PathLike, train: bool = False, masks: bool = False):
        self.annotation_file, self.image_dir = Path(annotation_file), Path(image_dir)
        if not self.annotation_file.is_file():
            raise FileNotFoundError(f'COCO annotation file not found: {self.annotation_file}')
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f'image folder not found: {self.image_dir}')
        self.coco = _quiet_coco(self.annotation_file)
        self.ids = sorted(self.coco.getImgIds())
        if not self.ids:
            raise ValueError(f'{self.annotation_file} lists no image')
        self.categories = [self.coco.cats[c] for c in sorted(self.coco.getCatIds())]
        if not self.categories:
            raise ValueError(f'{self.annotation_file} lists no category')
        self.label_of = {c['id']: i + 1 for i, c in enumerate(self.categories)}
        self.category_of = {label: cat for cat, label in self.label_of.items()}
        self.train, self.masks = train, masks

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index):
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor
        index, flip = index if isinstance(index, tuple) else (index, False)
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info['file_name']
        try:
            with Image.open(path) as img:
                image = pil_to_tensor(img.convert('RGB')).float().div_(255)
        except FileNotFoundError:
            raise FileNotFoundError(f'image {path} (id {image_id} in {self.annotation_file}) is missing') from None
        except OSError as e:
            raise OSError(f'cannot read image {path} (id {image_id} in {self.annotation_file}): {e}') from None
        height, width = image.shape[-2:]
        boxes, labels, masks = [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if self.train and ann.get('iscrowd', 0):
                continue
            x, y, w, h = ann['bbox']
            x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)
            if x2 <= x1 or y2 <= y1:
                continue
            boxes.append([x1, y1, x2, y2])
            labels.append(self.label_of[ann['category_id']])
            if self.masks:
                masks.append(torch.from_numpy(self.coco.annToMask(ann)))
        target = {'boxes': torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  'labels': torch.tensor(labels, dtype=torch.int64), 'image_id': image_id}
        if self.masks:
            target['masks'] = (torch.stack(masks) if masks else torch.zeros((0, height, width), dtype=torch.uint8))
        if flip:
            image = image.flip(-1)
            target['boxes'][:, [0, 2]] = width - target['boxes'][:, [2, 0]]
            if self.masks:
                target['masks'] = target['masks'].flip(-1)
        return image, target


def _collate(batch):
    return tuple(zip(*batch))


def _same_categories(train: CocoDetection, val: CocoDetection) -> None:
    a = [(c['id'], c['name']) for c in train.categories]
    b = [(c['id'], c['name']) for c in val.categories]
    if a != b:
        raise ValueError(f'{train.annotation_file} and {val.annotation_file} have different categories: {a} != {b}')


# --------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def predict_coco(detector: nn.Module, dataset: CocoDetection, batch_size: int = 2, device: str = 'cpu',
                 num_workers: int = 0) -> List[Dict[str, Any]]:
    """The detector's detections on ``dataset`` as COCO result records (original category ids)."""
    import numpy as np
    from pycocotools import mask as mask_util
    category_of = dataset.category_of if hasattr(dataset, 'category_of') else dataset.dataset.category_of  # Subset
    was_training = detector.training
    detector.eval().to(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate)
    results = []
    try:
        for images, targets in loader:
            outputs = detector([im.to(device) for im in images])
            for target, out in zip(targets, outputs):
                boxes = out['boxes'].float().cpu()
                boxes[:, 2:] -= boxes[:, :2]
                rles = None
                if 'masks' in out:
                    binary = (out['masks'][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
                    rles = [mask_util.encode(np.asfortranarray(m)) for m in binary]
                for k, (box, score, label) in enumerate(zip(boxes.tolist(), out['scores'].tolist(),
                                                            out['labels'].tolist())):
                    if label not in category_of:
                        continue
                    record = {'image_id': target['image_id'], 'category_id': category_of[label],
                              'bbox': [round(v, 2) for v in box], 'score': round(score, 5)}
                    if rles is not None:
                        rle = rles[k]
                        record['segmentation'] = {'size': rle['size'], 'counts': rle['counts'].decode('ascii')}
                    results.append(record)
    finally:
        detector.train(was_training)
    return results


def coco_metrics(dataset: CocoDetection, results: List[Dict[str, Any]], iou_type: str = 'bbox',
                 verbose: bool = False) -> Dict[str, float]:
    """COCOeval summary of ``results`` against the dataset's annotations (0 everywhere when there
    are no detections)."""
    from pycocotools.cocoeval import COCOeval
    if not results:
        return {k: 0.0 for k in COCO_STATS}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        evaluator = COCOeval(dataset.coco, dataset.coco.loadRes(results), iou_type)
        evaluator.params.imgIds = dataset.ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        print(out.getvalue())
    return {k: float(v) for k, v in zip(COCO_STATS, evaluator.stats)}


def evaluate_detector(detector: nn.Module, annotation_file: PathLike, image_dir: PathLike, batch_size: int = 2,
                      device: str = 'cpu', num_workers: int = 0, verbose: bool = False) -> Dict[str, float]:
    """COCO metrics of ``detector`` on a COCO-format set: mAP (IoU 0.50:0.95), mAP50, mAP75, by
    size, and the average recalls; Mask R-CNN adds the same for masks (``segm_mAP``, ...)."""
    masks = getattr(detector, 'se_hub_config', {}).get('kind') == 'maskrcnn'
    dataset = CocoDetection(annotation_file, image_dir, masks=False)
    results = predict_coco(detector, dataset, batch_size, device, num_workers)
    metrics = coco_metrics(dataset, results, 'bbox', verbose)
    if masks:
        metrics.update({f'segm_{k}': v for k, v in coco_metrics(dataset, results, 'segm', verbose).items()})
    return metrics


# --------------------------------------------------------------------------------------------
# training


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
            _same_categories(self.train_set, self.val_set)
        if not self.train_set.categories:
            raise ValueError(f'{train_json} lists no category')
        self.categories = self.train_set.categories
        self.flip = opts.hflip
        self.collate_fn = _collate

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


def _rebuild(config: Dict[str, Any]) -> nn.Module:
    """The detector a config describes, without downloading its backbone weights (they come from
    the checkpoint)."""
    config = dict(config)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a frozen stage is expected here: its weights are in the checkpoint
        return create_detector(config.pop('kind'), config.pop('backbone'), config.pop('num_classes'),
                               pretrained_backbone=False, **config)


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
        detector = _rebuild(info['config'])
        detector.load_state_dict(load_file(str(path / EXPORT_WEIGHTS), device=map_location))
        detector.categories = info['categories']
        return detector.eval()
    state = checkpoints.load(path, map_location)
    detector = _rebuild(state['detector_config'])
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
            return _rebuild(checkpoints.load(last)['detector_config'])
        num_classes = len(CocoDetection(train_json, train_images).categories) + 1
        return create_detector(kind, backbone, num_classes, **(detector_args or {}))

    return train_detector(make, train_json, train_images, val_json, val_images, epochs=epochs, output=output,
                          **options)
