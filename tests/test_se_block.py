"""The SE block against the paper's formula, its variants, and the attention-layer factory."""
from functools import partial

import pytest
import timm
import torch
from timm.layers.cbam import CbamModule
from timm.layers.eca import EcaModule
from torch import nn

from _helpers import randomize_batchnorm
from se_hub.layers import SqueezeExcite, reduced_channels, resolve_se_layer
from se_hub.layers.se_tail import scale_add


def reference_se(x, se, pool, gate):
    """The paper's equations written out: z = pool(u); s = gate(W2 relu(W1 z)); out = s * u."""
    w1, b1 = se.fc1.weight.flatten(1), se.fc1.bias
    w2, b2 = se.fc2.weight.flatten(1), se.fc2.bias
    z = pool(x)
    s = gate(torch.relu(z @ w1.T + b1) @ w2.T + b2)
    return x * s[:, :, None, None]


@pytest.mark.parametrize('squeeze,pool', [
    ('avg', lambda x: x.mean((2, 3))),
    ('max', lambda x: x.amax((2, 3))),
])
@pytest.mark.parametrize('gate,gate_fn', [
    ('sigmoid', torch.sigmoid), ('tanh', torch.tanh), ('relu', torch.relu),
    ('hard_sigmoid', lambda t: torch.clamp(t / 6 + 0.5, 0, 1)),
])
def test_se_matches_paper_equations(squeeze, pool, gate, gate_fn):
    torch.manual_seed(0)
    se = SqueezeExcite(64, squeeze=squeeze, gate=gate)
    x = torch.randn(2, 64, 7, 5)
    torch.testing.assert_close(x * se(x), reference_se(x, se, pool, gate_fn))


def test_nosqueeze_applies_excitation_per_position():
    torch.manual_seed(0)
    se = SqueezeExcite(32, squeeze='none')
    x = torch.randn(2, 32, 6, 6)
    per_pos = x.permute(0, 2, 3, 1)  # the MLP applied at every position
    s = torch.relu(per_pos @ se.fc1.weight.flatten(1).T + se.fc1.bias) @ se.fc2.weight.flatten(1).T + se.fc2.bias
    torch.testing.assert_close(x * se(x), x * torch.sigmoid(s).permute(0, 3, 1, 2))


def test_se_without_bias_has_no_bias_parameters():
    se = SqueezeExcite(64, bias=False)
    assert se.fc1.bias is None and se.fc2.bias is None
    assert se(torch.randn(1, 64, 3, 3)).shape == (1, 64, 1, 1)  # the gate


@pytest.mark.parametrize('channels,ratio,divisor,expected', [
    (256, 1 / 16, 1, 16), (64, 1 / 16, 1, 4),  # Caffe / Cadene: floor(C / r)
    (64, 1 / 16, 8, 8), (2048, 1 / 16, 8, 128),  # timm: multiple of 8
    (100, 1 / 16, 1, 6), (24, 1 / 32, 1, 1),
])
def test_reduced_width_rounding(channels, ratio, divisor, expected):
    assert reduced_channels(channels, ratio, divisor) == expected
    assert SqueezeExcite(channels, rd_ratio=ratio, rd_divisor=divisor).rd_channels == expected


def test_explicit_reduced_width():
    assert SqueezeExcite(256, rd_channels=10).fc1.out_channels == 10


@pytest.mark.parametrize('kwargs,message', [
    (dict(squeeze='median'), 'squeeze'), (dict(gate='softmax'), 'gate'),
])
def test_bad_se_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SqueezeExcite(64, **kwargs)


def test_se_layer_resolution():
    assert resolve_se_layer(None) is None
    assert isinstance(resolve_se_layer('se', dict(gate='tanh'))(64).gate, nn.Tanh)
    assert isinstance(resolve_se_layer('eca')(64), EcaModule)
    assert isinstance(resolve_se_layer('cbam')(64), CbamModule)
    custom = partial(SqueezeExcite, rd_ratio=1 / 4)
    assert resolve_se_layer(custom)(64).rd_channels == 16
    with pytest.raises(ValueError, match="se_layer='sk'.*'cbam'"):
        resolve_se_layer('sk')
    with pytest.raises(TypeError, match='se_layer'):
        resolve_se_layer(3)


@pytest.mark.parametrize('se_layer,timm_attn', [('eca', 'eca'), ('cbam', 'cbam'), ('se', 'se')])
def test_attention_alternatives_equal_timm_models(se_layer, timm_attn):
    """se_resnet50b with ECA / CBAM / SE computes what timm's ResNet with the same attn_layer does."""
    ours = timm.create_model('se_resnet18b', se_layer=se_layer).eval()
    ref = timm.create_model('resnet18', block_args=dict(attn_layer=timm_attn)).eval()
    randomize_batchnorm(ref)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=0)


def _tail_inputs(dtype=torch.float64, momentum=0.1):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8, momentum=momentum).to(dtype).train()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    z = (torch.randn(3, 8, 5, 5, dtype=dtype) * 3 + 1).requires_grad_() * 1  # a non-leaf, as a conv output
    s = torch.randn(3, 8, 5, 5, dtype=dtype, requires_grad=True)
    w = torch.randn(8, dtype=dtype, requires_grad=True)
    return bn, z, s, w


@pytest.mark.parametrize('momentum', [0.1, None])
@pytest.mark.parametrize('per_position', [False, True])
def test_lean_tail_equals_autograd_reference(momentum, per_position):
    """Forward, every gradient and the BN running statistics equal the plain autograd graph."""
    bn_ref, z, s, w = _tail_inputs(momentum=momentum)
    bn_ours = _tail_inputs(momentum=momentum)[0]
    bn_ours.load_state_dict(bn_ref.state_dict())

    def gate_of(x):
        return torch.sigmoid(x * w[:, None, None] if per_position else x.mean((2, 3), keepdim=True) * w[:, None, None])

    x = bn_ref(z)
    ref = torch.relu(x * gate_of(x) + s)
    y = bn_ours(z)
    ours = torch.relu(scale_add(y, gate_of(y), s, z, bn_ours))
    torch.testing.assert_close(ours, ref)
    wrt = (z, s, w)
    g_ref = torch.autograd.grad(ref.square().sum(), wrt + (bn_ref.weight, bn_ref.bias))
    g_ours = torch.autograd.grad(ours.square().sum(), wrt + (bn_ours.weight, bn_ours.bias))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b)
    for key, value in bn_ref.state_dict().items():
        torch.testing.assert_close(bn_ours.state_dict()[key], value)


def _saved_storages(fn):
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return set(saved), out


def test_lean_tail_keeps_no_extra_activation():
    """The tail saves z (which BatchNorm keeps anyway) and the gate, not bn(z)."""
    bn, z, s, w = _tail_inputs(dtype=torch.float32)
    holder = {}

    def tail():
        holder['y'] = y = bn(z)
        gate = torch.sigmoid(y.mean((2, 3), keepdim=True) * w[:, None, None])
        return scale_add(y, gate, s, z, bn)

    saved, out = _saved_storages(tail)
    assert z.untyped_storage().data_ptr() in saved
    assert holder['y'].untyped_storage().data_ptr() not in saved
    # the plain graph (what a BN output changed by a hook gets) does keep it
    saved, _ = _saved_storages(lambda: torch.addcmul(s, holder['y'], torch.sigmoid(w)[:, None, None]))
    assert holder['y'].untyped_storage().data_ptr() in saved


def test_lean_tail_falls_back_when_the_bn_output_was_replaced():
    """A forward hook that changes BatchNorm's output (or a norm layer of another type) gets the
    plain autograd graph: the gradient stays exact."""
    bn, z, s, w = _tail_inputs()
    bn.register_forward_hook(lambda m, i, o: o * 2)
    y = bn(z)
    gate = torch.sigmoid(y.mean((2, 3), keepdim=True) * w[:, None, None])
    ours = scale_add(y, gate, s, z, bn)
    ref = torch.addcmul(s, y, gate)
    g_ours = torch.autograd.grad(ours.square().sum(), (z, w, bn.weight), retain_graph=True)
    g_ref = torch.autograd.grad(ref.square().sum(), (z, w, bn.weight))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b)
