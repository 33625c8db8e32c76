"""SE without its memory cost in every family (issue #27).

In training, autograd keeps no activation-sized tensor for an SE network that its SE-free twin does
not keep (only gates and squeezed vectors), and the gradients are those of the plain computation: a
plain PyTorch SE unit written here (``x * sigmoid(fc2(act(fc1(pool(x)))))``, swapped in through
``se_layer=``), in float64, for every family and gate position. timm's own SE networks are compared in
``test_upstream_equivalence.py``; hooks in ``test_se_hooks.py``.
"""
import copy
import gc
import re
import weakref
from collections import Counter
from contextlib import nullcontext

import pytest
import timm
import torch
from torch import nn

import se_hub  # noqa: F401  (registers the models)
from _helpers import randomize_batchnorm
from se_hub._compat import innermost_saved_tensors_hooks
from se_hub.layers import SqueezeExcite, plain_se_backward, recomputed_scales
from se_hub.layers.se_block import squeeze_average

HOOKS_VISIBLE = innermost_saved_tensors_hooks()[0]  # torch >= 2.8
needs_hooks = pytest.mark.skipif(not HOOKS_VISIBLE, reason=f'torch {torch.__version__} < 2.8 cannot show se_hub '
                                 'the saved-tensor hooks already active, so SE products are kept as PyTorch keeps them')

# model -> (input size, kwargs, how its SE unit avoids the extra activation: 'bn' = the BatchNorm-
# statistics tail, any torch; 'product' = the product kept in place of its input (after SiLU), any torch;
# 'hooks' = recomputation through saved-tensor hooks, torch >= 2.8)
FAMILIES = {
    'se_resnet50b': (64, {}, 'bn'),  # standard placement
    'se_resnet50_pre': (64, {}, 'hooks'),
    'se_resnet50_post': (64, {}, 'hooks'),
    'se_resnet50_3x3': (64, {}, 'hooks'),
    'se_resnet20_cifar': (16, {}, 'bn'),  # post-activation, option-A shortcuts
    'se_resnet164_cifar': (16, dict(layers=(2, 2, 2)), 'hooks'),  # pre-activation bottleneck, projection shortcuts
    'se_wrn16_8_cifar': (16, dict(widen_factor=2), 'hooks'),  # pre-activation basic block
    'se_efficientnet_b0': (32, {}, 'product'),  # MBConv, symmetric padding
    'se_tf_efficientnet_b0': (32, {}, 'product'),  # MBConv, TF 'same' padding
    'se_bn_inception': (64, {}, 'hooks'),
    'se_inception_v3': (75, {}, 'hooks'),
    'se_inception_resnet_v2': (75, {}, 'hooks'),
    'se_mobilenet': (32, {}, 'hooks'),
    'se_shufflenet': (32, {}, 'bn'),  # both unit strides
    'se_vgg16': (32, {}, 'hooks'),
    'se_shake_shake26_2x96d_cifar': (16, dict(base_width=16), 'bn'),
}
# the gate positions whose SE keeps an activation by design: a per-position gate is one, and the identity
# placement scales the projection shortcut, which nothing else keeps
GRADIENT_ONLY = {'se_resnet50_nosqueeze': (64, {}, 'hooks'), 'se_resnet50_identity': (64, {}, 'hooks'),
                 'se_resnet50_gmp': (64, {}, 'bn')}


def marks(how):
    return [needs_hooks] if how == 'hooks' else []


def cases(table, skip_without_hooks=True):
    return [pytest.param(name, size, kwargs, marks=marks(how) if skip_without_hooks else [], id=name)
            for name, (size, kwargs, how) in table.items()]


class PlainSE(nn.Module):
    """The SE computation of the paper in plain PyTorch, returning the scaled input (a user's SE unit)."""

    def __init__(self, like: SqueezeExcite):
        super().__init__()
        assert isinstance(like.gate, nn.Sigmoid) and like.squeeze in ('avg', 'max', 'none')
        self.squeeze = like.squeeze
        self.fc1 = nn.Conv2d(like.channels, like.rd_channels, 1, bias=like.fc1.bias is not None)
        self.act = copy.deepcopy(like.act)
        self.fc2 = nn.Conv2d(like.rd_channels, like.channels, 1, bias=like.fc2.bias is not None)

    def forward(self, x):
        if self.squeeze == 'avg':
            s = x.mean((2, 3), keepdim=True)
        elif self.squeeze == 'max':
            s = x.amax((2, 3), keepdim=True)
        else:
            s = x
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


def with_plain_se(name, kwargs, model):
    """``name`` built with PlainSE units in the places (and widths) of ``model``'s, holding its weights."""
    units = iter([m for m in model.modules() if isinstance(m, SqueezeExcite)])

    def plain_unit(channels):
        like = next(units)
        assert like.channels == channels
        return PlainSE(like)

    ref = timm.create_model(name, se_layer=plain_unit, **kwargs).to(next(model.parameters()).dtype)
    ref.load_state_dict(model.state_dict())
    return ref


def largest(grads) -> float:
    """The largest gradient entry: the scale for an absolute tolerance where entries that are 0 in exact
    arithmetic carry rounding."""
    return max(g.abs().max().item() for g in grads.values() if g is not None)


def train_step_grads(model, x, params=None):
    """Output and gradients (parameters and input) of a weighted sum of ``model(x)`` in training mode;
    ``model`` may be a function of the input, then ``params`` is the module holding the parameters."""
    params = model if params is None else params
    params.train().zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same dropout masks and shake coefficients in every call
    x = x.clone().requires_grad_()
    out = model(x)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    grads = {k: p.grad for k, p in params.named_parameters()}
    grads['input'] = x.grad
    return out.detach(), grads


def assert_same_training_step(model, ref, size):
    """The same output, parameter and input gradients from ``model`` and ``ref`` (float64, training mode).
    Batch statistics over few values amplify rounding (a fused scale + add against two steps): 1e-7."""
    x = torch.randn(3, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out, grads = train_step_grads(model, x)
    ref_out, ref_grads = train_step_grads(ref, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-7, atol=1e-9)
    scale = largest(ref_grads)
    for key, grad in ref_grads.items():
        torch.testing.assert_close(grads[key], grad, rtol=1e-6, atol=1e-9 * scale, msg=key)


@pytest.mark.parametrize('name,size,kwargs', cases({**FAMILIES, **GRADIENT_ONLY}, skip_without_hooks=False))
def test_training_gradients_equal_a_plain_se(name, size, kwargs):
    """float64, training mode: se_hub's SE (the lean backward where it applies; on torch < 2.8 the plain
    product outside the BatchNorm tails) and a plain PyTorch SE with the same weights give the same output,
    parameter and input gradients, and BatchNorm statistics."""
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model(name, **kwargs)).double()
    ref = with_plain_se(name, kwargs, model)
    assert_same_training_step(model, ref, size)
    torch.testing.assert_close(model.state_dict(), ref.state_dict(), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_the_squeeze_hands_its_gradient_over_without_writing_it_out(dtype):
    """In training, the squeeze is torch's mean to the bit on the CPU (which computes a mean as sum / n)
    and has its gradient, but hands it over as a broadcast (N, C, 1, 1) view: mean's backward writes a
    full-size tensor per SE unit, which ``plain_se_backward()`` keeps."""
    torch.manual_seed(0)
    x = torch.randn(3, 8, 7, 5, dtype=dtype, requires_grad=True)
    grad_s = torch.randn(3, 8, 1, 1, dtype=dtype)
    s = squeeze_average(x)
    assert torch.equal(s, x.mean((2, 3), keepdim=True))
    (grad,) = torch.autograd.grad(s, x, grad_s)
    (ref,) = torch.autograd.grad(x.mean((2, 3), keepdim=True), x, grad_s)
    assert torch.equal(grad, ref)
    assert grad.untyped_storage().nbytes() == grad_s.nbytes  # a view of the (N, C, 1, 1) gradient
    with plain_se_backward():
        (plain,) = torch.autograd.grad(squeeze_average(x), x, grad_s)
    assert plain.untyped_storage().nbytes() == x.nbytes


def saved_storages(model, x, context=nullcontext):
    """Shape of every unique non-parameter storage autograd keeps in one training forward (run in
    ``context()``, inside the counting hooks)."""
    exclude = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved, alive = {}, []

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in exclude:
            saved[ptr] = tuple(t.shape)
            alive.append(t.detach())  # no later tensor reuses the address during the forward
        return t.detach()  # (a saved output held with its graph would keep the graph alive)

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), context():
        model.train()(x)
    return Counter(saved.values())


def activation_sized(shapes):
    return {s: n for s, n in shapes.items() if len(s) == 4 and s[2] * s[3] > 1}


@pytest.mark.parametrize('name,size,kwargs', cases(FAMILIES))
def test_se_keeps_no_extra_activation_for_backward(name, size, kwargs):
    """The tensors an SE network keeps for backward are its SE-free twin's plus gates and squeezed
    vectors ((N, C, 1, 1) and smaller); with SE products kept as PyTorch keeps them
    (``plain_se_backward``), there are activations more (where the maps are larger than 1x1)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    twin = saved_storages(timm.create_model(name, se_layer='none', **kwargs), x)
    model = timm.create_model(name, **kwargs)
    extra = activation_sized(saved_storages(model, x) - twin)
    # where the last SE product feeds only the global pool (which keeps nothing), its input stays kept
    # for the gate's gradient: one map of the last stride (0.5% of BN-Inception's memory at 224x224)
    with torch.no_grad():
        last = tuple(model.eval().forward_features(x).shape)
    if extra.get(last) == 1:
        del extra[last]
    assert not extra, f'{name} keeps activations its SE-free twin does not: {extra}'
    with plain_se_backward():
        plain_extra = activation_sized(saved_storages(model, x) - twin)
    assert plain_extra, f'{name}: the plain SE backward should keep activations more (the measure sees none)'


@pytest.mark.parametrize('name', [pytest.param('se_mobilenet', marks=needs_hooks), 'se_efficientnet_b0'])
def test_outer_hooks_see_every_tensor_and_offloading_still_works(name):
    """Saved-tensor hooks around the model (CPU offload here) still get every tensor, the recipes' factors
    and the products kept in place of their inputs included, and the gradients are unchanged."""
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model(name, num_classes=10)).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    _, grads = train_step_grads(model, x)
    packed, unpacked = [0], [0]

    def pack(t):
        packed[0] += 1
        return t.clone()  # an offload: the saved tensor is a copy

    def unpack(t):
        unpacked[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        _, hooked = train_step_grads(model, x)
    assert packed[0] > 100 and unpacked[0] >= packed[0] - 30  # some saved tensors are never needed
    for key, grad in grads.items():
        torch.testing.assert_close(hooked[key], grad, rtol=0, atol=0, msg=key)
    with torch.autograd.graph.save_on_cpu():
        _, offloaded = train_step_grads(model, x)
    for key, grad in grads.items():
        torch.testing.assert_close(offloaded[key], grad, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('name', [pytest.param('se_mobilenet', marks=needs_hooks), 'se_efficientnet_b0'])
def test_checkpointing_and_retained_graphs_give_the_same_gradients(name):
    """Checkpointing (around the model or per stage) and a retained graph give the lean backward's gradients,
    recomputed products (SE-MobileNet) and products kept in place of their input (MBConv) alike; those are
    PyTorch's own, to rounding where the gate's gradient is divided out."""
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model(name, num_classes=10)).double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.  # the repeated forwards below leave the statistics alone
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with plain_se_backward():
        _, plain = train_step_grads(model, x)
    _, expected = train_step_grads(model, x)
    scale = largest(plain)
    for key, grad in plain.items():
        torch.testing.assert_close(expected[key], grad, rtol=1e-10, atol=1e-13 * scale, msg=key)
    # the whole model under non-reentrant checkpointing (its hooks outside ours)
    _, whole = train_step_grads(lambda t: torch.utils.checkpoint.checkpoint(model, t, use_reentrant=False), x,
                                model)
    model.set_grad_checkpointing(True)  # timm's per-stage checkpointing (its hooks inside ours)
    _, staged = train_step_grads(model, x)
    model.set_grad_checkpointing(False)
    for key, grad in expected.items():
        torch.testing.assert_close(whole[key], grad, rtol=1e-12, atol=1e-12, msg=key)
        torch.testing.assert_close(staged[key], grad, rtol=1e-12, atol=1e-12, msg=key)
    # a graph kept for a second backward recomputes the products again
    model.zero_grad(set_to_none=True)
    out = model(x).sum()
    out.backward(retain_graph=True)
    first = {k: p.grad.clone() for k, p in model.named_parameters()}
    out.backward()
    for key, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * first[key], msg=key)


@needs_hooks
def test_an_in_place_change_after_saving_still_raises():
    """As without se_hub's hooks: a tensor changed in place after autograd saved it fails the backward."""
    model = timm.create_model('se_mobilenet', num_classes=10).train()
    feats = []
    model.blocks[0].register_forward_hook(lambda m, i, o: feats.append(o))
    out = model(torch.randn(2, 3, 32, 32))
    with torch.no_grad():
        feats[0].mul_(2)  # the SE product of block 0, saved by block 1's first convolution
    with pytest.raises(RuntimeError, match='modified by an inplace operation'):
        out.sum().backward()


@needs_hooks
def test_features_only_model_saves_the_memory_inside_the_context():
    """timm's ``features_only`` wrapper runs the stages itself; ``recomputed_scales()`` around its call
    gives it the lean backward (what se_hub's detection training does)."""
    x = torch.randn(2, 3, 64, 64)
    twin = saved_storages(timm.create_model('se_mobilenet', features_only=True, se_layer='none'), x)
    model = timm.create_model('se_mobilenet', features_only=True)
    assert activation_sized(saved_storages(model, x) - twin)  # timm's wrapper: no context, plain SE
    assert not activation_sized(saved_storages(model, x, recomputed_scales) - twin)


@needs_hooks
def test_train_rereads_which_blocks_recompute_their_products():
    """Whether a network opens ``recomputed_scales()`` is read from its blocks once, and again after each
    ``train()`` call (a scan of every module costs a millisecond a forward in ResNet-164): blocks changed
    before ``train()`` are seen."""
    x = torch.randn(2, 3, 64, 64)
    twin = saved_storages(timm.create_model('se_mobilenet', se_layer='none'), x)
    model = timm.create_model('se_mobilenet')
    assert not activation_sized(saved_storages(model, x) - twin)
    blocks = [m for m in model.modules() if getattr(m, 'recomputes_products', False)]
    for m in blocks:
        m.recomputes_products = False
    assert activation_sized(saved_storages(model, x) - twin)  # saved_storages calls model.train()
    for m in blocks:
        m.recomputes_products = True
    assert not activation_sized(saved_storages(model, x) - twin)


@pytest.mark.parametrize('name,kwargs', [pytest.param('se_resnet164_cifar', dict(layers=(1, 1, 1)), marks=needs_hooks),
                                         ('se_efficientnet_b0', {})])
@pytest.mark.parametrize('gate', ['tanh', 'sigmoid', 'relu'])
def test_a_gate_of_exactly_zero_still_learns(name, kwargs, gate):
    """A zero-initialised last FC makes a tanh gate exactly 0, where neither the scaled residual tail can
    rebuild its branch (``branch * 0``) nor MBConv's kept product give back its input, and tanh's slope is 1:
    the input is kept, and the gradients are PyTorch's own (float64); a sigmoid gate is never 0 there, a ReLU
    gate has slope 0 there, and both keep the lean backward."""
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model(name, se_args=dict(gate=gate), **kwargs))
    model = model.double()
    for block in model.modules():  # the units of blocks with a shortcut, which carries the signal past them
        if isinstance(getattr(block, 'se', None), SqueezeExcite) and getattr(block, 'has_skip', True):
            nn.init.zeros_(block.se.fc2.weight)
            nn.init.zeros_(block.se.fc2.bias)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    _, lean = train_step_grads(model, x)
    with plain_se_backward():
        _, plain = train_step_grads(model, x)
    scale = largest(plain)
    torch.testing.assert_close(lean, plain, rtol=1e-7, atol=1e-12 * scale)
    if gate != 'relu':  # (a ReLU gate at 0 passes no gradient back in plain PyTorch either)
        assert all(lean[k].abs().sum() > 0 for k in lean if k.endswith('se.fc2.weight'))


@pytest.mark.parametrize('name,size,kwargs', [
    pytest.param('se_mobilenet', 32, {}, marks=needs_hooks),  # recomputed products
    pytest.param('se_resnet164_cifar', 16, dict(layers=(1, 1, 1)), marks=needs_hooks),  # rebuilt branch
    ('se_efficientnet_b0', 32, {})])  # the product kept in place of its input
def test_a_gradient_penalty_through_the_lean_backward_gets_pytorchs_gradients(name, size, kwargs):
    """Double backward (a gradient penalty, meta-learning): the recomputed and rebuilt tensors take the
    autograd place of the ones they stand for, so second-order gradients are PyTorch's own (float64)."""
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model(name, num_classes=5, **kwargs)).double().train()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)

    def penalty_grads():
        model.zero_grad(set_to_none=True)
        inputs = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(model(inputs).sum(), inputs, create_graph=True)
        grad.pow(2).sum().backward()
        return {k: p.grad for k, p in model.named_parameters()}

    lean = penalty_grads()
    with plain_se_backward():
        plain = penalty_grads()
    assert all(plain[k] is not None for k in plain if k.endswith('se.fc1.weight'))
    # (BatchNorm over a 2-image batch of small maps makes these gradients reach 1e27; entries that are 0 in
    # exact arithmetic then carry rounding, measured against the largest)
    scale = largest(plain)
    torch.testing.assert_close(lean, plain, rtol=1e-7, atol=1e-12 * scale)


@needs_hooks
def test_inception_resnet_tail_rebuilds_the_branch_in_float32_within_rounding():
    """The rebuilt branch of a scaled residual tail (``(out - shortcut) / (gate * scale)``) costs float32
    gradients no more than float32 rounding costs anyway: lean vs float64 is as close as plain vs float64."""
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model('se_inception_resnet_v2', num_classes=10))
    x = torch.randn(2, 3, 75, 75)
    _, exact = train_step_grads(copy.deepcopy(model).double(), x.double())
    _, lean = train_step_grads(model, x)
    with plain_se_backward():
        _, plain = train_step_grads(model, x)

    def worst(grads):
        return max(((grads[k].double() - g).abs().max() / g.abs().max()).item() for k, g in exact.items()
                   if re.search(r'se\.|conv2d\.', k))

    assert worst(lean) <= 3 * worst(plain) + 1e-6, (worst(lean), worst(plain))


@needs_hooks
def test_detection_backbone_keeps_no_extra_activation():
    """The detector's backbone (timm ``features_only`` under an FPN) trains with the lean SE backward."""
    from se_hub.tasks.detection.model import SEBackboneWithFPN

    def backbone(**kwargs):
        body = timm.create_model('se_mobilenet', features_only=True, out_indices=(-3, -2, -1), **kwargs)
        return SEBackboneWithFPN(body, out_channels=32)

    x = torch.randn(2, 3, 64, 64)
    twin = saved_storages(backbone(se_layer='none'), x)
    model = backbone()
    assert not activation_sized(saved_storages(model, x) - twin)
    with plain_se_backward():
        assert activation_sized(saved_storages(model, x) - twin)


def _double(x):
    return x * 2


@pytest.mark.parametrize('name,size,kwargs,hooked', [
    ('se_inception_resnet_v2', 75, {}, 'repeat_1.3.act'),  # the tail's ReLU
    ('se_resnet164_cifar', 16, dict(layers=(2, 2, 2)), 'layer2.0.downsample'),  # a projection shortcut
    ('se_resnet164_cifar', 16, dict(layers=(2, 2, 2)), 'layer3.1.se'),  # doubles the gate (the plain SE: its product)
], ids=['tail-relu', 'projection-shortcut', 'se-unit'])
def test_hooks_that_change_outputs_in_training_keep_the_plain_gradients(name, size, kwargs, hooked):
    """A forward hook that changes what a lean tail relies on (its ReLU's output, the projection shortcut)
    makes it keep the branch as it is: the gradients stay those of the plain computation with the same hook."""
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model(name, **kwargs)).double()
    ref = with_plain_se(name, kwargs, model)
    for m in (model, ref):
        m.get_submodule(hooked).register_forward_hook(lambda mod, inputs, out: _double(out))
    assert_same_training_step(model, ref, size)


@needs_hooks
def test_a_training_forward_without_backward_frees_its_graph():
    """What se_hub's hooks keep holds no graph: a forward whose loss is dropped (a skipped step, an
    exception before backward) frees every activation, as without the hooks."""
    model = timm.create_model('se_inception_resnet_v2', num_classes=10).train()
    outputs = []
    for m in model.modules():
        m.register_forward_hook(lambda mod, i, o: outputs.append(weakref.ref(o)) if torch.is_tensor(o) else None)
    out = model(torch.randn(2, 3, 75, 75))
    assert len(outputs) > 500 and out.requires_grad
    del out
    gc.collect()
    alive = sum(r() is not None for r in outputs)
    assert alive == 0, f'{alive} of {len(outputs)} module outputs outlive their forward'
