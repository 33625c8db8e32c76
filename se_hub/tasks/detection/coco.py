"""COCO-format data and evaluation: images and targets for torchvision's detectors, detections as
COCO result records, and COCOeval's summary (pycocotools)."""
import contextlib
import io
import os
from pathlib import Path
from typing import Any, Dict, List, Union

import torch
from torch import nn

PathLike = Union[str, os.PathLike]
# names of COCOeval.stats, in order
COCO_STATS = ('mAP', 'mAP50', 'mAP75', 'mAP_small', 'mAP_medium', 'mAP_large',
              'AR1', 'AR10', 'AR100', 'AR_small', 'AR_medium', 'AR_large')


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
        from torchvision.transforms.functional import pil_to_tensor

        from ...images import read_rgb
        index, flip = index if isinstance(index, tuple) else (index, False)
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info['file_name']
        try:
            image = pil_to_tensor(read_rgb(path)).float().div_(255)
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


def collate(batch):
    """A batch of (image, target) pairs as (images, targets): torchvision's detectors take lists."""
    return tuple(zip(*batch))


def same_categories(train: CocoDetection, val: CocoDetection) -> None:
    """A validation set must name the categories of its training set, with the same ids."""
    a = [(c['id'], c['name']) for c in train.categories]
    b = [(c['id'], c['name']) for c in val.categories]
    if a != b:
        raise ValueError(f'{train.annotation_file} and {val.annotation_file} have different categories: {a} != {b}')


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
                                         collate_fn=collate)
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
