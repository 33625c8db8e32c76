"""The detector: an se_hub model's feature stages (timm ``features_only``) under torchvision's
FeaturePyramidNetwork, in torchvision's Faster R-CNN, RetinaNet or Mask R-CNN (see the package docstring)."""
import warnings
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from ...layers import recomputed_scales

KINDS = ('fasterrcnn', 'retinanet', 'maskrcnn')


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
        # timm's features_only wrapper runs the stages itself: the SE products that the next stage or
        # the FPN keeps are kept as their factors here (what se_hub's models do in forward_features)
        with recomputed_scales() if self.training else nullcontext():
            return self.fpn(OrderedDict(zip(self.feature_names, self.body(x))))


def create_backbone(backbone: str, pretrained: bool = True, trainable_layers: Optional[int] = None,
                    num_levels: int = 4, out_channels: int = 256, extra_blocks: Optional[nn.Module] = None,
                    freeze_bn: Optional[bool] = None) -> SEBackboneWithFPN:
    """The last ``num_levels`` feature levels of ``backbone`` (timm features_only) under an FPN.
    ``trainable_layers`` (stages counted from the top, stem included): None -> 3 when pretrained,
    all otherwise. ``freeze_bn`` None -> frozen BatchNorm when pretrained."""
    from timm.layers import freeze_batch_norm_2d

    import se_hub  # noqa: F401  (registers the models)

    from ..._compat import create_model
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


def rebuild_detector(config: Dict[str, Any]) -> nn.Module:
    """The detector a ``se_hub_config`` describes, without downloading its backbone weights (they
    come from a checkpoint or an export)."""
    config = dict(config)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # a frozen stage is expected here: its weights are in the checkpoint
        return create_detector(config.pop('kind'), config.pop('backbone'), config.pop('num_classes'),
                               pretrained_backbone=False, **config)
