"""The tail of an SE block, ``bn(z) * g`` (+ a shortcut), without its memory cost.

Autograd keeps ``bn(z)`` alive for the backward of the multiplication by ``g``: one extra
activation the size of the block output in every block, about a quarter more saved memory for
SE-ResNet-50 (the article's second shortcoming). BatchNorm already keeps ``z`` and its batch
statistics, so the backward here works from those instead (the gate's gradient needs only
per-channel sums of ``grad * z``) and saves only what a plain residual block saves.

Nothing is bypassed: the block calls its BatchNorm, its SE unit and its output activation as
modules. ``batch_norm_saved_stats`` only reads, from the autograd graph, the batch statistics
that the BatchNorm call saved; when the tensor did not come straight from a training-mode
``nn.BatchNorm2d`` (a hook replaced it, another norm layer sits there, no gradient is
recorded, ...) it returns None and the block uses the plain ``addcmul``.
"""
from typing import Optional, Tuple

import torch
from torch import nn

from .recomputed_scale import plain_requested, scale

# Autograd nodes of training-mode batch norm whose saved result1 / result2 are the batch mean and
# inverse standard deviation (cuDNN's "savedInvVariance"), and whose saved input is the BN input.
_BATCH_NORM_NODES = ('NativeBatchNormBackward0', 'CudnnBatchNormBackward0')


def batch_norm_saved_stats(
        y: torch.Tensor, z: torch.Tensor, bn: nn.Module) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(mean, invstd)`` of the batch when ``y`` is exactly the output of training-mode ``bn(z)`` as
    recorded by autograd (the statistics that normalised ``z``), else None."""
    if not isinstance(y, torch.Tensor) or type(bn) is not nn.BatchNorm2d or torch.compiler.is_compiling():
        return None  # fx proxies, other norm layers, torch.compile: the plain path
    node = y.grad_fn
    if node is None or z.grad_fn is None or type(node).__name__ not in _BATCH_NORM_NODES:
        return None
    if not node._saved_training:  # normalised by the running statistics: nothing saved to reuse
        return None
    # the node's inputs are z and bn.weight (a hook may have swapped either): checked on the graph,
    # without unpacking the saved input (saved-tensor hooks may have moved it, e.g. to the CPU)
    edges = node.next_functions
    if edges[0][0] is not z.grad_fn:
        return None
    if bn.weight is not None and bn.weight.requires_grad and getattr(edges[1][0], 'variable', None) is not bn.weight:
        return None
    mean, invstd = node._saved_result1, node._saved_result2
    if mean.shape != (z.shape[1],) or invstd.shape != mean.shape:
        return None
    return mean, invstd


class _ScaleAdd(torch.autograd.Function):
    """``x * gate (+ shortcut)`` whose backward reads ``bn(z)``'s per-channel sums from ``z`` and the
    batch statistics. Only ``x``, ``gate`` and ``shortcut`` are inputs: the BatchNorm tensors travel as
    one non-tensor argument, which spares autograd five edges and the gradients it would drop (on
    CIFAR-sized blocks the call overhead is most of what the function costs)."""

    @staticmethod
    def forward(ctx, x, gate, shortcut, bn_tensors):
        z, weight, bias, mean, invstd = bn_tensors
        ctx.save_for_backward(gate, z, weight, bias, mean, invstd)
        ctx.shortcut_dtype = None if shortcut is None else shortcut.dtype
        return x * gate if shortcut is None else torch.addcmul(shortcut, x, gate)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        gate, z, weight, bias, mean, invstd = ctx.saved_tensors
        grad_x = grad * gate
        scale = invstd if weight is None else invstd * weight
        if gate.shape[2:] == (1, 1):
            # per-channel gate: sum(g * bn(z)) = scale * (sum(g * z) - mean * sum(g)) + bias * sum(g),
            # from two reductions instead of rebuilding bn(z) at full size (in float32 the relative
            # error grows with |mean| / std of z: ~5e-5 at 200, harmless for training)
            sum_g = grad.sum((2, 3))
            grad_gate = torch.addcmul((grad * z).sum((2, 3)), sum_g, mean, value=-1).mul_(scale)
            if bias is not None:
                grad_gate = grad_gate.addcmul_(sum_g, bias)
            grad_gate = grad_gate.view(gate.shape)
        else:  # NoSqueeze: a gate per position
            shape = (1, -1, 1, 1)
            x = (z - mean.view(shape)) * scale.view(shape)
            if bias is not None:
                x = x + bias.view(shape)
            grad_gate = grad * x
        grad_shortcut = None if ctx.shortcut_dtype is None else grad.to(ctx.shortcut_dtype)
        return grad_x, grad_gate.to(gate.dtype), grad_shortcut, None


def scale_add(x: torch.Tensor, gate: torch.Tensor, shortcut: Optional[torch.Tensor], z: torch.Tensor,
              bn: nn.Module) -> torch.Tensor:
    """``x * gate + shortcut`` (``x * gate`` without a shortcut) for ``x = bn(z)``; when ``x`` is
    training-mode BatchNorm's output, autograd keeps ``z`` (which BatchNorm keeps anyway) and the gate,
    not ``x``."""
    stats = batch_norm_saved_stats(x, z, bn) if torch.is_grad_enabled() and not plain_requested() else None
    if stats is None:
        return scale(x, gate) if shortcut is None else torch.addcmul(shortcut, x, gate)
    mean, invstd = stats
    return _ScaleAdd.apply(x, gate, shortcut, (z, bn.weight, bn.bias, mean, invstd))
