"""SE-Shake-Shake: the paper's CIFAR Shake-Shake network (TPAMI Table 4, "Shake-Shake 26 2x96d +
Cutout": 2.56% -> 2.12% CIFAR-10 error) with an SE block on each residual branch.

Shake-Shake (Gastaldi, "Shake-Shake regularization", 2017), 26 2x96d: a 3x3 stem conv (16) + BN,
three stages of 4 residual blocks at 32x32 / 16x16 / 8x8 with widths 96 / 192 / 384, then ReLU,
global average pooling and a linear classifier (26 = 1 + 3 x 4 x 2 + 1 weighted layers). Each
block has two parallel branches ReLU -> 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN (here -> SE)
mixed by ``ShakeShake``:

* training, "Shake-Shake-Image" (the setting of the 26 2x96d CIFAR-10 result): the forward pass
  takes ``alpha * b1 + (1 - alpha) * b2`` with ``alpha ~ U(0, 1)`` drawn per image, and the
  backward pass sends ``beta * g`` / ``(1 - beta) * g`` to the branches with an independent
  ``beta ~ U(0, 1)`` per image;
* evaluation: ``0.5 * (b1 + b2)``.

Where the width changes the shortcut is Gastaldi's: ReLU, then two 1x1 convs to half the width
each, one on the strided input and one on the input shifted by one pixel, concatenated, BN. With
10 classes and no SE the network has 26,192,922 parameters (the Shake-Shake paper: 26.2M).
The SE block sits on each branch after its last BN, before the mixing (the SE-ResNet scheme,
paper Sec. 3.3: squeeze and excitation act before the aggregation), reduction 16, floored.
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.models import register_notrace_module
from torch import nn

from ..layers import AttentionSlot, SeLayer, resolve_se_layer, scale_add
from ..weights.checkpoint import checkpoint_filter_fn
from .catalog import Family, arch
from .se_cifar import CIFAR10_MEAN, CIFAR10_STD
from .staged import StagedNet, build_on, init_conv_weights, stage_paths

__all__ = ['SEShakeShake', 'ShakeShake', 'shake_shake_mix']


class _ShakeShakeMix(torch.autograd.Function):
    """alpha * x1 + (1 - alpha) * x2 forward; beta / (1 - beta) of the gradient backward."""

    @staticmethod
    def forward(ctx, x1: torch.Tensor, x2: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(beta)
        return torch.lerp(x2, x1, alpha)  # x2 + alpha * (x1 - x2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        beta, = ctx.saved_tensors
        return grad * beta, grad * (1 - beta), None, None


def shake_shake_mix(x1: torch.Tensor, x2: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Mix two branch outputs with forward coefficients ``alpha`` and backward ``beta`` (each
    broadcastable to the branches, e.g. one value per image: shape (N, 1, 1, 1))."""
    return _ShakeShakeMix.apply(x1, x2, alpha, beta)


@register_notrace_module  # random per-image coefficients in training: a leaf for torch.fx
class ShakeShake(nn.Module):
    """Mixes the two branches: per-image random alpha (forward) and beta (backward) in training,
    0.5 / 0.5 in evaluation."""

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return (x1 + x2) * 0.5
        shape = (x1.shape[0],) + (1,) * (x1.ndim - 1)
        alpha = torch.rand(shape, device=x1.device, dtype=x1.dtype)
        beta = torch.rand(shape, device=x1.device, dtype=x1.dtype)
        return shake_shake_mix(x1, x2, alpha, beta)


class ShakeBranch(AttentionSlot):
    """ReLU -> 3x3 conv (stride) -> BN -> ReLU -> 3x3 conv -> BN -> SE."""
    fusion_pairs = (('conv1', 'bn1'), ('conv2', 'bn2'))  # (conv, BN) pairs se_hub.deploy.optimize folds

    def __init__(self, in_chs: int, out_chs: int, stride: int, attn_layer):
        super().__init__()
        self.act1 = nn.ReLU(inplace=False)  # the block input is also the shortcut: not in place
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self._init_attention(attn_layer(out_chs) if attn_layer is not None else None, recomputes_products=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv2(self.act2(self.bn1(self.conv1(self.act1(x)))))
        x = self.bn2(z)
        if self.se_gates and not torch.jit.is_scripting():
            return self._scale_bn2(x, z)
        return self._attend(x)

    @torch.jit.unused
    def _scale_bn2(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # the SE scale keeps bn2's input, not its output, for backward (se_tail.py)
        return scale_add(x, self.se(x), None, z, self.bn2)


class ShakeShortcut(nn.Module):
    """Gastaldi's shortcut where the width changes: ReLU, then [strided input -> 1x1 conv] and
    [input shifted by one pixel -> strided -> 1x1 conv], each to half the output width, concatenated, BN."""
    fusion_pairs = ((('conv1', 'conv2'), 'bn'),)  # BN of the two convs' concatenated outputs: folded per half

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        if out_chs % 2:
            raise ValueError(f'the two-path shortcut needs an even output width (got {out_chs})')
        self.stride = stride
        self.act = nn.ReLU(inplace=False)
        self.conv1 = nn.Conv2d(in_chs, out_chs // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(in_chs, out_chs // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        s = self.stride
        return self.bn(torch.cat([self.conv1(x[:, :, ::s, ::s]), self.conv2(shifted[:, :, ::s, ::s])], dim=1))


class ShakeBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, attn_layer):
        super().__init__()
        self.branch1 = ShakeBranch(in_chs, out_chs, stride, attn_layer)
        self.branch2 = ShakeBranch(in_chs, out_chs, stride, attn_layer)
        self.shake = ShakeShake()
        self.shortcut = ShakeShortcut(in_chs, out_chs, stride) if stride > 1 or in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shake(self.branch1(x), self.branch2(x)) + self.shortcut(x)


class SEShakeShake(StagedNet):
    """Shake-Shake for 32x32 inputs: stem (conv1, bn1), stages.0-2, final ReLU, head (fc).
    Feature levels: the stem output and the three stages."""
    fusion_pairs = (('conv1', 'bn1'),)  # (conv, BN) pairs se_hub.deploy.optimize folds

    def __init__(
            self,
            layers: Sequence[int] = (4, 4, 4),
            base_width: int = 96,
            stem_width: int = 16,
            se_layer: SeLayer = 'se',
            se_args: Optional[Dict[str, Any]] = None,
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        with build_on(self, device, dtype):
            attn_layer = resolve_se_layer(se_layer, se_args)
            self._init_net(num_classes, in_chans, drop_rate)
            self.conv1 = nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_width)
            self.stem_pool = nn.Identity()
            self.feature_info = [dict(num_chs=stem_width, reduction=1, module='bn1')]
            in_chs, reduction, stages = stem_width, 1, []
            for stage_idx, num_blocks in enumerate(layers):
                width = base_width * 2 ** stage_idx
                stride = 1 if stage_idx == 0 else 2
                reduction *= stride
                blocks = []
                for i in range(num_blocks):
                    blocks.append(ShakeBlock(in_chs, width, stride if i == 0 else 1, attn_layer))
                    in_chs = width
                stages.append(nn.Sequential(*blocks))
                self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f'stages.{stage_idx}'))
            self.stages = nn.Sequential(*stages)
            self.final = nn.ReLU(inplace=False)
            self._init_trunk(stem=('conv1', 'bn1', 'stem_pool'), stages=stage_paths('stages', len(stages)),
                             final=('final',))
            self._init_head(in_chs, num_classes, global_pool)
            init_conv_weights(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv1|bn1', blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)')


def _paper(err10: Tuple[float, float]) -> Dict[str, Any]:
    return dict(row='TPAMI Table 4: Shake-Shake 26 2x96d + Cutout', cifar10_err=dict(base=err10[0], se=err10[1]),
                top1_err=err10[1], baseline=dict(params=26.2, top1_err=err10[0]))


ARCHS: Dict[str, Dict[str, Any]] = {
    'se_shake_shake26_2x96d_cifar': arch(
        'SE-Shake-Shake 26 2x96d for CIFAR (Shake-Shake-Image, SE on each branch)', _paper((2.56, 2.12)),
        layers=(4, 4, 4), base_width=96, se_args=dict(rd_ratio=1 / 16, rd_divisor=1)),
}


def _cfg(name: str) -> Dict[str, Any]:
    return {
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': CIFAR10_MEAN, 'std': CIFAR10_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'license': 'apache-2.0',
        'description': ARCHS[name]['description'],
        'paper_ids': 'arXiv:1709.01507, arXiv:1705.07485',
        'paper_name': 'Squeeze-and-Excitation Networks; Shake-Shake regularization',
    }


_family = Family(__name__, ARCHS, SEShakeShake, _cfg, checkpoint_filter_fn,
                 feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)))


@_family.register
def se_shake_shake26_2x96d_cifar(pretrained: bool = False, **kwargs) -> SEShakeShake:
    return _family.create('se_shake_shake26_2x96d_cifar', pretrained, **kwargs)
