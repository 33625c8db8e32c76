"""The paper's CIFAR networks: SE-ResNet-20/32/56/110, SE-ResNet-164 and SE-WRN-16-8, one class.

Three stages at 32x32, 16x16 and 8x8 (widths 16 / 32 / 64, times ``widen_factor``), a 3x3 stem
conv to 16 channels, global average pooling over the final 8x8 map and a linear classifier.
The block types are options of :class:`SECifarResNet`:

* ``block='basic'``        post-activation basic block (He et al., "Deep Residual Learning",
  Sec. 4.2): conv-BN-ReLU-conv-BN -> SE -> add -> ReLU; depth = 6n + 2 (ResNet-20/32/56/110).
  This is the residual family's :class:`~se_hub.models.se_residual.BasicBlock` itself, memory-lean
  SE tail included.
* ``block='preact_bottleneck'``  pre-activation bottleneck (He et al., "Identity Mappings in
  Deep Residual Networks"): BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1 (expansion 4) -> SE -> add;
  depth = 9n + 2 (ResNet-164: n = 18). A final BN-ReLU (``norm``) follows the last stage.
* ``block='preact_basic'`` pre-activation basic block of the Wide ResNets (Zagoruyko & Komodakis):
  BN-ReLU-3x3, BN-ReLU-3x3 -> SE -> add; WRN-d-k has n = (d - 4) / 6 blocks per stage, width k x.

The SE unit sits on the residual branch, before the addition, as in the paper's SE-ResNet
module (Fig. 3), with reduction 16 floored (``SqueezeExcite(rd_divisor=1)``), at least 1 wide.

Shortcuts (``shortcut=``), chosen per network by the literature's parameter counts where they
decide, else by the original paper's text:

* ``'A'`` parameter-free: the identity subsampled with stride 2 (the top-left pixel of each
  2x2 cell) and zero channels appended. He et al. use it for all their CIFAR ResNets ("Deep
  Residual Learning", Sec. 4.2). ResNet-20 has 269,722 parameters (literature: 0.27M), ResNet-110
  1,727,962 (1.73M). The counts alone do not decide here: 1x1 conv + BN projections would give
  272,474 / 1,730,714, which round the same; the paper's text does.
* ``'B'`` a 1x1 projection where the shape changes, identity elsewhere. For the pre-activation
  blocks the projection takes the pre-activated input and has no BN after it (He et al. 2016,
  Zagoruyko & Komodakis). ResNet-164: 1,703,258 (literature: 1.70M; option A would give
  1,661,274 = 1.66M); WRN-16-8: 10,961,370 (10.96M; option A: 10,795,482 = 10.80M).
  For post-activation blocks option B is a 1x1 conv + BN (He et al. 2015).

All counts with 10 classes, no SE (``se_layer='none'``).

Weights are initialised as in He et al.: Kaiming-normal (fan-out) convolutions, unit BN scale.
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, DropPath
from torch import nn

from ..layers import AttentionSlot, SeLayer, resolve_se_layer, scaled_residual
from ..weights.checkpoint import checkpoint_filter_fn
from .catalog import Family, arch
from .se_residual import BasicBlock
from .staged import StagedNet, build_on, init_conv_weights

__all__ = ['SECifarResNet']

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)  # per-channel std of the CIFAR-10 training pixels

BLOCK_TYPES = ('basic', 'preact_basic', 'preact_bottleneck')
SHORTCUT_TYPES = ('A', 'B')


class PadShortcut(nn.Module):
    """Option-A shortcut: stride-``s`` subsampled identity with zero channels appended."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        if out_chs < in_chs:
            raise ValueError(f'a zero-padded shortcut cannot narrow {in_chs} to {out_chs} channels')
        self.stride = stride
        self.pad = out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, [0, 0, 0, 0, 0, self.pad])

    def extra_repr(self) -> str:
        return f'stride={self.stride}, pad={self.pad}'


class PreActBlock(AttentionSlot):
    """A pre-activation residual unit: ``x + SE(branch(relu(bn(x))))``. A 1x1 projection
    shortcut takes the pre-activated input; an option-A or identity shortcut takes ``x``."""
    fusion = 'preact_residual'  # how se_hub.deploy.optimize rebuilds it

    def _init_tail(self, outplanes: int, downsample: Optional[nn.Module], attn_layer, drop_path_rate: float):
        # the product meets only the shortcut addition: scaled_residual, no recomputed_scales() needed
        self._init_attention(attn_layer(outplanes) if attn_layer is not None else None, recomputes_products=False)
        self.downsample = downsample
        self.shortcut_preact = isinstance(downsample, nn.Conv2d)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch after the first pre-activation."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pre = self.act1(self.bn1(x))
        if self.downsample is None:
            shortcut = x
        elif self.shortcut_preact:
            shortcut = self.downsample(x_pre)
        else:
            shortcut = self.downsample(x)
        out = self.residual(x_pre)
        if self.se_gates and self.drop_path is None and not torch.jit.is_scripting():
            return self._scaled_tail(out, shortcut, x_pre)
        out = self._attend(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        return out + shortcut

    @torch.jit.unused
    def _scaled_tail(self, branch: torch.Tensor, shortcut: torch.Tensor, x_pre: torch.Tensor) -> torch.Tensor:
        # branch * gate + shortcut, keeping for backward only what the SE-free block keeps (recomputed_scale.py)
        gate = self.se(branch)
        if torch.compiler.is_compiling():
            return branch * gate + shortcut
        projection = (self.downsample, x_pre) if self.shortcut_preact else None
        return scaled_residual(branch, gate, shortcut, 1.0, None, projection)


class PreActBasicBlock(PreActBlock):
    """BN-ReLU-3x3, BN-ReLU-3x3 (Wide ResNet block)."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 attn_layer=None, drop_path_rate: float = 0.):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self._init_tail(planes, downsample, attn_layer, drop_path_rate)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act2(self.bn2(self.conv1(x))))


class PreActBottleneck(PreActBlock):
    """BN-ReLU-1x1, BN-ReLU-3x3 (strided), BN-ReLU-1x1 to 4x the width (ResNet-164 block)."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 attn_layer=None, drop_path_rate: float = 0.):
        super().__init__()
        outplanes = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.act3 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, outplanes, 1, bias=False)
        self._init_tail(outplanes, downsample, attn_layer, drop_path_rate)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.bn2(self.conv1(x)))
        x = self.act3(self.bn3(self.conv2(x)))
        return self.conv3(x)


def make_shortcut(kind: str, inplanes: int, outplanes: int, stride: int, preact: bool) -> Optional[nn.Module]:
    """None (identity) where the shape is kept; option A or B where it changes."""
    if stride == 1 and inplanes == outplanes:
        return None
    if kind == 'A':
        return PadShortcut(inplanes, outplanes, stride)
    conv = nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False)
    return conv if preact else nn.Sequential(conv, nn.BatchNorm2d(outplanes))


class SECifarResNet(StagedNet):
    """SE-ResNet / SE-WRN for 32x32 inputs: stem (conv1, bn1, act1), layer1-3, norm, head (fc).

    Feature taps: 0 the stem output (``act1``; in pre-activation networks ``bn1`` / ``act1`` are
    identities: the stem is ``conv1`` alone), 1-3 the stages. In pre-activation networks the last
    tap's module is the final BN-ReLU (``norm``), as in timm's ResNetV2, and
    ``forward_intermediates(norm=True)`` applies it to the last tap; post-activation networks
    have no final norm (``norm`` is an identity).
    """
    final_is_norm = True
    fusion_pairs = (('conv1', 'bn1'),)  # (conv, BN) pairs se_hub.deploy.optimize folds

    def __init__(
            self,
            layers: Sequence[int],
            block: str = 'basic',
            widths: Sequence[int] = (16, 32, 64),
            widen_factor: int = 1,
            stem_width: int = 16,
            shortcut: str = 'A',
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = 'avg',
            se_layer: SeLayer = 'se',
            se_args: Optional[Dict[str, Any]] = None,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        with build_on(self, device, dtype):
            if block not in BLOCK_TYPES:
                raise ValueError(f'block={block!r} is not one of {BLOCK_TYPES}')
            if shortcut not in SHORTCUT_TYPES:
                raise ValueError(f'shortcut={shortcut!r} is not one of {SHORTCUT_TYPES}')
            if len(layers) != 3 or len(widths) != 3:
                raise ValueError(f'layers={tuple(layers)} and widths={tuple(widths)} must name 3 stages')
            self._init_net(num_classes, in_chans, drop_rate)
            self.preact = block != 'basic'
            attn_layer = resolve_se_layer(se_layer, se_args)

            self.conv1 = nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=False)
            # pre-activation: the first unit's BN-ReLU normalises the stem, which is the conv alone
            self.bn1 = nn.Identity() if self.preact else nn.BatchNorm2d(stem_width)
            self.act1 = nn.Identity() if self.preact else nn.ReLU(inplace=True)
            self.feature_info = [dict(num_chs=stem_width, reduction=1, module='act1')]

            block_cls = {'basic': BasicBlock, 'preact_basic': PreActBasicBlock,
                         'preact_bottleneck': PreActBottleneck}[block]
            expansion = block_cls.expansion
            inplanes, net_stride, block_idx, total_blocks = stem_width, 1, 0, sum(layers)
            for stage_idx, (width, num_blocks) in enumerate(zip(widths, layers)):
                stride = 1 if stage_idx == 0 else 2
                net_stride *= stride
                planes = width * widen_factor
                outplanes = planes * expansion
                blocks = []
                for i in range(num_blocks):
                    block_stride = stride if i == 0 else 1
                    downsample = make_shortcut(shortcut, inplanes, outplanes, block_stride, self.preact)
                    dpr = drop_path_rate * block_idx / max(total_blocks - 1, 1)
                    blocks.append(block_cls(inplanes, planes, stride=block_stride, downsample=downsample,
                                            attn_layer=attn_layer, drop_path_rate=dpr))
                    inplanes = outplanes
                    block_idx += 1
                self.add_module(f'layer{stage_idx + 1}', nn.Sequential(*blocks))
                self.feature_info.append(dict(num_chs=outplanes, reduction=net_stride, module=f'layer{stage_idx + 1}'))

            if self.preact:
                self.norm = BatchNormAct2d(inplanes, act_layer=nn.ReLU)
                self.feature_info[-1]['module'] = 'norm'
            else:
                self.norm = nn.Identity()
            # the last level's tap is layer3's output (the final norm's module for features_only)
            stages = [f'layer{i + 1}' for i in range(len(layers))]
            self._init_trunk(stem=('conv1', 'bn1', 'act1'), stages=stages, final=('norm',), taps=['act1'] + stages)
            self._init_head(inplanes, num_classes, global_pool)
            self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        init_conv_weights(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^conv1|bn1',
            blocks=[(r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)', None), (r'^norm', (99999,))],
        )


# ---------------------------------------------------------------------------------------------
# Configurations. CIFAR SE unit: reduction 16, floored (Caffe rounding), at least 1 channel.
_SE = dict(se_args=dict(rd_ratio=1 / 16, rd_divisor=1))
_POST_A = dict(block='basic', shortcut='A', **_SE)  # ResNet-6n+2 of "Deep Residual Learning"


def _paper(row: str, err10: Tuple[float, float], err100: Tuple[float, float]) -> Dict[str, Any]:
    """The paper's CIFAR table: (baseline, SE) top-1 error (%) on CIFAR-10 and CIFAR-100."""
    return dict(row=f'CIFAR: {row}', cifar10_err=dict(base=err10[0], se=err10[1]),
                cifar100_err=dict(base=err100[0], se=err100[1]), top1_err=err10[1])


ARCHS: Dict[str, Dict[str, Any]] = {
    'se_resnet20_cifar': arch('SE-ResNet-20 for CIFAR (n=3, option-A shortcuts)', layers=(3, 3, 3), **_POST_A),
    'se_resnet32_cifar': arch('SE-ResNet-32 for CIFAR (n=5, option-A shortcuts)', layers=(5, 5, 5), **_POST_A),
    'se_resnet56_cifar': arch('SE-ResNet-56 for CIFAR (n=9, option-A shortcuts)', layers=(9, 9, 9), **_POST_A),
    'se_resnet110_cifar': arch('SE-ResNet-110 for CIFAR (n=18, option-A shortcuts)',
                               _paper('ResNet-110', (6.37, 5.21), (26.88, 23.85)), layers=(18, 18, 18), **_POST_A),
    'se_resnet164_cifar': arch('SE-ResNet-164 for CIFAR (pre-activation bottleneck, n=18)',
                               _paper('ResNet-164', (5.46, 4.39), (24.33, 21.31)), layers=(18, 18, 18),
                               block='preact_bottleneck', shortcut='B', **_SE),
    'se_wrn16_8_cifar': arch('SE-WRN-16-8 for CIFAR (pre-activation, width x8)',
                             _paper('WRN-16-8', (4.27, 3.88), (20.43, 19.14)), layers=(2, 2, 2),
                             block='preact_basic', widen_factor=8, shortcut='B', **_SE),
}


def _cfg(name: str) -> Dict[str, Any]:
    return {
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': CIFAR10_MEAN, 'std': CIFAR10_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'license': 'apache-2.0',
        'description': ARCHS[name]['description'],
        'paper_ids': 'arXiv:1709.01507', 'paper_name': 'Squeeze-and-Excitation Networks',
    }


_family = Family(__name__, ARCHS, SECifarResNet, _cfg, checkpoint_filter_fn,
                 feature_cfg=dict(out_indices=(0, 1, 2, 3)))  # stem + 3 stages (timm's default asks for 5)


@_family.register
def se_resnet20_cifar(pretrained: bool = False, **kwargs) -> SECifarResNet:
    return _family.create('se_resnet20_cifar', pretrained, **kwargs)


@_family.register
def se_resnet32_cifar(pretrained: bool = False, **kwargs) -> SECifarResNet:
    return _family.create('se_resnet32_cifar', pretrained, **kwargs)


@_family.register
def se_resnet56_cifar(pretrained: bool = False, **kwargs) -> SECifarResNet:
    return _family.create('se_resnet56_cifar', pretrained, **kwargs)


@_family.register
def se_resnet110_cifar(pretrained: bool = False, **kwargs) -> SECifarResNet:
    return _family.create('se_resnet110_cifar', pretrained, **kwargs)


@_family.register
def se_resnet164_cifar(pretrained: bool = False, **kwargs) -> SECifarResNet:
    return _family.create('se_resnet164_cifar', pretrained, **kwargs)


@_family.register
def se_wrn16_8_cifar(pretrained: bool = False, **kwargs) -> SECifarResNet:
    return _family.create('se_wrn16_8_cifar', pretrained, **kwargs)
