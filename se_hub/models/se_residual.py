"""SE-ResNet, SE-ResNeXt and SENet-154: one configurable residual family.

Layout differences between the official (Caffe / Cadene) release and the torchvision / timm
layout are options of one class, not copies:

* ``stride_in_1x1``   stride on the bottleneck's first 1x1 (Caffe SE-ResNet) or on the 3x3
* ``stem_type``       '' (7x7 conv) or 'deep' (three 3x3 convs, ``stem_width`` wide)
* ``stem_pool``       'ceil' (3x3/2 max-pool, no padding, ceil mode: Caffe) or 'pad' (padding 1)
* ``down_kernel_size`` / ``avg_down``  projection shortcut: 1x1 or 3x3 strided conv, or avg-pool + 1x1
* ``se_args``         the SE block's squeeze / reduction (and its rounding) / gate
* ``se_placement``    'standard', 'pre', 'post', 'identity' or '3x3' (the paper's integration designs)
* ``se_stages``       the stages (0-3, the paper's conv2_x-conv5_x) that get SE
* ``pre_se_act``      Cadene's SE-ResNet-18/34 apply a ReLU before the SE unit
"""
import math
import re
from typing import Any, Callable, Dict, Optional, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath
from torch import nn

from ..layers import AttentionSlot, SeLayer, resolve_se_layer, scale_add
from ..weights.checkpoint import StateDict, checkpoint_filter_fn, register_layout
from .catalog import Family, arch
from .staged import StagedNet, build_on, init_conv_weights

__all__ = ['SEResNet']

SE_PLACEMENTS = ('standard', 'pre', 'post', 'identity', '3x3')


class ResidualBlock(AttentionSlot):
    """A residual block with an optional SE unit; subclasses build the branch's convolutions."""
    expansion = 1
    fusion = 'residual'  # how se_hub.deploy.optimize rebuilds it

    def _init_se(
            self,
            inplanes: int,
            width: int,
            outplanes: int,
            downsample: Optional[nn.Module],
            attn_layer: Optional[Callable[[int], nn.Module]],
            se_placement: str,
            pre_se_act: bool,
            drop_path_rate: float,
    ) -> None:
        if se_placement not in SE_PLACEMENTS:
            raise ValueError(f"se_placement={se_placement!r} is not one of {SE_PLACEMENTS}")
        self.se_placement = se_placement
        se_channels = {'pre': inplanes, '3x3': width}.get(se_placement, outplanes)
        # the standard placement scales through the BatchNorm-statistics tail (se_tail.py)
        self._init_attention(attn_layer(se_channels) if attn_layer is not None else None,
                             recomputes_products=se_placement != 'standard')
        self.pre_se_act = nn.ReLU(inplace=True) if pre_se_act else nn.Identity()
        self.act_out = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch up to (not including) its last BatchNorm."""
        raise NotImplementedError

    def last_norm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.jit.ignore
    def last_bn(self) -> nn.Module:
        raise NotImplementedError

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.last_bn().weight)

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    @torch.jit.unused
    def _scale_add(self, y: torch.Tensor, gate: torch.Tensor, shortcut: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return scale_add(y, gate, shortcut, z, self.last_bn())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.se_placement == 'pre':
            x = self._attend(x)
        z = self.residual(x)
        x = self.pre_se_act(self.last_norm(z))
        shortcut = self._shortcut(shortcut)
        if self.se_placement == 'identity':
            shortcut = self._attend(shortcut)
        if self.se_gates and self.se_placement == 'standard':
            gate = self.se(x)
            if self.drop_path is not None:
                x = self.drop_path(x * gate) + shortcut
            elif torch.jit.is_scripting():
                x = torch.addcmul(shortcut, x, gate)
            else:
                # scale + add in one pass; in training autograd keeps the BN input, not x (se_tail.py)
                x = self._scale_add(x, gate, shortcut, z)
        else:
            if self.se_placement == 'standard':
                x = self._attend(x)
            if self.drop_path is not None:
                x = self.drop_path(x)
            x = x + shortcut
        x = self.act_out(x)
        if self.se_placement == 'post':
            x = self._attend(x)
        return x


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34)."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 cardinality: int = 1, base_width: int = 64, reduce_first: int = 1, stride_in_1x1: bool = False,
                 attn_layer=None, se_placement: str = 'standard', pre_se_act: bool = False,
                 drop_path_rate: float = 0.):
        super().__init__()
        if cardinality != 1 or base_width != 64 or reduce_first != 1:
            raise ValueError('basic blocks take no cardinality, base_width or reduce_first')
        if se_placement == '3x3':
            raise ValueError("se_placement='3x3' (SE after a bottleneck's spatial conv) needs bottleneck blocks")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self._init_se(inplanes, planes, planes, downsample, attn_layer, se_placement, pre_se_act, drop_path_rate)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act1(self.bn1(self.conv1(x))))

    def last_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(x)

    @torch.jit.ignore
    def last_bn(self) -> nn.Module:
        return self.bn2


class Bottleneck(ResidualBlock):
    """1x1 - 3x3 (grouped for ResNeXt) - 1x1, expansion 4."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 cardinality: int = 1, base_width: int = 64, reduce_first: int = 1, stride_in_1x1: bool = False,
                 attn_layer=None, se_placement: str = 'standard', pre_se_act: bool = False,
                 drop_path_rate: float = 0.):
        super().__init__()
        width = int(math.floor(planes * (base_width / 64)) * cardinality)
        first_planes = width // reduce_first
        outplanes = planes * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, first_planes, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(first_planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(first_planes, width, 3, stride=s3, padding=1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self._init_se(inplanes, width, outplanes, downsample, attn_layer, se_placement, pre_se_act, drop_path_rate)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        if self.se_placement == '3x3':
            x = self._attend(x)
        return self.conv3(x)

    def last_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(x)

    @torch.jit.ignore
    def last_bn(self) -> nn.Module:
        return self.bn3


def make_downsample(inplanes: int, outplanes: int, stride: int, kernel_size: int, avg_down: bool) -> nn.Module:
    if avg_down:
        pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
        return nn.Sequential(pool, nn.Conv2d(inplanes, outplanes, 1, bias=False), nn.BatchNorm2d(outplanes))
    kernel_size = kernel_size if stride > 1 else 1
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(outplanes),
    )


class SEResNet(StagedNet):
    """SE-ResNet / SE-ResNeXt / SENet family (module names follow timm's ResNet: conv1, bn1,
    act1, maxpool, layer1-4, fc), so timm-layout checkpoints load as they are. Feature level 0 is
    the stem output (before the max-pool), 1-4 the outputs of layer1-4."""
    fusion_pairs = (('conv1', 'bn1'),)  # (conv, BN) pairs se_hub.deploy.optimize folds

    def __init__(
            self,
            layers: Sequence[int],
            bottleneck: bool = True,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            cardinality: int = 1,
            base_width: int = 64,
            reduce_first: int = 1,
            stride_in_1x1: bool = False,
            stem_type: str = '',
            stem_width: int = 64,
            stem_pool: str = 'pad',
            down_kernel_size: int = 1,
            avg_down: bool = False,
            se_layer: SeLayer = 'se',
            se_args: Optional[Dict[str, Any]] = None,
            se_placement: str = 'standard',
            se_stages: Sequence[int] = (0, 1, 2, 3),
            pre_se_act: bool = False,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            zero_init_last: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        with build_on(self, device, dtype):
            if stem_type not in ('', 'deep'):
                raise ValueError(f"stem_type={stem_type!r} is not '' (7x7) or 'deep' (3x3 x3)")
            if stem_pool not in ('ceil', 'pad'):
                raise ValueError(f"stem_pool={stem_pool!r} is not 'ceil' (Caffe) or 'pad' (torchvision)")
            if len(layers) != 4:
                raise ValueError(f'layers={tuple(layers)} must give the block count of each of the 4 stages')
            if not set(se_stages) <= {0, 1, 2, 3}:
                raise ValueError(f"se_stages={tuple(se_stages)} must be a subset of stage indices 0-3")
            self._init_net(num_classes, in_chans, drop_rate)
            attn_layer = resolve_se_layer(se_layer, se_args)

            if stem_type == 'deep':
                inplanes = stem_width * 2
                self.conv1 = nn.Sequential(
                    nn.Conv2d(in_chans, stem_width, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(stem_width),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(stem_width, stem_width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(stem_width),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(stem_width, inplanes, 3, padding=1, bias=False),
                )
            else:
                inplanes = stem_width
                self.conv1 = nn.Conv2d(in_chans, inplanes, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(inplanes)
            self.act1 = nn.ReLU(inplace=True)
            if stem_pool == 'ceil':
                self.maxpool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            else:
                self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            self.feature_info = [dict(num_chs=inplanes, reduction=2, module='act1')]

            block_cls = Bottleneck if bottleneck else BasicBlock
            expansion = block_cls.expansion
            total_blocks, block_idx, net_stride = sum(layers), 0, 4
            for stage_idx, (planes, num_blocks) in enumerate(zip((64, 128, 256, 512), layers)):
                stride = 1 if stage_idx == 0 else 2
                net_stride *= stride
                outplanes = planes * expansion
                blocks = []
                for i in range(num_blocks):
                    block_stride = stride if i == 0 else 1
                    downsample = None
                    if i == 0 and (stride != 1 or inplanes != outplanes):
                        downsample = make_downsample(inplanes, outplanes, stride, down_kernel_size, avg_down)
                    blocks.append(block_cls(
                        inplanes, planes,
                        stride=block_stride,
                        downsample=downsample,
                        cardinality=cardinality,
                        base_width=base_width,
                        reduce_first=reduce_first,
                        stride_in_1x1=stride_in_1x1,
                        attn_layer=attn_layer if stage_idx in se_stages else None,
                        se_placement=se_placement,
                        pre_se_act=pre_se_act,
                        drop_path_rate=drop_path_rate * block_idx / max(total_blocks - 1, 1),
                    ))
                    inplanes = outplanes
                    block_idx += 1
                self.add_module(f'layer{stage_idx + 1}', nn.Sequential(*blocks))
                self.feature_info.append(dict(num_chs=outplanes, reduction=net_stride, module=f'layer{stage_idx + 1}'))

            self._init_trunk(stem=('conv1', 'bn1', 'act1', 'maxpool'), stages=('layer1', 'layer2', 'layer3', 'layer4'))
            self._init_head(inplanes, num_classes, global_pool)
            self.init_weights(zero_init_last)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        init_conv_weights(self)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, ResidualBlock):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, str]:
        return dict(stem=r'^conv1|bn1|maxpool', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')


# ---------------------------------------------------------------------------------------------
# Configurations. Each registered name maps to keyword arguments of SEResNet plus what the
# paper / the upstream release says about it.

# The official Caffe release (hujie-frank/SENet) and its Cadene port (timm's legacy_* models):
# ceil-mode max-pool, SE width floor(C/16). SE-ResNet strides on the first 1x1; SE-ResNeXt and
# SENet-154 stride on the 3x3.
_CAFFE = dict(stem_pool='ceil', se_args=dict(rd_divisor=1))
# torchvision / timm layout (timm's seresnet*, seresnext*, senet154 carry timm's own weights):
# padded max-pool, stride on the 3x3, SE width rounded to a multiple of 8.
_TIMM = dict(stem_pool='pad', se_args=dict(rd_divisor=8))

_R18, _R34, _R50, _R101, _R152 = (2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)
_X32x4 = dict(cardinality=32, base_width=4)
_SENET154 = dict(layers=_R152, cardinality=64, base_width=4, reduce_first=2, stem_type='deep', down_kernel_size=3)


ARCHS: Dict[str, Dict[str, Any]] = {
    # paper / official-release layout
    'se_resnet18': arch('SE-ResNet-18 (Cadene layout)', upstream='legacy_seresnet18',
                         layers=_R18, bottleneck=False, pre_se_act=True, **_CAFFE),
    'se_resnet34': arch('SE-ResNet-34 (Cadene layout)', upstream='legacy_seresnet34',
                         layers=_R34, bottleneck=False, pre_se_act=True, **_CAFFE),
    'se_resnet50': arch('SE-ResNet-50', dict(row='Table 2 / ablations: SE-ResNet-50', params=28.1, gmacs=3.87,
                                              top1_err=22.28, top5_err=6.03),
                         upstream='legacy_seresnet50', layers=_R50, stride_in_1x1=True, **_CAFFE),
    'se_resnet101': arch('SE-ResNet-101', dict(row='Table 2: SE-ResNet-101', gmacs=7.60),
                          upstream='legacy_seresnet101', layers=_R101, stride_in_1x1=True, **_CAFFE),
    'se_resnet152': arch('SE-ResNet-152', dict(row='Table 2: SE-ResNet-152', gmacs=11.32),
                          upstream='legacy_seresnet152', layers=_R152, stride_in_1x1=True, **_CAFFE),
    'se_resnext26_32x4d': arch('SE-ResNeXt-26 (32x4d)', upstream='legacy_seresnext26_32x4d',
                                layers=_R18, **_X32x4, **_CAFFE),
    'se_resnext50_32x4d': arch('SE-ResNeXt-50 (32x4d)', dict(row='Table 2: SE-ResNeXt-50', gmacs=4.25),
                                upstream='legacy_seresnext50_32x4d', layers=_R50, **_X32x4, **_CAFFE),
    'se_resnext101_32x4d': arch('SE-ResNeXt-101 (32x4d)', dict(row='Table 2: SE-ResNeXt-101', gmacs=8.00),
                                 upstream='legacy_seresnext101_32x4d', layers=_R101, **_X32x4, **_CAFFE),
    'se_senet154': arch('SENet-154', dict(row='ImageNet comparison: SENet-154'),
                         upstream='legacy_senet154', drop_rate=0.2, **_SENET154, **_CAFFE),
    # torchvision / timm layout
    'se_resnet18b': arch('SE-ResNet-18, timm layout', upstream='seresnet18',
                          layers=_R18, bottleneck=False, **_TIMM),
    'se_resnet34b': arch('SE-ResNet-34, timm layout', upstream='seresnet34',
                          layers=_R34, bottleneck=False, **_TIMM),
    'se_resnet50b': arch('SE-ResNet-50, timm layout', upstream='seresnet50', layers=_R50, **_TIMM),
    'se_resnet101b': arch('SE-ResNet-101, timm layout', upstream='seresnet101', layers=_R101, **_TIMM),
    'se_resnet152b': arch('SE-ResNet-152, timm layout', upstream='seresnet152', layers=_R152, **_TIMM),
    'se_resnet152d': arch('SE-ResNet-152-D: deep 32-wide stem, avg-pool shortcut', upstream='seresnet152d',
                           layers=_R152, stem_type='deep', stem_width=32, avg_down=True, **_TIMM),
    'se_resnext26d_32x4d': arch('SE-ResNeXt-26-D (32x4d): deep stem, avg-pool shortcut',
                                 upstream='seresnext26d_32x4d', layers=_R18, stem_type='deep', stem_width=32,
                                 avg_down=True, **_X32x4, **_TIMM),
    'se_resnext50b_32x4d': arch('SE-ResNeXt-50 (32x4d), timm layout', upstream='seresnext50_32x4d',
                                 layers=_R50, **_X32x4, **_TIMM),
    'se_resnext101b_32x4d': arch('SE-ResNeXt-101 (32x4d), timm layout', upstream='seresnext101_32x4d',
                                  layers=_R101, **_X32x4, **_TIMM),
    'se_resnext101b_32x8d': arch('SE-ResNeXt-101 (32x8d), timm layout', upstream='seresnext101_32x8d',
                                  layers=_R101, cardinality=32, base_width=8, **_TIMM),
    'se_senet154b': arch('SENet-154, timm (Gluon) layout', upstream='senet154', **_SENET154, **_TIMM),
}

# The SE-ResNet-50 ablations of the paper (Tables 3-7 in the TPAMI version), one model per row.
_SE50 = ARCHS['se_resnet50']['args']
_ERR = {  # top-1 / top-5 error (%) reported by the paper for each row
    'none': (23.30, 6.55), 'gmp': (22.57, 6.09), 'nosqueeze': (22.93, 6.39),
    'r2': (22.29, 6.00), 'r4': (22.25, 6.09), 'r8': (22.26, 5.99), 'r32': (22.72, 6.20),
    'tanh': (23.00, 6.38), 'relu': (23.47, 6.98),
    'pre': (22.23, 6.00), 'post': (22.78, 6.35), 'identity': (22.20, 6.15), '3x3': (22.48, 6.02),
    'stage2': (23.03, 6.48), 'stage3': (23.04, 6.32), 'stage4': (22.68, 6.22),
}
_ABLATIONS = {
    'none': ('ResNet-50 baseline (no SE)', 'squeeze: Vanilla ResNet-50', dict(se_layer=None), 25.6, 3.86),
    'gmp': ('squeeze = global max pooling', 'squeeze operator: GMP', dict(se_args=dict(squeeze='max')), None, None),
    'nosqueeze': ('NoSqueeze: excitation by 1x1 convs at every position', 'squeeze: NoSqueeze',
                  dict(se_args=dict(squeeze='none')), 28.1, 4.27),
    'r2': ('reduction ratio r = 2', 'reduction ratio: r = 2', dict(se_args=dict(rd_ratio=1 / 2)), 45.7, None),
    'r4': ('reduction ratio r = 4', 'reduction ratio: r = 4', dict(se_args=dict(rd_ratio=1 / 4)), 35.7, None),
    'r8': ('reduction ratio r = 8', 'reduction ratio: r = 8', dict(se_args=dict(rd_ratio=1 / 8)), 30.7, None),
    'r32': ('reduction ratio r = 32', 'reduction ratio: r = 32', dict(se_args=dict(rd_ratio=1 / 32)), 26.9, None),
    'tanh': ('excitation gate = tanh', 'excitation: Tanh', dict(se_args=dict(gate='tanh')), None, None),
    'relu': ('excitation gate = ReLU', 'excitation: ReLU', dict(se_args=dict(gate='relu')), None, None),
    'pre': ('SE-PRE: SE before the residual unit', 'integration: SE-PRE', dict(se_placement='pre'), None, None),
    'post': ('SE-POST: SE after the addition (after ReLU)', 'integration: SE-POST',
             dict(se_placement='post'), None, None),
    'identity': ('SE-Identity: SE on the identity branch', 'integration: SE-Identity',
                 dict(se_placement='identity'), None, None),
    '3x3': ('SE-3x3: SE after the 3x3 convolution', 'integration: SE-3x3', dict(se_placement='3x3'), 25.8, 3.86),
    'stage2': ('SE in stage 2 (conv2_x) only', 'stages: SE Stage 2', dict(se_stages=(0,)), 25.6, 3.86),
    'stage3': ('SE in stage 3 (conv3_x) only', 'stages: SE Stage 3', dict(se_stages=(1,)), 25.7, 3.86),
    'stage4': ('SE in stage 4 (conv4_x) only', 'stages: SE Stage 4', dict(se_stages=(2,)), 26.4, 3.86),
}
for _suffix, (_desc, _row, _change, _params, _gmacs) in _ABLATIONS.items():
    _args = dict(_SE50, **_change)
    _args['se_args'] = dict(_SE50['se_args'], **_change.get('se_args', {}))
    _paper = dict(row=f'ablation, {_row}', top1_err=_ERR[_suffix][0], top5_err=_ERR[_suffix][1])
    _paper.update({k: v for k, v in (('params', _params), ('gmacs', _gmacs)) if v is not None})
    ARCHS[f'se_resnet50_{_suffix}'] = arch(f'SE-ResNet-50 ablation: {_desc}', _paper, **_args)


_CADENE_STEM = {  # layer0 of the Caffe / Cadene SENets -> timm-style stem
    'deep': {'conv1': 'conv1.0', 'bn1': 'conv1.1', 'conv2': 'conv1.3', 'bn2': 'conv1.4', 'conv3': 'conv1.6',
             'bn3': 'bn1'},
    '7x7': {'conv1': 'conv1', 'bn1': 'bn1'},
}


def _from_cadene(sd: StateDict) -> StateDict:
    stem = _CADENE_STEM['deep' if 'layer0.conv2.weight' in sd else '7x7']
    out = {}
    for key, value in sd.items():
        m = re.match(r'layer0\.(\w+)\.(.+)', key)
        if m:
            key = f'{stem.get(m.group(1), "layer0." + m.group(1))}.{m.group(2)}'
        key = re.sub(r'^last_linear\.', 'fc.', key.replace('.se_module.', '.se.'))
        out[key] = value
    return out


register_layout(
    'cadene', 'Cadene pretrainedmodels / timm legacy_se* (layer0.*, se_module, last_linear)',
    lambda keys: any(k.startswith(('layer0.', 'last_linear.')) for k in keys), _from_cadene)


def _cfg(name: str) -> Dict[str, Any]:
    spec = ARCHS[name]
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1.0' if spec['args'].get('stem_type') == 'deep' else 'conv1',
        'classifier': 'fc', 'license': 'apache-2.0',
        'description': spec['description'],
        'paper_ids': 'arXiv:1709.01507', 'paper_name': 'Squeeze-and-Excitation Networks',
    }


_family = Family(__name__, ARCHS, SEResNet, _cfg, checkpoint_filter_fn)


@_family.register
def se_resnet18(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet18', pretrained, **kwargs)


@_family.register
def se_resnet34(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet34', pretrained, **kwargs)


@_family.register
def se_resnet50(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50', pretrained, **kwargs)


@_family.register
def se_resnet101(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet101', pretrained, **kwargs)


@_family.register
def se_resnet152(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet152', pretrained, **kwargs)


@_family.register
def se_resnext26_32x4d(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnext26_32x4d', pretrained, **kwargs)


@_family.register
def se_resnext50_32x4d(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnext50_32x4d', pretrained, **kwargs)


@_family.register
def se_resnext101_32x4d(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnext101_32x4d', pretrained, **kwargs)


@_family.register
def se_senet154(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_senet154', pretrained, **kwargs)


@_family.register
def se_resnet18b(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet18b', pretrained, **kwargs)


@_family.register
def se_resnet34b(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet34b', pretrained, **kwargs)


@_family.register
def se_resnet50b(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50b', pretrained, **kwargs)


@_family.register
def se_resnet101b(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet101b', pretrained, **kwargs)


@_family.register
def se_resnet152b(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet152b', pretrained, **kwargs)


@_family.register
def se_resnet152d(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet152d', pretrained, **kwargs)


@_family.register
def se_resnext26d_32x4d(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnext26d_32x4d', pretrained, **kwargs)


@_family.register
def se_resnext50b_32x4d(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnext50b_32x4d', pretrained, **kwargs)


@_family.register
def se_resnext101b_32x4d(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnext101b_32x4d', pretrained, **kwargs)


@_family.register
def se_resnext101b_32x8d(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnext101b_32x8d', pretrained, **kwargs)


@_family.register
def se_senet154b(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_senet154b', pretrained, **kwargs)


@_family.register
def se_resnet50_none(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_none', pretrained, **kwargs)


@_family.register
def se_resnet50_gmp(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_gmp', pretrained, **kwargs)


@_family.register
def se_resnet50_nosqueeze(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_nosqueeze', pretrained, **kwargs)


@_family.register
def se_resnet50_r2(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_r2', pretrained, **kwargs)


@_family.register
def se_resnet50_r4(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_r4', pretrained, **kwargs)


@_family.register
def se_resnet50_r8(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_r8', pretrained, **kwargs)


@_family.register
def se_resnet50_r32(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_r32', pretrained, **kwargs)


@_family.register
def se_resnet50_tanh(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_tanh', pretrained, **kwargs)


@_family.register
def se_resnet50_relu(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_relu', pretrained, **kwargs)


@_family.register
def se_resnet50_pre(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_pre', pretrained, **kwargs)


@_family.register
def se_resnet50_post(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_post', pretrained, **kwargs)


@_family.register
def se_resnet50_identity(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_identity', pretrained, **kwargs)


@_family.register
def se_resnet50_3x3(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_3x3', pretrained, **kwargs)


@_family.register
def se_resnet50_stage2(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_stage2', pretrained, **kwargs)


@_family.register
def se_resnet50_stage3(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_stage3', pretrained, **kwargs)


@_family.register
def se_resnet50_stage4(pretrained: bool = False, **kwargs) -> SEResNet:
    return _family.create('se_resnet50_stage4', pretrained, **kwargs)
