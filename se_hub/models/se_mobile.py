"""The paper's light mobile networks (TPAMI Table 3): SE-MobileNet and SE-ShuffleNet.

The paper says only that SE variants of MobileNet and ShuffleNet "can be constructed by following
similar schemes" (Sec. 3.3: for plain networks, an SE block after the non-linearity that ends a
unit; for residual units, on the residual branch before the aggregation). The official release
ships no mobile prototxt. The placement here is the one whose parameter counts reproduce the
paper's Table 3 (reduction 16, floored, FC biases):

* **SE-MobileNet** (``SEMobileNet``, "1.0 MobileNet-224" of Howard et al. 2017, Table 1): SE after
  the pointwise convolution's ReLU, i.e. at the end of each of the 13 depthwise-separable blocks:
  4.23M -> 4.72M (paper 4.2M -> 4.7M). SE after the depthwise conv instead would give 4.58M.
* **SE-ShuffleNet** (``SEShuffleNet``, "ShuffleNet 1x (g = 3)" of Zhang et al. 2017, Table 1): SE
  on each unit's residual branch after its last BN, before the addition (stride 1) or the
  concatenation with the pooled shortcut (stride 2): 1.87M -> 2.48M (paper 1.8M -> 2.4M; the
  paper's figures are truncated, not rounded, see README "Paper fidelity").

Key layout of SE-MobileNet: timm's EfficientNet layout (``conv_stem``, ``bn1``,
``blocks.<stage>.<block>.conv_dw / bn1 / conv_pw / bn2``, ``classifier``), so with
``se_layer='none'`` and ``act_layer='relu6'`` it is timm's ``mobilenetv1_100``, and with the
default ReLU the same network with the activation of the MobileNet paper.
"""
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import get_act_layer
from torch import nn

from ..layers import AttentionSlot, SeLayer, resolve_se_layer, scale_add
from ..weights.checkpoint import checkpoint_filter_fn
from .catalog import Family, arch
from .staged import StagedNet, build_on, init_conv_weights, stage_paths

__all__ = ['SEMobileNet', 'SEShuffleNet', 'MOBILENET_V1_STAGES', 'channel_shuffle']

# MobileNet v1 (Howard et al. 2017, Table 1) as stages of depthwise-separable blocks:
# (output channels of the pointwise conv, stride of the depthwise conv) per block.
MOBILENET_V1_STAGES: Tuple[Tuple[Tuple[int, int], ...], ...] = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2),) + ((512, 1),) * 5,
    ((1024, 2), (1024, 1)),
)


class DepthwiseSeparableBlock(AttentionSlot):
    """3x3 depthwise conv -> BN -> act -> 1x1 pointwise conv -> BN -> act -> SE."""
    fusion_pairs = (('conv_dw', 'bn1'), ('conv_pw', 'bn2'))  # (conv, BN) pairs se_hub.deploy.optimize folds

    def __init__(self, in_chs: int, out_chs: int, stride: int, act_layer: Callable[..., nn.Module],
                 attn_layer: Optional[Callable[[int], nn.Module]]):
        super().__init__()
        self.conv_dw = nn.Conv2d(in_chs, in_chs, 3, stride=stride, padding=1, groups=in_chs, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.act1 = act_layer(inplace=True)
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = act_layer(inplace=True)
        self._init_attention(attn_layer(out_chs) if attn_layer is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_dw(x)))
        return self._attend(self.act2(self.bn2(self.conv_pw(x))))


class SEMobileNet(StagedNet):
    """MobileNet v1 with an SE unit ending each depthwise-separable block."""
    fusion_pairs = (('conv_stem', 'bn1'),)  # (conv, BN) pairs se_hub.deploy.optimize folds
    classifier_name = 'classifier'

    def __init__(
            self,
            stages: Sequence[Sequence[Tuple[int, int]]] = MOBILENET_V1_STAGES,
            stem_width: int = 32,
            act_layer: Union[str, Callable[..., nn.Module]] = 'relu',
            se_layer: SeLayer = 'se',
            se_args: Optional[Dict[str, Any]] = None,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        with build_on(self, device, dtype):
            act = get_act_layer(act_layer)
            attn_layer = resolve_se_layer(se_layer, se_args)
            self._init_net(num_classes, in_chans, drop_rate)
            self.conv_stem = nn.Conv2d(in_chans, stem_width, 3, stride=2, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_width)
            self.act1 = act(inplace=True)
            self.stem_pool = nn.Identity()
            in_chs, net_stride, stages_out = stem_width, 2, []
            self.feature_info = []
            for stage_idx, stage in enumerate(stages):
                blocks = []
                for out_chs, stride in stage:
                    blocks.append(DepthwiseSeparableBlock(in_chs, out_chs, stride, act, attn_layer))
                    in_chs = out_chs
                    net_stride *= stride
                stages_out.append(nn.Sequential(*blocks))
                self.feature_info.append(dict(num_chs=in_chs, reduction=net_stride, module=f'blocks.{stage_idx}'))
            self.blocks = nn.Sequential(*stages_out)
            self.final = nn.Identity()
            self._init_trunk(stem=('conv_stem', 'bn1', 'act1', 'stem_pool'), stages=stage_paths('blocks', len(stages)),
                             final=('final',))
            self._init_head(in_chs, num_classes, global_pool)
            init_conv_weights(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv_stem|bn1', blocks=r'^blocks\.(\d+)' if coarse else r'^blocks\.(\d+)\.(\d+)')


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g*n, H, W) -> channels reordered so that each group of the next grouped conv sees
    channels from every group of the previous one (ShuffleNet, Sec. 3.1)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(AttentionSlot):
    """ShuffleNet unit (Zhang et al., Fig. 2 b/c): 1x1 group conv -> BN -> ReLU -> channel shuffle
    -> 3x3 depthwise conv (stride) -> BN -> 1x1 group conv -> BN -> SE; then add the identity
    (stride 1) or concatenate a 3x3/2 average-pooled shortcut (stride 2), then ReLU."""
    fusion_pairs = (('conv1', 'bn1'), ('conv_dw', 'bn2'), ('conv2', 'bn3'))  # (conv, BN) pairs optimize folds

    def __init__(self, in_chs: int, out_chs: int, stride: int, groups: int, first_groups: int,
                 attn_layer: Optional[Callable[[int], nn.Module]]):
        super().__init__()
        mid_chs = out_chs // 4
        branch_chs = out_chs - in_chs if stride == 2 else out_chs
        if stride == 1 and in_chs != out_chs:
            raise ValueError(f'a stride-1 ShuffleNet unit keeps its width ({in_chs} != {out_chs})')
        self.stride = stride
        self.groups = first_groups
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_dw = nn.Conv2d(mid_chs, mid_chs, 3, stride=stride, padding=1, groups=mid_chs, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.conv2 = nn.Conv2d(mid_chs, branch_chs, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_chs)
        self._init_attention(attn_layer(branch_chs) if attn_layer is not None else None, recomputes_products=False)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.act_out = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        if self.groups > 1:
            y = channel_shuffle(y, self.groups)
        z = self.conv2(self.bn2(self.conv_dw(y)))
        y = self.bn3(z)
        if self.se_gates and not torch.jit.is_scripting():
            # SE scale (+ identity) in one step that keeps bn3's input, not y, for backward (se_tail.py)
            if self.stride == 2:
                return self.act_out(torch.cat([self.pool(x), self._scale_bn3(y, z, None)], dim=1))
            return self.act_out(self._scale_bn3(y, z, x))
        y = self._attend(y)
        if self.stride == 2:
            return self.act_out(torch.cat([self.pool(x), y], dim=1))
        return self.act_out(x + y)

    @torch.jit.unused
    def _scale_bn3(self, y: torch.Tensor, z: torch.Tensor, shortcut: Optional[torch.Tensor]) -> torch.Tensor:
        return scale_add(y, self.se(y), shortcut, z, self.bn3)


class SEShuffleNet(StagedNet):
    """ShuffleNet v1: 3x3/2 conv (24) -> 3x3/2 max-pool -> stages 2-4 of ShuffleNet units -> pool -> FC.
    Feature levels: the stem output (stride 2, before the max-pool) and stages 2-4."""
    fusion_pairs = (('conv1', 'bn1'),)  # (conv, BN) pairs se_hub.deploy.optimize folds

    def __init__(
            self,
            groups: int = 3,
            stage_widths: Sequence[int] = (240, 480, 960),
            stage_repeats: Sequence[int] = (4, 8, 4),
            stem_width: int = 24,
            se_layer: SeLayer = 'se',
            se_args: Optional[Dict[str, Any]] = None,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        with build_on(self, device, dtype):
            if len(stage_widths) != len(stage_repeats):
                raise ValueError(f'stage_widths={tuple(stage_widths)} and stage_repeats={tuple(stage_repeats)} '
                                 'must name the same number of stages')
            bad = [w for w in stage_widths if w % 4 or (w // 4) % groups]
            if bad:
                raise ValueError(f'stage widths {bad} do not split into groups={groups} bottlenecks of width / 4')
            attn_layer = resolve_se_layer(se_layer, se_args)
            self._init_net(num_classes, in_chans, drop_rate)
            self.conv1 = nn.Conv2d(in_chans, stem_width, 3, stride=2, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_width)
            self.act1 = nn.ReLU(inplace=True)
            self.stem_pool = nn.MaxPool2d(3, stride=2, padding=1)
            self.feature_info = [dict(num_chs=stem_width, reduction=2, module='act1')]
            in_chs, net_stride, stages = stem_width, 4, []
            for stage_idx, (width, repeats) in enumerate(zip(stage_widths, stage_repeats)):
                units = []
                for i in range(repeats):
                    # the paper: no group conv on the first pointwise layer of stage 2 (only 24 input channels)
                    first_groups = 1 if stage_idx == 0 and i == 0 else groups
                    units.append(ShuffleUnit(in_chs, width, 2 if i == 0 else 1, groups, first_groups, attn_layer))
                    in_chs = width
                net_stride *= 2
                stages.append(nn.Sequential(*units))
                self.feature_info.append(dict(num_chs=width, reduction=net_stride, module=f'stages.{stage_idx}'))
            self.stages = nn.Sequential(*stages)
            self.final = nn.Identity()
            self._init_trunk(stem=('conv1', 'bn1', 'act1', 'stem_pool'), stages=stage_paths('stages', len(stages)),
                             final=('final',))
            self._init_head(in_chs, num_classes, global_pool)
            init_conv_weights(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv1|bn1', blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)')


# ---------------------------------------------------------------------------------------------
# Configurations: the paper's Table 3 (TPAMI version of arXiv:1709.01507). MFLOPs there are
# multiply-adds at 224x224; the errors are the paper's re-implementations.
_SE = dict(se_args=dict(rd_ratio=1 / 16, rd_divisor=1))
_TABLE3 = 'TPAMI Table 3'

ARCHS: Dict[str, Dict[str, Any]] = {}
ARCHS_SHUFFLE: Dict[str, Dict[str, Any]] = {}
ARCHS['se_mobilenet'] = arch(
    'SE-MobileNet: MobileNet v1 1.0-224 with SE after each depthwise-separable block',
    dict(row=f'{_TABLE3}: SE-MobileNet (1.0 MobileNet-224)', params=4.7, gmacs=0.572, top1_err=25.3, top5_err=7.7,
         baseline=dict(params=4.2, gmacs=0.569, top1_err=28.4, top5_err=9.4)),
    **_SE)
ARCHS_SHUFFLE['se_shufflenet'] = arch(
    'SE-ShuffleNet: ShuffleNet v1 1x (g=3) with SE on each unit\'s residual branch',
    dict(row=f'{_TABLE3}: SE-ShuffleNet (ShuffleNet 1x, g=3)', params=2.4, gmacs=0.142, top1_err=31.0,
         top5_err=11.1, baseline=dict(params=1.8, gmacs=0.140, top1_err=32.6, top5_err=12.5)),
    groups=3, **_SE)


def _cfg(name: str) -> Dict[str, Any]:
    spec = ARCHS.get(name) or ARCHS_SHUFFLE[name]
    mobile = name in ARCHS
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv_stem' if mobile else 'conv1', 'classifier': 'classifier' if mobile else 'fc',
        'license': 'apache-2.0', 'description': spec['description'],
        'paper_ids': 'arXiv:1709.01507', 'paper_name': 'Squeeze-and-Excitation Networks',
    }


_FEATURES = dict(feature_cfg=dict(flatten_sequential=True))
_mobilenet = Family(__name__, ARCHS, SEMobileNet, _cfg, checkpoint_filter_fn, **_FEATURES)


@_mobilenet.register
def se_mobilenet(pretrained: bool = False, **kwargs) -> SEMobileNet:
    return _mobilenet.create('se_mobilenet', pretrained, **kwargs)
_shufflenet = Family(__name__, ARCHS_SHUFFLE, SEShuffleNet, _cfg, checkpoint_filter_fn,
                     feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)))


@_shufflenet.register
def se_shufflenet(pretrained: bool = False, **kwargs) -> SEShuffleNet:
    return _shufflenet.create('se_shufflenet', pretrained, **kwargs)
