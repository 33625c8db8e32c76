"""SE-BN-Inception, SE-Inception-v3 and SE-Inception-ResNet-v2: one configurable Inception family.

A network is a list of named layers run in order (stem convolutions, pools, Inception blocks), given
as data in ``LAYOUTS``; the SE unit sits where the paper puts it for Inception networks:

* plain Inception blocks: after the concatenation of the branches (the "final convolutional
  layer" of the block), as in the official ``SE-BN-Inception.prototxt``;
* Inception-ResNet blocks: on the residual branch, after its 1x1 projection and before the scaled
  addition (the SE-ResNet rule: the identity path stays clean).

Module names follow timm's ``inception_v3`` and ``inception_resnet_v2`` (``Conv2d_1a_3x3.conv``,
``Mixed_5b.branch5x5_1.bn``, ``repeat.0.branch1.0.conv``, ...), so with ``se_layer='none'`` timm's
checkpoints load as they are (Inception-ResNet-v2 only renames its classifier ``classif`` to ``fc``;
Inception-v3 checkpoints with the auxiliary classifier have ``AuxLogits.*`` dropped: these models
build no auxiliary head). With SE they seed the SE models with ``strict=False``.

BN-Inception follows the layer list of the Caffe release (hujie-frank/SENet): convolutions without
bias, BatchNorm eps 1e-5, ceil-mode max-pools, average pools counting the padding.
"""
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import DropPath
from torch import nn

from ..layers import AttentionSlot, SeLayer, resolve_se_layer, scaled_residual
from ..weights.checkpoint import StateDict, checkpoint_filter_fn, register_layout
from .catalog import Family, arch
from .staged import StagedNet, build_on, init_conv_weights

__all__ = ['SEInception']

AttnLayer = Optional[Callable[[int], nn.Module]]


class ConvBn(nn.Module):
    """Convolution (no bias) - BatchNorm - ReLU; keys ``conv.*`` and ``bn.*`` as timm's ConvNormAct."""
    fusion = 'conv_bn_act'  # how se_hub.deploy.optimize rebuilds it

    def __init__(self, in_chs: int, out_chs: int, kernel_size: Union[int, Tuple[int, int]] = 1, stride: int = 1,
                 padding: Union[int, Tuple[int, int]] = 0, eps: float = 1e-3):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chs, eps=eps)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


# ---------------------------------------------------------------------------------------------
# Blocks given by their branches (BN-Inception, Inception-ResNet-v2). A branch is a list of ops:
#   ('conv', out_chs, kernel, stride, padding)   ConvBn
#   ('avg', kernel, stride, padding, count_include_pad) / ('max', kernel, stride, padding, ceil_mode)
# A one-op branch is that module, a longer one an nn.Sequential (timm's key layout).

Op = Tuple[Any, ...]


def _build_op(op: Op, in_chs: int, eps: float) -> Tuple[nn.Module, int]:
    kind, args = op[0], op[1:]
    if kind == 'conv':
        out_chs, kernel, stride, padding = args
        return ConvBn(in_chs, out_chs, kernel, stride, padding, eps), out_chs
    if kind == 'avg':
        kernel, stride, padding, count_include_pad = args
        return nn.AvgPool2d(kernel, stride, padding, count_include_pad=count_include_pad), in_chs
    if kind == 'max':
        kernel, stride, padding, ceil_mode = args
        return nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode), in_chs
    raise ValueError(f'unknown branch op {kind!r}')


def _build_branch(ops: Sequence[Op], in_chs: int, eps: float) -> Tuple[nn.Module, int]:
    modules = []
    for op in ops:
        module, in_chs = _build_op(op, in_chs, eps)
        modules.append(module)
    return (modules[0] if len(modules) == 1 else nn.Sequential(*modules)), in_chs


class InceptionBlock(AttentionSlot):
    """Up to four parallel branches, concatenated; either SE on the concatenation (plain block), or a
    residual block: 1x1 projection (with bias) back to the input width, SE, ``x + scale * branch``.
    ``se=False``: a block that never gets SE (Inception-ResNet-v2's stem block and reductions)."""

    def __init__(self, in_chs: int, branches: Sequence[Sequence[Op]], eps: float, attn_layer: AttnLayer = None,
                 residual: bool = False, scale: float = 1.0, act: bool = True, se: bool = True,
                 drop_path_rate: float = 0.):
        super().__init__()
        if not 2 <= len(branches) <= 4:
            raise ValueError('an Inception block has 2 to 4 branches')
        cat_chs = 0
        for i in range(4):
            module = None
            if i < len(branches):
                module, out_chs = _build_branch(branches[i], in_chs, eps)
                cat_chs += out_chs
            setattr(self, f'branch{i}', module)
        self.residual = residual
        self.scale = scale
        if residual:
            self.conv2d = nn.Conv2d(cat_chs, in_chs, 1, bias=True)
            self.out_chs = in_chs
        else:
            self.conv2d = None
            self.out_chs = cat_chs
        # a residual block's product meets only the shortcut addition: scaled_residual needs no recomputed_scales()
        self._init_attention(attn_layer(self.out_chs) if attn_layer is not None and se else None,
                             recomputes_products=not residual)
        # stochastic depth drops the (scaled) residual branch; a plain block has none to drop
        self.drop_path = DropPath(drop_path_rate) if residual and drop_path_rate > 0. else None
        self.act = nn.ReLU() if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.branch0(x), self.branch1(x)]
        if self.branch2 is not None:
            outs.append(self.branch2(x))
        if self.branch3 is not None:
            outs.append(self.branch3(x))
        out = torch.cat(outs, 1)
        if self.conv2d is not None:
            out = self.conv2d(out)
        if self.residual and self.se_gates and self.drop_path is None and not torch.jit.is_scripting():
            return self._scaled_tail(out, x)
        out = self._attend(out)
        if self.residual:
            out = out * self.scale
            if self.drop_path is not None:
                out = self.drop_path(out)
            out = out + x
        if self.act is not None:
            out = self.act(out)
        return out

    @torch.jit.unused
    def _scaled_tail(self, branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # act(branch * gate * scale + x), keeping for backward only what the SE-free block keeps
        # (recomputed_scale.py); the same operations in the same order as forward's plain path
        gate = self.se(branch)
        if torch.compiler.is_compiling():
            out = branch * gate * self.scale + x
            return out if self.act is None else self.act(out)
        return scaled_residual(branch, gate, x, self.scale, self.act)


# ---------------------------------------------------------------------------------------------
# Inception-v3 blocks (Szegedy et al. 2016, Figures 5-7 and the grid reductions), with timm's
# flat branch names. Each computes its branches; the base class concatenates and applies SE.

class InceptionV3Block(AttentionSlot):
    out_chs: int

    def _init_se(self, attn_layer: AttnLayer) -> None:
        self._init_attention(attn_layer(self.out_chs) if attn_layer is not None else None)

    def branches(self, x: torch.Tensor) -> List[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend(torch.cat(self.branches(x), 1))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)  # counts the padding, as TF-slim / torchvision


class InceptionV3A(InceptionV3Block):
    """35x35: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg-1x1."""

    def __init__(self, in_chs: int, pool_features: int, eps: float, attn_layer: AttnLayer = None):
        super().__init__()
        self.branch1x1 = ConvBn(in_chs, 64, 1, eps=eps)
        self.branch5x5_1 = ConvBn(in_chs, 48, 1, eps=eps)
        self.branch5x5_2 = ConvBn(48, 64, 5, padding=2, eps=eps)
        self.branch3x3dbl_1 = ConvBn(in_chs, 64, 1, eps=eps)
        self.branch3x3dbl_2 = ConvBn(64, 96, 3, padding=1, eps=eps)
        self.branch3x3dbl_3 = ConvBn(96, 96, 3, padding=1, eps=eps)
        self.branch_pool = ConvBn(in_chs, pool_features, 1, eps=eps)
        self.out_chs = 64 + 64 + 96 + pool_features
        self._init_se(attn_layer)

    def branches(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x)),
        ]


class InceptionV3B(InceptionV3Block):
    """35x35 -> 17x17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | max/2."""

    def __init__(self, in_chs: int, eps: float, attn_layer: AttnLayer = None):
        super().__init__()
        self.branch3x3 = ConvBn(in_chs, 384, 3, stride=2, eps=eps)
        self.branch3x3dbl_1 = ConvBn(in_chs, 64, 1, eps=eps)
        self.branch3x3dbl_2 = ConvBn(64, 96, 3, padding=1, eps=eps)
        self.branch3x3dbl_3 = ConvBn(96, 96, 3, stride=2, eps=eps)
        self.out_chs = 384 + 96 + in_chs
        self._init_se(attn_layer)

    def branches(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ]


class InceptionV3C(InceptionV3Block):
    """17x17 with factorised 7x7: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avg-1x1."""

    def __init__(self, in_chs: int, channels_7x7: int, eps: float, attn_layer: AttnLayer = None):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBn(in_chs, 192, 1, eps=eps)
        self.branch7x7_1 = ConvBn(in_chs, c7, 1, eps=eps)
        self.branch7x7_2 = ConvBn(c7, c7, (1, 7), padding=(0, 3), eps=eps)
        self.branch7x7_3 = ConvBn(c7, 192, (7, 1), padding=(3, 0), eps=eps)
        self.branch7x7dbl_1 = ConvBn(in_chs, c7, 1, eps=eps)
        self.branch7x7dbl_2 = ConvBn(c7, c7, (7, 1), padding=(3, 0), eps=eps)
        self.branch7x7dbl_3 = ConvBn(c7, c7, (1, 7), padding=(0, 3), eps=eps)
        self.branch7x7dbl_4 = ConvBn(c7, c7, (7, 1), padding=(3, 0), eps=eps)
        self.branch7x7dbl_5 = ConvBn(c7, 192, (1, 7), padding=(0, 3), eps=eps)
        self.branch_pool = ConvBn(in_chs, 192, 1, eps=eps)
        self.out_chs = 4 * 192
        self._init_se(attn_layer)

    def branches(self, x: torch.Tensor) -> List[torch.Tensor]:
        dbl = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
        dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(dbl)))
        return [
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg3(x)),
        ]


class InceptionV3D(InceptionV3Block):
    """17x17 -> 8x8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max/2."""

    def __init__(self, in_chs: int, eps: float, attn_layer: AttnLayer = None):
        super().__init__()
        self.branch3x3_1 = ConvBn(in_chs, 192, 1, eps=eps)
        self.branch3x3_2 = ConvBn(192, 320, 3, stride=2, eps=eps)
        self.branch7x7x3_1 = ConvBn(in_chs, 192, 1, eps=eps)
        self.branch7x7x3_2 = ConvBn(192, 192, (1, 7), padding=(0, 3), eps=eps)
        self.branch7x7x3_3 = ConvBn(192, 192, (7, 1), padding=(3, 0), eps=eps)
        self.branch7x7x3_4 = ConvBn(192, 192, 3, stride=2, eps=eps)
        self.out_chs = 320 + 192 + in_chs
        self._init_se(attn_layer)

    def branches(self, x: torch.Tensor) -> List[torch.Tensor]:
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        return [
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(self.branch7x7x3_3(b7)),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ]


class InceptionV3E(InceptionV3Block):
    """8x8 with expanded filter banks: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | avg-1x1."""

    def __init__(self, in_chs: int, eps: float, attn_layer: AttnLayer = None):
        super().__init__()
        self.branch1x1 = ConvBn(in_chs, 320, 1, eps=eps)
        self.branch3x3_1 = ConvBn(in_chs, 384, 1, eps=eps)
        self.branch3x3_2a = ConvBn(384, 384, (1, 3), padding=(0, 1), eps=eps)
        self.branch3x3_2b = ConvBn(384, 384, (3, 1), padding=(1, 0), eps=eps)
        self.branch3x3dbl_1 = ConvBn(in_chs, 448, 1, eps=eps)
        self.branch3x3dbl_2 = ConvBn(448, 384, 3, padding=1, eps=eps)
        self.branch3x3dbl_3a = ConvBn(384, 384, (1, 3), padding=(0, 1), eps=eps)
        self.branch3x3dbl_3b = ConvBn(384, 384, (3, 1), padding=(1, 0), eps=eps)
        self.branch_pool = ConvBn(in_chs, 192, 1, eps=eps)
        self.out_chs = 320 + 768 + 768 + 192
        self._init_se(attn_layer)

    def branches(self, x: torch.Tensor) -> List[torch.Tensor]:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return [
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(_avg3(x)),
        ]


_V3_BLOCKS = {'v3_a': InceptionV3A, 'v3_b': InceptionV3B, 'v3_c': InceptionV3C, 'v3_d': InceptionV3D,
              'v3_e': InceptionV3E}


# ---------------------------------------------------------------------------------------------
# Layer plan -> modules. A layer is (name, kind, args):
#   'conv'    ConvBn: (out_chs, kernel, stride, padding)
#   'max'     max-pool: (kernel, stride, padding, ceil_mode)
#   'block'   InceptionBlock: dict(branches=..., residual=False, scale=1.0, act=True)
#   'repeat'  nn.Sequential of n residual InceptionBlocks: dict(n=..., block=dict(...))
#   'v3_a' .. 'v3_e'  Inception-v3 blocks: their keyword arguments


def _residual_blocks(kind: str, args: Any) -> int:
    """How many residual Inception blocks a layer of the plan holds (stochastic depth drops those)."""
    if kind == 'block':
        return int(bool(args.get('residual')))
    if kind == 'repeat':
        return args['n'] if args['block'].get('residual') else 0
    return 0


def _build_layer(kind: str, args: Any, in_chs: int, eps: float, attn_layer: AttnLayer,
                 drop_path_rates: Iterator[float]) -> Tuple[nn.Module, int]:
    if kind in ('conv', 'max'):
        return _build_op((kind, *args), in_chs, eps)
    if kind == 'block':
        dpr = next(drop_path_rates) if args.get('residual') else 0.
        block = InceptionBlock(in_chs, eps=eps, attn_layer=attn_layer, drop_path_rate=dpr, **args)
        return block, block.out_chs
    if kind == 'repeat':
        blocks = [InceptionBlock(in_chs, eps=eps, attn_layer=attn_layer, **args['block'],
                                 drop_path_rate=next(drop_path_rates) if args['block'].get('residual') else 0.)
                  for _ in range(args['n'])]
        return nn.Sequential(*blocks), blocks[-1].out_chs
    if kind in _V3_BLOCKS:
        block = _V3_BLOCKS[kind](in_chs, eps=eps, attn_layer=attn_layer, **args)
        return block, block.out_chs
    raise ValueError(f'unknown layer kind {kind!r}')


class SEInception(StagedNet):
    """An Inception network given as a layer plan (see ``LAYOUTS``), with SE in every Inception block.

    ``feature_taps``: (layer name, reduction) of the feature maps offered to ``features_only`` and
    ``forward_intermediates``, the stem's two widest-resolution outputs and the last block of each
    stride (timm's choice for its Inception models).
    """
    layer_names: List[str]

    @staticmethod
    def unsupported_kwargs(config: Dict[str, Any]) -> Tuple[str, ...]:
        """Keyword arguments this class takes that configuration ``config`` cannot honour."""
        has_residual = any(_residual_blocks(kind, args) for _, kind, args in config['layers'])
        return () if has_residual else ('drop_path_rate',)

    def __init__(
            self,
            layers: Sequence[Tuple[str, str, Any]],
            feature_taps: Sequence[Tuple[str, int]],
            bn_eps: float = 1e-3,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            se_layer: SeLayer = 'se',
            se_args: Optional[Dict[str, Any]] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        with build_on(self, device, dtype):
            self._init_net(num_classes, in_chans, drop_rate)
            attn_layer = resolve_se_layer(se_layer, se_args)
            names = [name for name, _, _ in layers]
            missing = [name for name, _ in feature_taps if name not in names]
            if missing:
                raise ValueError(f'feature_taps name layers {missing} that the layer plan does not have')
            num_residual = sum(_residual_blocks(kind, args) for _, kind, args in layers)
            if drop_path_rate > 0. and not num_residual:
                raise ValueError(f'drop_path_rate={drop_path_rate}: stochastic depth drops residual branches, and '
                                 'this Inception network has none (only Inception-ResNet-v2 does)')
            # linear decay over the residual blocks, as timm's ResNets and EfficientNets do
            rates = iter([drop_path_rate * i / max(num_residual - 1, 1) for i in range(num_residual)])

            chs, widths = in_chans, {}
            for name, kind, args in layers:
                module, chs = _build_layer(kind, args, chs, bn_eps, attn_layer, rates)
                self.add_module(name, module)
                widths[name] = chs
            self.layer_names = names
            self.feature_info = [dict(num_chs=widths[name], reduction=reduction, module=name)
                                 for name, reduction in feature_taps]
            self._init_trunk(stem=(), stages=names)  # every layer is a step; the taps name theirs

            self._init_head(chs, num_classes, global_pool)
            self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        init_conv_weights(self, zero_bias=True)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Callable[[str], Union[int, float]]:
        """Stem layers (up to the second feature tap) form group 0; then one group per layer, or with
        ``coarse`` one per feature stride. The head comes last."""
        taps = [self.layer_names.index(f['module']) for f in self.feature_info]
        stem_end = taps[1] if len(taps) > 1 else 0
        index = {name: i for i, name in enumerate(self.layer_names)}

        def matcher(param_name: str) -> Union[int, float]:
            i = index.get(param_name.split('.', 1)[0])
            if i is None:
                return float('inf')
            if i <= stem_end + 1:  # the pool after the stem has no parameters
                return 0
            if coarse:
                return sum(i > t for t in taps)
            return i - stem_end - 1
        return matcher


# ---------------------------------------------------------------------------------------------
# Layer plans.

def _conv(out_chs: int, kernel: Union[int, Tuple[int, int]] = 1, stride: int = 1,
          padding: Union[int, Tuple[int, int]] = 0) -> Op:
    return ('conv', out_chs, kernel, stride, padding)


_MAX3S2 = ('max', 3, 2, 0, False)


def _bn_inception(c1x1: int, c3x3_reduce: int, c3x3: int, dbl_reduce: int, dbl: int, pool: str, pool_proj: int):
    """A BN-Inception module (Ioffe & Szegedy 2015, Figure 5): 1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool-1x1.
    Average pools count the padding (Caffe); the max-pool of inception_5b is 3x3/1. No ReLU after
    the SE scale (the prototxt has none; every branch ends in one)."""
    pool_op = ('avg', 3, 1, 1, True) if pool == 'avg' else ('max', 3, 1, 1, True)
    return dict(act=False, branches=(
        (_conv(c1x1),),
        (_conv(c3x3_reduce), _conv(c3x3, 3, 1, 1)),
        (_conv(dbl_reduce), _conv(dbl, 3, 1, 1), _conv(dbl, 3, 1, 1)),
        (pool_op, _conv(pool_proj)),
    ))


def _bn_inception_reduction(c3x3_reduce: int, c3x3: int, dbl_reduce: int, dbl: int):
    """A stride-2 BN-Inception module: 1x1-3x3/2 | 1x1-3x3-3x3/2 | max 3x3/2 (ceil mode), no 1x1 branch."""
    return dict(act=False, branches=(
        (_conv(c3x3_reduce), _conv(c3x3, 3, 2, 1)),
        (_conv(dbl_reduce), _conv(dbl, 3, 1, 1), _conv(dbl, 3, 2, 1)),
        (('max', 3, 2, 0, True),),
    ))


LAYOUTS: Dict[str, Dict[str, Any]] = {
    # BN-Inception as in SE-BN-Inception.prototxt (hujie-frank/SENet); SE widths floor(C / 16).
    'bn_inception': dict(
        bn_eps=1e-5,
        layers=(
            ('conv1', 'conv', (64, 7, 2, 3)),
            ('pool1', 'max', (3, 2, 0, True)),
            ('conv2_3x3_reduce', 'conv', (64, 1, 1, 0)),
            ('conv2_3x3', 'conv', (192, 3, 1, 1)),
            ('pool2', 'max', (3, 2, 0, True)),
            ('inception_3a', 'block', _bn_inception(64, 64, 64, 64, 96, 'avg', 32)),
            ('inception_3b', 'block', _bn_inception(64, 64, 96, 64, 96, 'avg', 64)),
            ('inception_3c', 'block', _bn_inception_reduction(128, 160, 64, 96)),
            ('inception_4a', 'block', _bn_inception(224, 64, 96, 96, 128, 'avg', 128)),
            ('inception_4b', 'block', _bn_inception(192, 96, 128, 96, 128, 'avg', 128)),
            ('inception_4c', 'block', _bn_inception(160, 128, 160, 128, 160, 'avg', 128)),
            ('inception_4d', 'block', _bn_inception(96, 128, 192, 160, 192, 'avg', 128)),
            ('inception_4e', 'block', _bn_inception_reduction(128, 192, 192, 256)),
            ('inception_5a', 'block', _bn_inception(352, 192, 320, 160, 224, 'avg', 128)),
            ('inception_5b', 'block', _bn_inception(352, 192, 320, 192, 224, 'max', 128)),
        ),
        feature_taps=(('conv1', 2), ('conv2_3x3', 4), ('inception_3b', 8), ('inception_4d', 16),
                      ('inception_5b', 32)),
    ),
    # Inception-v3 (Szegedy et al. 2016) as timm's inception_v3: valid-padding stem, BN eps 1e-3.
    'inception_v3': dict(
        bn_eps=1e-3,
        layers=(
            ('Conv2d_1a_3x3', 'conv', (32, 3, 2, 0)),
            ('Conv2d_2a_3x3', 'conv', (32, 3, 1, 0)),
            ('Conv2d_2b_3x3', 'conv', (64, 3, 1, 1)),
            ('Pool1', 'max', (3, 2, 0, False)),
            ('Conv2d_3b_1x1', 'conv', (80, 1, 1, 0)),
            ('Conv2d_4a_3x3', 'conv', (192, 3, 1, 0)),
            ('Pool2', 'max', (3, 2, 0, False)),
            ('Mixed_5b', 'v3_a', dict(pool_features=32)),
            ('Mixed_5c', 'v3_a', dict(pool_features=64)),
            ('Mixed_5d', 'v3_a', dict(pool_features=64)),
            ('Mixed_6a', 'v3_b', {}),
            ('Mixed_6b', 'v3_c', dict(channels_7x7=128)),
            ('Mixed_6c', 'v3_c', dict(channels_7x7=160)),
            ('Mixed_6d', 'v3_c', dict(channels_7x7=160)),
            ('Mixed_6e', 'v3_c', dict(channels_7x7=192)),
            ('Mixed_7a', 'v3_d', {}),
            ('Mixed_7b', 'v3_e', {}),
            ('Mixed_7c', 'v3_e', {}),
        ),
        feature_taps=(('Conv2d_2b_3x3', 2), ('Conv2d_4a_3x3', 4), ('Mixed_5d', 8), ('Mixed_6e', 16),
                      ('Mixed_7c', 32)),
    ),
    # Inception-ResNet-v2 (Szegedy et al. 2017) as timm's inception_resnet_v2; SE on the residual
    # branch of its 10 + 20 + 10 residual blocks (the stem block and the reductions have none).
    'inception_resnet_v2': dict(
        bn_eps=1e-3,
        layers=(
            ('conv2d_1a', 'conv', (32, 3, 2, 0)),
            ('conv2d_2a', 'conv', (32, 3, 1, 0)),
            ('conv2d_2b', 'conv', (64, 3, 1, 1)),
            ('maxpool_3a', 'max', (3, 2, 0, False)),
            ('conv2d_3b', 'conv', (80, 1, 1, 0)),
            ('conv2d_4a', 'conv', (192, 3, 1, 0)),
            ('maxpool_5a', 'max', (3, 2, 0, False)),
            ('mixed_5b', 'block', dict(se=False, branches=(
                (_conv(96),),
                (_conv(48), _conv(64, 5, 1, 2)),
                (_conv(64), _conv(96, 3, 1, 1), _conv(96, 3, 1, 1)),
                (('avg', 3, 1, 1, False), _conv(64)),
            ))),
            ('repeat', 'repeat', dict(n=10, block=dict(residual=True, scale=0.17, branches=(
                (_conv(32),),
                (_conv(32), _conv(32, 3, 1, 1)),
                (_conv(32), _conv(48, 3, 1, 1), _conv(64, 3, 1, 1)),
            )))),
            ('mixed_6a', 'block', dict(se=False, branches=(
                (_conv(384, 3, 2),),
                (_conv(256), _conv(256, 3, 1, 1), _conv(384, 3, 2)),
                (_MAX3S2,),
            ))),
            ('repeat_1', 'repeat', dict(n=20, block=dict(residual=True, scale=0.10, branches=(
                (_conv(192),),
                (_conv(128), _conv(160, (1, 7), 1, (0, 3)), _conv(192, (7, 1), 1, (3, 0))),
            )))),
            ('mixed_7a', 'block', dict(se=False, branches=(
                (_conv(256), _conv(384, 3, 2)),
                (_conv(256), _conv(288, 3, 2)),
                (_conv(256), _conv(288, 3, 1, 1), _conv(320, 3, 2)),
                (_MAX3S2,),
            ))),
            ('repeat_2', 'repeat', dict(n=9, block=dict(residual=True, scale=0.20, branches=(
                (_conv(192),),
                (_conv(192), _conv(224, (1, 3), 1, (0, 1)), _conv(256, (3, 1), 1, (1, 0))),
            )))),
            ('block8', 'block', dict(residual=True, scale=1.0, act=False, branches=(
                (_conv(192),),
                (_conv(192), _conv(224, (1, 3), 1, (0, 1)), _conv(256, (3, 1), 1, (1, 0))),
            ))),
            ('conv2d_7b', 'conv', (1536, 1, 1, 0)),
        ),
        feature_taps=(('conv2d_2b', 2), ('conv2d_4a', 4), ('repeat', 8), ('repeat_1', 16), ('conv2d_7b', 32)),
    ),
}

# SE width floor(C / 16) as in the Caffe release (SE-BN-Inception: 16, 20, 36, ... 64).
_SE_ARGS = dict(rd_divisor=1)

ARCHS: Dict[str, Dict[str, Any]] = {
    'se_bn_inception': arch(
        'SE-BN-Inception: BN-Inception with SE (r = 16) after the concatenation of each of its 10 Inception '
        'modules (official Caffe release SE-BN-Inception.prototxt)',
        dict(row='Table 2: SE-BN-Inception (BN-Inception 2.03 G)', gmacs=2.04, top1_err=23.62, top5_err=7.04,
             baseline_gmacs=2.03, errors_from='official release (hujie-frank/SENet README), 224 single crop'),
        se_args=_SE_ARGS, **LAYOUTS['bn_inception']),
    'se_inception_v3': arch(
        "SE-Inception-v3: timm's Inception-v3 with SE (r = 16) after the concatenation of each of its 11 "
        "Inception blocks; with se_layer='none' it is timm's inception_v3 (same keys, same function)",
        dict(row='not a paper row: the SE-Inception module (paper Fig. 2) applied to Inception-v3'),
        se_args=_SE_ARGS, **LAYOUTS['inception_v3']),
    'se_inception_resnet_v2': arch(
        "SE-Inception-ResNet-v2: timm's Inception-ResNet-v2 with SE (r = 16) on the residual branch of its "
        "40 residual blocks, before the scaled addition; with se_layer='none' it is timm's inception_resnet_v2 "
        "(classifier key classif -> fc). Cost at 299x299: paper 11.75 -> 11.76 G as printed; timm's network "
        "measures 13.16 G (conv + linear), se_hub counts 13.19 G with SE",
        dict(row='Table 2: SE-Inception-ResNet-v2', gmacs=11.76, baseline_gmacs=11.75, top1_err=19.80,
             top5_err=4.79, measured_baseline_gmacs=13.16,
             note='paper GFLOPs as printed; timm inception_resnet_v2 measures 13.16 G at 299'),
        se_args=_SE_ARGS, **LAYOUTS['inception_resnet_v2']),
}


def _drop_aux_logits(sd: StateDict) -> StateDict:
    return {k: v for k, v in sd.items() if not k.startswith('AuxLogits.')}


register_layout(
    'inception_v3_aux', "Inception-v3 with its auxiliary classifier (torchvision, timm's tv_in1k): AuxLogits.* "
    'dropped, se_hub builds no auxiliary head',
    lambda keys: any(k.startswith('AuxLogits.') for k in keys) and 'Mixed_7c.branch_pool.conv.weight' in keys,
    _drop_aux_logits)


def _from_timm_inception_resnet_v2(sd: StateDict) -> StateDict:
    return {('fc.' + k[len('classif.'):]) if k.startswith('classif.') else k: v for k, v in sd.items()}


register_layout(
    'timm_inception_resnet_v2', "timm's inception_resnet_v2 (classifier classif.* -> fc.*)",
    lambda keys: 'classif.weight' in keys and 'conv2d_7b.conv.weight' in keys,
    _from_timm_inception_resnet_v2)


def _cfg(name: str) -> Dict[str, Any]:
    spec = ARCHS[name]
    first_conv = spec['args']['layers'][0][0] + '.conv'
    common = dict(num_classes=1000, first_conv=first_conv, classifier='fc', description=spec['description'],
                  paper_ids='arXiv:1709.01507', paper_name='Squeeze-and-Excitation Networks')
    if name == 'se_bn_inception':
        # The Caffe release takes BGR images in 0-255 minus the mean (104, 117, 123) (prototxt header),
        # std 1. timm's transforms give RGB in 0-1: mean 123/255, 117/255, 104/255 and std 1/255 per
        # channel is the same normalisation; weights from the release need conv1's input channels
        # reversed (BGR -> RGB) once, when converted.
        return dict(common, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, interpolation='bilinear',
                    mean=(123 / 255, 117 / 255, 104 / 255), std=(1 / 255, 1 / 255, 1 / 255), license='apache-2.0')
    # Valid-padding stems: 75 px is the smallest input that runs (the last map is then 1x1); from 139 px
    # up every feature map keeps more than half its nominal size (input / 2 reduction), which timm's
    # feature tests check; some smaller sizes (e.g. 136-138 px) do not.
    return dict(common, input_size=(3, 299, 299), pool_size=(8, 8), min_input_size=(3, 139, 139),
                crop_pct=0.875 if name == 'se_inception_v3' else 0.8975, interpolation='bicubic',
                mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD, license='apache-2.0')


_family = Family(__name__, ARCHS, SEInception, _cfg, checkpoint_filter_fn)


@_family.register
def se_bn_inception(pretrained: bool = False, **kwargs) -> SEInception:
    return _family.create('se_bn_inception', pretrained, **kwargs)


@_family.register
def se_inception_v3(pretrained: bool = False, **kwargs) -> SEInception:
    return _family.create('se_inception_v3', pretrained, **kwargs)


@_family.register
def se_inception_resnet_v2(pretrained: bool = False, **kwargs) -> SEInception:
    return _family.create('se_inception_resnet_v2', pretrained, **kwargs)
