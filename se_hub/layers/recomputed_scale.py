"""SE's scaled tensor ``y = x * g`` without its memory cost, where BatchNorm statistics cannot help.

The layer that consumes ``y`` (MBConv's 1x1 projection, the next block's convolutions and pools) keeps
``y`` for its backward, and the multiplication keeps ``x`` and ``g`` for its own: one activation more
than the SE-free network keeps, a tenth to a quarter more saved memory (the article's second shortcoming
of SE). Where ``x`` comes from an activation that keeps its input (MBConv's SiLU), nothing else keeps it,
and ``scale`` keeps ``y`` in its place (``_GateDividedScale``: the gate's gradient divided out of
``sum(grad * y)``), with no hooks and no extra pass. Where ``x`` is kept anyway (a ReLU keeps its output),
inside ``recomputed_scales()`` (se_hub's models open it in training), ``scale(x, g)`` notes every
``y`` it makes; when autograd saves such a ``y``, it keeps ``(x, g)`` instead (``x`` is kept for the
multiplication anyway) and the backward recomputes ``y`` with the same multiplication, once for all the
layers that saved it: the same bits, so the same gradients. ``scaled_residual`` does the same for tails
whose product only meets an addition (Inception-ResNet, pre-activation ResNets): the branch the
multiplication would keep is rebuilt from the block's output and shortcut, which later layers keep.
(``se_tail.py`` covers a product of a BatchNorm output from the statistics BatchNorm saved.)

Nothing is bypassed: every module runs its own forward, and saved-tensor hooks active around the
context (CPU offload, checkpointing, memory profilers) still receive every tensor, the recipes' factors
included. The context does nothing without gradients, under TorchScript, ``torch.compile`` or tracing,
inside ``plain_se_backward()``, and on torch < 2.8, which cannot show it the hooks already active (it
would hide them). In-place changes behave as without it: a ``y`` changed before a layer saves it is
saved as it is, and a tensor changed after it was saved makes the backward raise.
"""
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._compat import innermost_saved_tensors_hooks

_local = threading.local()  # .recorder: this thread's active _Recorder; .plain: inside plain_se_backward()

_MODIFIED = ('one of the variables needed for gradient computation has been modified by an inplace '
             'operation: {what} was changed after the forward saved it (se_hub.layers.recomputed_scale); '
             'compute the change out of place (or on a clone)')
Hooks = Optional[Tuple[Callable, Callable]]  # (pack, unpack) of the saved-tensor hooks active around ours


class _Saved:
    """A tensor kept as it is, with the version it had (autograd skips its own check under hooks). Kept
    detached: the tensor a layer saves may be its own output, whose graph would then hold itself (a cycle
    that outlives a forward never followed by a backward); autograd gives it back its place on unpacking."""
    __slots__ = ('tensor', 'version')

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor.detach()  # the same storage and version counter
        self.version = tensor._version

    def unpack(self, what: str = 'a tensor') -> torch.Tensor:
        if self.tensor._version != self.version:
            raise RuntimeError(_MODIFIED.format(what=what))
        return self.tensor


class _Outer:
    """A tensor as the hooks active around ours packed it."""
    __slots__ = ('packed', 'outer_unpack')

    def __init__(self, tensor: torch.Tensor, outer: Tuple[Callable, Callable]):
        self.packed, self.outer_unpack = outer[0](tensor), outer[1]

    def unpack(self, what: str = 'a tensor') -> torch.Tensor:
        return self.outer_unpack(self.packed)


def _keep(tensor: torch.Tensor, outer: Hooks) -> Any:
    """What our pack hook keeps of a tensor it does not rebuild: as is (the outer hooks' way, if any);
    plain tensors as a (detached, version) pair, which is cheaper than a _Saved: every one comes here."""
    if outer is not None:
        return _Outer(tensor, outer)
    return tensor.detach(), tensor._version


def _unpack(packed: Any) -> torch.Tensor:
    if type(packed) is tuple:
        tensor, version = packed
        if tensor._version != version:
            raise RuntimeError(_MODIFIED.format(what='a tensor'))
        return tensor
    return packed.unpack()


def _factor(tensor: torch.Tensor, outer: Hooks) -> Any:
    return _Saved(tensor) if outer is None else _Outer(tensor, outer)


class _Recipe:
    """What autograd keeps for a saved ``y = x * gate``: the two factors; ``y`` is recomputed when a
    backward first needs it and shared until every layer that saved it has had it."""
    __slots__ = ('y', 'y_version', 'x', 'gate', 'users', 'value')

    def __init__(self, y: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, outer: Hooks):
        self.y = weakref.ref(y)
        self.y_version = y._version
        # the outer hooks keep the factors (offloaded, checkpointed, counted) as they keep the rest
        self.x, self.gate = _factor(x, outer), _factor(gate, outer)
        self.users = 0
        self.value: Optional[torch.Tensor] = None

    def unpack(self) -> torch.Tensor:
        y = self.y()
        if y is not None and y._version != self.y_version:
            raise RuntimeError(_MODIFIED.format(what="an SE unit's scaled output"))
        value = self.value
        if value is None:
            value = self.x.unpack('the input of an SE scale') * self.gate.unpack('an SE gate')
        self.users -= 1
        self.value = value if self.users > 0 else None
        return value


class _Recorder:
    """The saved-tensor hooks of one ``recomputed_scales()`` context and the products it noted."""

    def __init__(self, outer: Hooks):
        self.outer = outer
        self.scaled: Dict[int, Tuple[Any, int, torch.Tensor, torch.Tensor]] = {}
        self.recipes: Dict[int, _Recipe] = {}

    def note(self, y: torch.Tensor, x: torch.Tensor, gate: torch.Tensor) -> None:
        self.scaled[id(y)] = (weakref.ref(y), y._version, x, gate)
        self.recipes.pop(id(y), None)

    def pack(self, t: torch.Tensor) -> Any:
        entry = self.scaled.get(id(t))
        if entry is None and self.outer is None:  # most tensors: _keep's case, inlined (called per tensor)
            return t.detach(), t._version
        if entry is not None and entry[0]() is t and t._version == entry[1]:
            recipe = self.recipes.get(id(t))
            if recipe is None:
                recipe = self.recipes[id(t)] = _Recipe(t, entry[2], entry[3], self.outer)
            recipe.users += 1
            return recipe
        return _keep(t, self.outer)


def _lean_training() -> bool:
    """Eager training with gradients outside ``plain_se_backward()``: where se_hub's SE backward may keep other
    tensors than PyTorch's (tracing and torch.compile see the plain graph)."""
    return (torch.is_grad_enabled() and not plain_requested() and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling())


def _hooks_usable() -> Tuple[bool, Hooks]:
    """(whether se_hub may add saved-tensor hooks here, the hooks already active)."""
    known, outer = innermost_saved_tensors_hooks()
    return known and not torch.jit.is_scripting() and _lean_training(), outer


# activations whose autograd node keeps their input, not their output: after one of them the SE input is
# kept by nobody but the multiplication, which can keep its product instead (``_GateDividedScale``)
KEEPS_ITS_INPUT = (nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish)
_KEEPS_ITS_INPUT_NODES = ('SiluBackward0', 'HardswishBackward0', 'GeluBackward0', 'MishBackward0')


class _GateDividedScale(torch.autograd.Function):
    """``y = x * gate`` that keeps ``y`` and the gate for its backward, not ``x``: the gate's gradient
    ``sum(grad * x)`` is ``sum(grad * y) / gate``, divided after the reduction (per channel), so the backward
    costs what PyTorch's does and the layer after, which keeps ``y`` anyway, holds the only activation.
    Where the gate is exactly 0 (``y`` lost ``x``) the quotient is a finite stand-in that the gate's own zero
    slope meets (``_flat_where_zero``). The backward is made of differentiable operations on the saved
    output, so double backward gets PyTorch's second-order gradients."""

    @staticmethod
    def forward(ctx, x, gate):
        y = x * gate
        ctx.save_for_backward(y, gate)
        return y

    @staticmethod
    def backward(ctx, grad):
        y, gate = ctx.saved_tensors
        grad_x = grad * gate if ctx.needs_input_grad[0] else None
        grad_gate = None
        if ctx.needs_input_grad[1]:
            grad_gate = (grad * y).sum_to_size(gate.shape) / gate.masked_fill(gate == 0, 1.)
        return grad_x, grad_gate


def lean_backward_applies(x: torch.Tensor) -> bool:
    """se_hub's SE training path may change what autograd keeps for ``x``: a float32 / float64 tensor that
    requires grad, in ``_lean_training()``."""
    return x.requires_grad and x.dtype in (torch.float32, torch.float64) and _lean_training()


def _divided(x: torch.Tensor, gate: torch.Tensor) -> bool:
    """``x * gate`` may keep its product instead of ``x``: ``x`` comes from an activation that keeps its input
    (so nothing else keeps ``x``), in the lean training path, with a gate flat where it is 0."""
    node = x.grad_fn
    return (node is not None and type(node).__name__ in _KEEPS_ITS_INPUT_NODES and gate.dtype == x.dtype
            and lean_backward_applies(x) and _flat_where_zero(gate.grad_fn))


def scale(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x * gate``. After an activation that keeps its input (MBConv's SiLU) the product is kept in place of
    ``x``; otherwise, inside ``recomputed_scales()``, a layer that saves the product keeps the factors."""
    if isinstance(x, torch.Tensor) and _divided(x, gate):  # no recomputation: better where it applies
        return _GateDividedScale.apply(x, gate)
    y = x * gate
    recorder = getattr(_local, 'recorder', None)
    if recorder is not None and isinstance(y, torch.Tensor) and y.requires_grad:
        recorder.note(y, x, gate)
    return y


@contextmanager
def recomputed_scales() -> Iterator[None]:
    """Within it (one forward of a network in training), an SE product ``scale(x, g)`` that a later
    layer saves for backward is kept as ``(x, g)`` and recomputed in the backward. se_hub's models open
    it in ``forward_features`` / ``forward_intermediates``; wrap other calls in it (a timm
    ``features_only`` model, a block run on its own) to save the same memory there. Nested, it does nothing."""
    usable, outer = _hooks_usable()
    if not usable or getattr(_local, 'recorder', None) is not None:
        yield
        return
    recorder = _Recorder(outer)
    hooks = torch.autograd.graph.saved_tensors_hooks(recorder.pack, _unpack)
    try:
        hooks.__enter__()
    except RuntimeError:  # saved-tensor hooks disabled here (torch.autograd.graph.disable_saved_tensors_hooks)
        yield
        return
    _local.recorder = recorder
    try:
        yield
    finally:
        _local.recorder = None
        hooks.__exit__(None, None, None)
        recorder.scaled.clear()
        recorder.recipes.clear()


class _Residue:
    """What the multiplication ``branch * gate`` of a scaled residual tail keeps of ``branch``:
    ``branch`` itself until the tail is known, then a way to rebuild it from the tail's output and
    its shortcut, which the layers around keep anyway (see ``scaled_residual``)."""
    __slots__ = ('branch', 'out', 'shortcut', 'gate', 'scale', 'conv')

    def __init__(self, branch: torch.Tensor):
        # held as is until the tail is known (a few operations later); see keep_branch
        self.branch: Optional[Any] = _Saved(branch)

    def keep_branch(self, outer: Hooks) -> None:
        """The tail was not the one expected: keep ``branch`` for good, as the outer hooks keep tensors."""
        if outer is not None:
            self.branch = _Outer(self.branch.tensor, outer)

    def solve(self, out: torch.Tensor, shortcut: Any, gate: torch.Tensor, scale: float, outer: Hooks) -> None:
        """``shortcut``: the tensor, or ``(conv, input)`` when it is that convolution's output."""
        conv = None
        if isinstance(shortcut, tuple):
            conv, shortcut = shortcut
        # detached (_Saved): no graph, no reference cycle; the outer hooks keep them as they keep the rest
        self.out, self.shortcut, self.gate = _factor(out, outer), _factor(shortcut, outer), _factor(gate, outer)
        self.scale, self.conv, self.branch = scale, conv, None

    def unpack(self) -> torch.Tensor:
        if self.branch is not None:  # the tail was not the one expected: branch was kept as it is
            return self.branch.unpack('an SE residual branch')
        what = 'an SE residual tail'
        out, shortcut, gate = self.out.unpack(what), self.shortcut.unpack(what), self.gate.unpack(what)
        conv = self.conv
        if conv is not None:  # the projection shortcut, from its input (the convolution keeps it)
            shortcut = F.conv2d(shortcut, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        # out = act(shortcut + scale * branch * gate). Where the ReLU passed, this is branch; where it did
        # not, or where the gate is 0 (and branch is lost), it is a finite stand-in that the multiplication's
        # backward meets with a zero gradient (ReLU's, or the gate's own slope at 0 for a sigmoid)
        divisor = gate.masked_fill(gate == 0, 1.)  # (N, C, 1, 1): cheap
        if self.scale != 1.:
            divisor = divisor * self.scale
        return (out - shortcut).div_(divisor)


def scaled_residual(branch: torch.Tensor, gate: torch.Tensor, shortcut: torch.Tensor, scale: float,
                    act: Optional[nn.Module], projection: Optional[Tuple[nn.Conv2d, torch.Tensor]] = None
                    ) -> torch.Tensor:
    """``act(branch * gate * scale + shortcut)`` (without ``act`` when it is None): the tail of
    Inception-ResNet's and the pre-activation ResNets' SE blocks. Autograd would keep ``branch`` (a
    convolution's output that nothing else keeps) for the gate's gradient; here, in float32 / float64,
    with a plain ReLU or none, it keeps instead a way to rebuild it from the output and the shortcut,
    which later layers keep anyway: ``(out - shortcut) / (gate * scale)`` where the ReLU passed
    (elsewhere the gradient that meets it is zero). A shortcut that is ``projection = (conv, input)``'s
    output (a plain ``nn.Conv2d``, as autograd recorded it) is recomputed from that input, which the
    convolution keeps. Rebuilt values carry the rounding of the difference (relative ~1e-6 in float32
    unless the shortcut is far larger than the scaled branch); half precision keeps ``branch``, as do
    the cases ``recomputed_scales`` leaves alone. Saved-tensor hooks are added only around the
    multiplication: no context is needed."""
    # (torch.fx traces with proxies: the plain operations)
    usable, outer = _hooks_usable() if isinstance(branch, torch.Tensor) and torch.is_grad_enabled() else (False, None)
    residue = None
    if (usable and branch.dtype in (torch.float32, torch.float64) and gate.dtype == shortcut.dtype == branch.dtype
            and _flat_where_zero(gate.grad_fn)):
        residue = _Residue(branch)

        def pack(t: torch.Tensor) -> Any:
            return residue if t is branch else _keep(t, outer)

        hooks = torch.autograd.graph.saved_tensors_hooks(pack, _unpack)
        try:
            hooks.__enter__()
        except RuntimeError:  # saved-tensor hooks disabled here (torch.autograd.graph.disable_saved_tensors_hooks)
            residue = None
        else:
            try:
                y = branch * gate
            finally:
                hooks.__exit__(None, None, None)
    if residue is None:
        y = branch * gate
    pre = (y if scale == 1. else y * scale) + shortcut  # (times 1 changes no bit)
    out = pre if act is None else act(pre)
    if residue is not None:
        if _made_by(out, pre, act):
            kept = projection if projection is not None and _convolution_of(shortcut, *projection) else shortcut
            residue.solve(out, kept, gate, scale, outer)
        else:
            residue.keep_branch(outer)
    return out


# gate activations whose slope is zero wherever their output is exactly zero
_FLAT_AT_ZERO = ('SigmoidBackward0', 'HardsigmoidBackward0', 'ReluBackward0')


def _flat_where_zero(node: Any) -> bool:
    """The gate (made by autograd ``node``) passes no gradient back where it is exactly 0: there the branch
    cannot be rebuilt from the output (``branch * 0``), and the stand-in must meet a zero gradient. True for
    sigmoid, hard sigmoid and ReLU gates, also times a factor without gradient (``2 * sigmoid``, a mask);
    a tanh gate (slope 1 at 0: a zero-initialised last FC gives a gate of exactly 0) keeps the branch."""
    while node is not None and type(node).__name__ == 'MulBackward0':
        inputs = [n for n, _ in node.next_functions if n is not None]
        if len(inputs) != 1:
            return False
        node = inputs[0]
    return node is None or type(node).__name__ in _FLAT_AT_ZERO


def _convolution_of(shortcut: torch.Tensor, conv: nn.Module, inp: torch.Tensor) -> bool:
    """``shortcut`` is exactly plain ``conv(inp)`` as autograd recorded it (no hook or wrapper changed it)."""
    node = shortcut.grad_fn
    if type(conv) is not nn.Conv2d or conv.padding_mode != 'zeros' or isinstance(conv.padding, str):
        return False
    if node is None or type(node).__name__ != 'ConvolutionBackward0' or node.next_functions[0][0] is not inp.grad_fn:
        return False
    return not conv.weight.requires_grad or getattr(node.next_functions[1][0], 'variable', None) is conv.weight


def _made_by(out: torch.Tensor, pre: torch.Tensor, act: Optional[torch.nn.Module]) -> bool:
    """``out`` is ``pre`` (no act) or exactly ReLU(pre) as autograd recorded it (no hook replaced it)."""
    if act is None:
        return out is pre
    node = out.grad_fn
    return (node is not None and type(node).__name__ == 'ReluBackward0'
            and node.next_functions[0][0] is pre.grad_fn)


@contextmanager
def plain_se_backward() -> Iterator[None]:
    """Within it (this thread), SE products are kept for backward as PyTorch keeps ``x * g``: no
    recomputation (``recomputed_scales`` does nothing) and no BatchNorm-statistics tail
    (``se_tail.scale_add``). The same gradients, the memory of a plain implementation: the baseline
    ``bench/bench_se_memory.py`` compares against, and a switch for debugging."""
    previous = getattr(_local, 'plain', False)
    _local.plain = True
    try:
        yield
    finally:
        _local.plain = previous


def plain_requested() -> bool:
    """True inside ``plain_se_backward()``."""
    return getattr(_local, 'plain', False)
