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
"""
import argparse
import contextlib
import io
import json
import math
import os
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from . import checkpoints

PathLike = Union[str, os.PathLike]
KINDS = ('fasterrcnn', 'retinanet', 'maskrcnn')
CHECKPOINT = 'checkpoint.pth'
METRICS = 'metrics.json'
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
    import timm
    from timm.layers import freeze_batch_norm_2d

    import se_hub  # noqa: F401  (registers the models)
    body = timm.create_model(backbone, pretrained=pretrained, features_only=True,
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
    extra = LastLevelP6P7(fpn_channels, fpn_channels) if retina else LastLevelMaxPool()
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
    was_training = detector.training
    detector.eval().to(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate)
    results = []
    try:
        for images, targets in loader:
            outputs = detector([im.to(device) for im in images])
            for target, out in zip(targets, outputs):
                boxes = out['boxes'].cpu()
                boxes[:, 2:] -= boxes[:, :2]
                rles = None
                if 'masks' in out:
                    binary = (out['masks'][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
                    rles = [mask_util.encode(np.asfortranarray(m)) for m in binary]
                for k, (box, score, label) in enumerate(zip(boxes.tolist(), out['scores'].tolist(),
                                                            out['labels'].tolist())):
                    if label not in dataset.category_of:
                        continue
                    record = {'image_id': target['image_id'], 'category_id': dataset.category_of[label],
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


def _epoch_order(n: int, seed: int, epoch: int, flip: bool) -> List[Tuple[int, bool]]:
    """The image order and flips of one epoch, a function of (seed, epoch) only: a resumed run
    sees the same batches as an uninterrupted one."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    flips = (torch.rand(n, generator=g) < 0.5).tolist() if flip else [False] * n
    return [(i, f) for i, f in zip(order, flips)]


def _lr_factor(warmup_iters: int, total_iters: int, warmup_factor: float = 0.001) -> Callable[[int], float]:
    def factor(it: int) -> float:
        if it < warmup_iters:
            return warmup_factor + (1 - warmup_factor) * it / warmup_iters
        progress = (it - warmup_iters) / max(1, total_iters - warmup_iters)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def train_detector(detector: nn.Module, train_json: PathLike, train_images: PathLike,
                   val_json: Optional[PathLike] = None, val_images: Optional[PathLike] = None, epochs: int = 12,
                   output: PathLike = 'output', batch_size: int = 4, lr: float = 0.01, momentum: float = 0.9,
                   weight_decay: float = 1e-4, optimizer: str = 'sgd', warmup_iters: int = 100,
                   grad_clip: Optional[float] = 10.0, hflip: bool = True, resume: Union[bool, PathLike] = False,
                   seed: int = 0, device: str = 'cpu', num_workers: int = 0, eval_every: int = 1,
                   log: Optional[Callable[[str], None]] = print) -> Dict[str, Any]:
    """Fine-tune ``detector`` on a COCO-format set; evaluate on the validation set every
    ``eval_every`` epochs (and after the last). After each epoch ``output/checkpoint.pth`` (model,
    optimizer, scheduler, epoch, RNG states, detector config, categories, history) and
    ``output/metrics.json`` are replaced atomically. ``resume=True`` continues from
    ``output/checkpoint.pth`` (or from the path given). Learning rate: linear warm-up over
    ``warmup_iters`` iterations, then cosine decay to 0 at the end of the last epoch.
    Returns ``{'history': [per-epoch records], 'final': last validation metrics or None}``."""
    log = log or (lambda _msg: None)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    config = getattr(detector, 'se_hub_config', {})
    train_set = CocoDetection(train_json, train_images, train=True, masks=config.get('kind') == 'maskrcnn')
    val_set = None
    if val_json is not None:
        if val_images is None:
            raise ValueError('val_json needs val_images')
        val_set = CocoDetection(val_json, val_images)
        _same_categories(train_set, val_set)
    if config.get('num_classes') is not None and config['num_classes'] < len(train_set.categories) + 1:
        raise ValueError(f"the detector has {config['num_classes']} classes (background included) but "
                         f'{train_json} has {len(train_set.categories)} categories: create it with '
                         f'num_classes={len(train_set.categories) + 1}')
    detector.to(device)
    params = [p for p in detector.parameters() if p.requires_grad]
    if optimizer == 'sgd':
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == 'adamw':
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    iters_per_epoch = math.ceil(len(train_set) / batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_factor(min(warmup_iters, iters_per_epoch * epochs // 2), iters_per_epoch * epochs))
    history: List[Dict[str, Any]] = []
    start = 0
    if resume:
        path = output / CHECKPOINT if resume is True else Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f'no checkpoint to resume from at {path}')
        state = checkpoints.load(path)
        detector.load_state_dict(state['model'])
        opt.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        checkpoints.set_rng_state(state['rng'])
        start, history = state['epoch'], list(state.get('history', []))
        log(f'resumed from {path} after epoch {start}')
    final = history[-1].get('val') if history else None
    for epoch in range(start, epochs):
        detector.train()
        loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, num_workers=num_workers,
                                             sampler=_epoch_order(len(train_set), seed, epoch, hflip),
                                             collate_fn=_collate)
        totals: Dict[str, float] = {}
        t0, steps = time.time(), 0
        for images, targets in loader:
            images = [im.to(device) for im in images]
            targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
            losses = detector(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f'loss is {loss.item()} at epoch {epoch + 1}: '
                                         f'{ {k: v.item() for k, v in losses.items()} }; lower the learning rate')
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            scheduler.step()
            steps += 1
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + v.item()
            totals['loss'] = totals.get('loss', 0.0) + loss.item()
        record: Dict[str, Any] = {'epoch': epoch + 1, 'lr': opt.param_groups[0]['lr'],
                                  'seconds': round(time.time() - t0, 2),
                                  **{k: v / max(1, steps) for k, v in totals.items()}}
        if val_set is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            results = predict_coco(detector, val_set, batch_size, device, num_workers)
            final = coco_metrics(val_set, results)
            record['val'] = final
        history.append(record)
        log(f"epoch {epoch + 1}/{epochs}  loss {record['loss']:.4f}  lr {record['lr']:.2e}"
            + (f"  val mAP {record['val']['mAP']:.4f}  mAP50 {record['val']['mAP50']:.4f}" if 'val' in record else ''))
        checkpoints.save_atomic({'model': detector.state_dict(), 'optimizer': opt.state_dict(),
                                 'scheduler': scheduler.state_dict(), 'epoch': epoch + 1,
                                 'rng': checkpoints.rng_state(), 'config': config,
                                 'categories': train_set.categories, 'history': history}, output / CHECKPOINT)
        checkpoints.write_text_atomic(output / METRICS, json.dumps(
            {'config': config, 'categories': train_set.categories, 'history': history}, indent=1))
    return {'history': history, 'final': final}


def _rebuild(config: Dict[str, Any]) -> nn.Module:
    """The detector a config describes, without downloading its backbone weights (they come from
    the checkpoint)."""
    config = dict(config)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a frozen stage is expected here: its weights are in the checkpoint
        return create_detector(config.pop('kind'), config.pop('backbone'), config.pop('num_classes'),
                               pretrained_backbone=False, **config)


def load_detector(checkpoint: PathLike, map_location: str = 'cpu') -> nn.Module:
    """Rebuild a detector from a checkpoint written by :func:`train_detector` (no download)."""
    state = checkpoints.load(checkpoint, map_location)
    detector = _rebuild(state['config'])
    detector.load_state_dict(state['model'])
    detector.categories = state.get('categories')
    return detector


# --------------------------------------------------------------------------------------------
# command line


def add_cli_parser(subparsers) -> argparse.ArgumentParser:
    """The ``finetune-detect`` verb of ``se-hub``."""
    p = subparsers.add_parser('finetune-detect', help='fine-tune a detector on an SE backbone (COCO-format data)')
    p.add_argument('--backbone', required=True, help='se_hub model (optionally MODEL.TAG), e.g. se_resnet50')
    p.add_argument('--kind', default='fasterrcnn', choices=KINDS)
    p.add_argument('--train-json', required=True, help='COCO annotation file of the training set')
    p.add_argument('--train-images', required=True, help='image folder of the training set')
    p.add_argument('--val-json', help='COCO annotation file of the validation set')
    p.add_argument('--val-images', help='image folder of the validation set')
    p.add_argument('--output', required=True, help='folder for checkpoint.pth and metrics.json')
    p.add_argument('--epochs', type=int, default=12)
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--lr', type=float, default=0.01)
    p.add_argument('--optimizer', default='sgd', choices=('sgd', 'adamw'))
    p.add_argument('--weight-decay', type=float, default=1e-4)
    p.add_argument('--warmup-iters', type=int, default=100)
    p.add_argument('--trainable-layers', type=int, help='backbone stages that train, from the top (default 3)')
    p.add_argument('--no-pretrained', action='store_true', help='train the backbone from scratch')
    p.add_argument('--min-size', type=int, default=800)
    p.add_argument('--max-size', type=int, default=1333)
    p.add_argument('--anchor-sizes', type=int, nargs=5, metavar='S', help='base anchor size per pyramid level')
    p.add_argument('--fpn-channels', type=int, default=256)
    p.add_argument('--resume', action='store_true', help='continue from OUTPUT/checkpoint.pth')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    if args.resume and (Path(args.output) / CHECKPOINT).is_file():
        detector = _rebuild(checkpoints.load(Path(args.output) / CHECKPOINT)['config'])
    else:
        num_classes = len(CocoDetection(args.train_json, args.train_images).categories) + 1
        detector = create_detector(args.kind, args.backbone, num_classes, pretrained_backbone=not args.no_pretrained,
                                   trainable_layers=args.trainable_layers, fpn_channels=args.fpn_channels,
                                   min_size=args.min_size, max_size=args.max_size, anchor_sizes=args.anchor_sizes)
    result = train_detector(detector, args.train_json, args.train_images, args.val_json, args.val_images,
                            epochs=args.epochs, output=args.output, batch_size=args.batch_size, lr=args.lr,
                            optimizer=args.optimizer, weight_decay=args.weight_decay,
                            warmup_iters=args.warmup_iters, resume=args.resume, seed=args.seed, device=args.device,
                            num_workers=args.workers)
    if result['final']:
        print(json.dumps({k: round(v, 4) for k, v in result['final'].items()}))
    return 0
