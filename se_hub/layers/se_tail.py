"""The tail of an SE residual block, ``relu(bn(z) * g + shortcut)``, without its memory cost.

Autograd keeps ``bn(z)`` alive for the backward of the multiplication by ``g``: one extra
activation the size of the block output in every block, about a quarter more saved memory for
SE-ResNet-50 (the article's second shortcoming). BatchNorm already keeps ``z`` and its batch
statistics, so the backward here works from those instead (the gate's gradient needs only
per-channel sums of ``grad * z``) and saves only what a plain residual block saves (``z`` and
the block output).
"""
from typing import Optional, Tuple

import torch
from timm.models import register_notrace_function
from torch import nn


def batch_norm_with_stats(z: torch.Tensor, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode ``bn(z)`` with the same running-statistics update as ``nn.BatchNorm2d``,
    also returning the batch mean and inverse std that normalised ``z``."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    x, mean, invstd = torch.native_batch_norm(
        z, bn.weight, bn.bias, bn.running_mean, bn.running_var, True, momentum, bn.eps)
    return x, mean, invstd


class _ScaleAddReLU(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, gate, shortcut, z, weight, bias, mean, invstd):
        y = torch.addcmul(shortcut, x, gate).relu_()
        ctx.save_for_backward(gate, y, z, weight, bias, mean, invstd)
        ctx.shortcut_dtype = shortcut.dtype
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        gate, y, z, weight, bias, mean, invstd = ctx.saved_tensors
        grad_pre = torch.ops.aten.threshold_backward(grad_y, y, 0)  # ReLU's backward, one pass
        grad_x = grad_pre * gate
        shape = (1, -1, 1, 1)
        scale = invstd if weight is None else invstd * weight
        if gate.shape[2:] == (1, 1):
            # per-channel gate: sum(g * bn(z)) = scale * (sum(g * z) - mean * sum(g)) + bias * sum(g),
            # from two reductions instead of rebuilding bn(z) at full size (in float32 the relative
            # error grows with |mean| / std of z: ~5e-5 at 200, harmless for training)
            sum_g = grad_pre.sum((2, 3))
            sum_gz = (grad_pre * z).sum((2, 3))
            grad_gate = scale * (sum_gz - mean * sum_g)
            if bias is not None:
                grad_gate = grad_gate + bias * sum_g
            grad_gate = grad_gate.view(gate.shape)
        else:  # NoSqueeze: a gate per position
            x = (z - mean.view(shape)) * scale.view(shape)
            if bias is not None:
                x = x + bias.view(shape)
            grad_gate = grad_pre * x
        grad_gate = grad_gate.to(gate.dtype)
        return grad_x, grad_gate, grad_pre.to(ctx.shortcut_dtype), None, None, None, None, None


@register_notrace_function
@torch.fx.wrap
def scale_add_relu(
        x: torch.Tensor, gate: torch.Tensor, shortcut: torch.Tensor, z: torch.Tensor,
        weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
        mean: torch.Tensor, invstd: torch.Tensor) -> torch.Tensor:
    """``relu(x * gate + shortcut)`` where ``x = (z - mean) * invstd * weight + bias``."""
    return _ScaleAddReLU.apply(x, gate, shortcut, z.detach(), weight, bias, mean.detach(), invstd.detach())
