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
:func:`finetune_detector`.

Training runs on :mod:`se_hub.tasks.engine` (AMP, EMA, several processes with torchrun, atomic
``last.pth`` / ``best.pth``, exact ``--resume``, ``metrics.jsonl`` with the COCO metrics of each
evaluated epoch, ``curves.png``). The run's output folder also holds the exported detector
(``detector.safetensors`` + ``detector.json``), rebuilt by ``load_detector(OUTPUT)``.

Layout, as torchvision's ``references/detection``: :mod:`.model` (backbone + FPN, ``create_detector``),
:mod:`.coco` (data, predictions, COCO evaluation), :mod:`.train` (options, the engine task, the export).
"""
from .coco import COCO_STATS, CocoDetection, coco_metrics, evaluate_detector, predict_coco
from .model import KINDS, RetinaNetP6P7, SEBackboneWithFPN, create_backbone, create_detector, rebuild_detector
from .train import (
    EXPORT_CONFIG,
    EXPORT_WEIGHTS,
    DetectionTask,
    DetectOptions,
    finetune_detector,
    load_detector,
    train_detector,
)

__all__ = ['create_detector', 'create_backbone', 'rebuild_detector', 'SEBackboneWithFPN', 'RetinaNetP6P7', 'KINDS',
           'CocoDetection', 'predict_coco', 'coco_metrics', 'evaluate_detector', 'COCO_STATS', 'DetectOptions',
           'DetectionTask', 'train_detector', 'finetune_detector', 'load_detector', 'EXPORT_WEIGHTS',
           'EXPORT_CONFIG']
