"""se_hub.deploy.optimize computes the eager function of every family (max abs logit difference
<= 1e-4 in float32), keeps hooks working, and runs under torch.jit.script and torch.compile."""
import copy

import pytest
import timm
import torch

from _helpers import live_head, randomize_batchnorm
from se_hub.deploy import optimize
from se_hub.deploy.fused import ExcitationGate, FusedConv2d, GatedPointwiseConv, ScaleByGate
from se_hub.deploy.optimize import FusedResidualBlock
from se_hub.layers import SqueezeExcite

# one model per family and layout, small inputs; deep ablation networks cut to one block per stage
# (random deep networks amplify float32 reordering past 1e-4, which says nothing about the fusion)
ONE = dict(layers=(1, 1, 1, 1))
FAMILY_MODELS = [
    ('se_resnet18', {}, 64),                      # Caffe layout, basic blocks, ReLU before SE
    ('se_resnet50', {}, 64),                      # Caffe layout, stride on the 1x1
    ('se_resnet50b', {}, 64),                     # timm layout
    ('se_resnext26d_32x4d', {}, 64),              # ResNeXt, deep stem, avg-pool shortcut
    ('se_senet154', ONE, 64),                     # SENet: deep stem, 3x3 shortcut, reduce_first
    ('se_bn_inception', {}, 96),
    ('se_inception_v3', {}, 160),  # at 96 px its last maps are 1x1: BN calibrated on them blows up
    ('se_inception_resnet_v2', {}, 139),
    ('se_efficientnet_b0', {}, 64),               # MBConv, SE before the projection 1x1
    ('se_tf_efficientnet_b0', {}, 64),            # TF 'same' padding
    ('se_efficientnet_lite0', {}, 64),            # MBConv without SE
    ('se_resnet20_cifar', {}, 32),                # CIFAR post-activation, option-A shortcut
    ('se_resnet164_cifar', dict(layers=(2, 2, 2)), 32),  # pre-activation bottleneck
    ('se_wrn16_8_cifar', {}, 32),                 # pre-activation wide basic
    ('se_mobilenet', {}, 64),                     # blocks keep their forward: BN folded by fusion_pairs
    ('se_shufflenet', {}, 64),
    ('se_vgg16', dict(mlp_hidden=64), 64),        # thin fc6 / fc7: the folding is in the convs
    ('se_shake_shake26_2x96d_cifar', dict(layers=(1, 1, 1), base_width=16), 32),  # BN after a concat of 2 convs
]
ABLATIONS = ['se_resnet50_none', 'se_resnet50_gmp', 'se_resnet50_nosqueeze', 'se_resnet50_tanh', 'se_resnet50_relu',
             'se_resnet50_pre', 'se_resnet50_post', 'se_resnet50_identity', 'se_resnet50_3x3', 'se_resnet50_stage3']


def make(name, kwargs, size, batch=2):
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    model = live_head(randomize_batchnorm(timm.create_model(name, **kwargs), calibrate_on=x))
    return model.eval(), x


def assert_same_function(model, fused, x):
    with torch.no_grad():
        ref = model(x)
        out = fused(x)
        single = fused(x[:1])  # batch 1: the path fold_gate=True changes
    assert 0.05 < ref.std() < 100  # a live, well-scaled network, not a constant
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(single, ref[:1], atol=1e-4, rtol=0)


@pytest.mark.parametrize('name,kwargs,size', FAMILY_MODELS, ids=[m[0] for m in FAMILY_MODELS])
def test_optimize_same_function(name, kwargs, size):
    model, x = make(name, kwargs, size)
    fused = optimize(model)
    assert_same_function(model, fused, x)
    # every BN that follows a convolution is folded; only pre-activation CIFAR ResNets keep those before a ReLU
    left = sum(type(m) is torch.nn.BatchNorm2d for m in fused.modules())
    assert left == 0 or ('cifar' in name and 'shake' not in name), f'{left} BatchNorms left'
    if name not in ('se_efficientnet_lite0',):
        assert any(isinstance(m, (ExcitationGate, ScaleByGate)) for m in fused.modules())


class ToyBasicBlock(torch.nn.Module):
    """A residual block of a family deploy/ has never heard of: it only declares its fusion kind."""
    fusion = 'residual'

    def __init__(self, channels):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)
        self.se = SqueezeExcite(channels, rd_ratio=1 / 4)
        self.downsample = None

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y * self.se(y) + x)


def test_optimize_fuses_a_block_by_its_declared_fusion_kind():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 16)
    model = randomize_batchnorm(torch.nn.Sequential(ToyBasicBlock(8), ToyBasicBlock(8)), calibrate_on=x).eval()
    fused = optimize(model)
    assert [type(m) for m in fused] == [FusedResidualBlock] * 2
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=0)
    ToyBasicBlock.fusion = 'no such kind'  # an undeclared kind: kept as it is
    try:
        assert [type(m) for m in optimize(model)] == [ToyBasicBlock] * 2
    finally:
        ToyBasicBlock.fusion = 'residual'


@pytest.mark.parametrize('name', ABLATIONS)
def test_optimize_every_se_variant(name):
    model, x = make(name, ONE, 64)
    assert_same_function(model, optimize(model), x)


@pytest.mark.parametrize('se_layer', ['eca', 'cbam'])
def test_optimize_keeps_other_attention(se_layer):
    model, x = make('se_resnet50', dict(ONE, se_layer=se_layer), 64)
    assert_same_function(model, optimize(model), x)


@pytest.mark.parametrize('name,kwargs,size', [('se_efficientnet_b0', {}, 64), ('se_resnet50b', {}, 64),
                                              ('se_resnet50_3x3', ONE, 96)])  # 96 px: its layer1 folds
def test_optimize_fold_gate_puts_the_gate_into_the_weights_at_batch_1(name, kwargs, size):
    """fold_gate=True (off by default: slower here, bench/bench_se_cost.py): at batch 1 the gate goes
    into the weights of the 1x1 convolution it scales (input side: MBConv, SE-3x3; output side: the
    bottleneck) where they are the smaller tensor, so that convolution keeps no packed weights."""
    model, x = make(name, kwargs, size)
    assert_same_function(model, optimize(model, fold_gate=True), x)
    folded, default = optimize(model, fold_gate=True), optimize(model)  # fresh: nothing packed yet
    with torch.no_grad():
        folded(x[:1])
        default(x[:1])

    def packed(fused):
        return [bool(m.__dict__.get('_onednn_packed')) for m in fused.modules() if isinstance(m, GatedPointwiseConv)]
    if torch.backends.mkldnn.is_available():
        assert all(packed(default))
        assert not all(packed(folded))  # the early, high-resolution blocks took the gate into their weights


def test_optimize_memory_format_options():
    model, x = make('se_efficientnet_b0', {}, 64)
    assert_same_function(model, optimize(model, memory_format=None), x)
    fused = optimize(model)
    assert fused.optimized_memory_format == 'channels_last'
    assert fused.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    fused = optimize(model, memory_format='auto')  # timed at the model's own input size
    assert fused.optimized_memory_format in ('channels_last', 'contiguous')
    assert_same_function(model, fused, x)


@pytest.mark.parametrize('slow', ['channels_last', 'contiguous'])
def test_optimize_auto_keeps_the_faster_memory_format(slow):
    """'auto' times both formats: a pre-hook that stalls one of them must make it pick the other."""
    import time
    model, x = make('se_resnet18', {}, 64)

    def stall(module, args):
        if module.conv1.weight.is_contiguous(memory_format=torch.channels_last) == (slow == 'channels_last'):
            time.sleep(0.05)

    model.register_forward_pre_hook(stall)
    fused = optimize(model, memory_format='auto', example_input=x[:1])
    fast = 'contiguous' if slow == 'channels_last' else 'channels_last'
    assert fused.optimized_memory_format == fast
    assert fused.conv1.weight.is_contiguous(memory_format=torch.channels_last) == (fast == 'channels_last')
    assert_same_function(model, fused, x)


def test_optimize_memory_format_errors():
    model, x = make('se_resnet18', {}, 64)
    with pytest.raises(ValueError, match="memory_format must be 'auto'"):
        optimize(model, memory_format='nhwc')
    with pytest.raises(ValueError, match=r'shape \(1, 4, 64, 64\).*example_input='):
        optimize(model, memory_format='auto', example_input=torch.randn(1, 4, 64, 64))


def test_optimize_leaves_the_original_untouched():
    model, x = make('se_resnet50b', {}, 64)
    with torch.no_grad():
        before = model(x)
    optimize(model)
    assert model.layer1[0].bn1 is not None and isinstance(model.layer1[0].bn1, torch.nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=0, rtol=0)


def test_hooks_see_every_fused_se_call():
    model, x = make('se_resnet50b', {}, 64)
    fused = optimize(model)
    gates = [m for m in fused.modules() if isinstance(m, ExcitationGate)]
    convs = [m for m in fused.modules() if isinstance(m, GatedPointwiseConv)]
    assert len(gates) == 16
    seen = []
    handles = [m.register_forward_hook(lambda mod, inp, out: seen.append(out.shape)) for m in gates + convs]
    with torch.no_grad():
        fused(x[:1])
        fused(x)
    assert len(seen) == 2 * (len(gates) + len(convs))
    # a gate is the SE unit's excitation: sigmoid values per channel
    assert all(s[2:] == (1, 1) for s in seen[:1])
    for h in handles:
        h.remove()


def test_gate_keeps_other_activations_as_modules_that_hooks_see():
    """ReLU / sigmoid run in place inside the gate; MBConv's SiLU (and any other) stays a module, called."""
    model, x = make('se_efficientnet_b0', {}, 64)
    fused = optimize(model, memory_format=None)
    gates = [m for m in fused.modules() if isinstance(m, ExcitationGate)]
    assert gates and all(isinstance(g.act, torch.nn.SiLU) and g.gate is None for g in gates)
    calls = []
    for g in gates:
        g.act.register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
    with torch.no_grad():
        fused(x)
    assert len(calls) == len(gates)
    relu_model, _ = make('se_resnet50_tanh', ONE, 64)
    tanh_gates = [m for m in optimize(relu_model, memory_format=None).modules() if isinstance(m, ExcitationGate)]
    assert tanh_gates and all(g.act is None and isinstance(g.gate, torch.nn.Tanh) for g in tanh_gates)


def test_torchscript_of_optimized_models():
    for name, kwargs, size in [('se_resnet50', ONE, 64), ('se_efficientnet_b0', {}, 64),
                               ('se_resnet50_3x3', ONE, 64), ('se_wrn16_8_cifar', {}, 32)]:
        model, x = make(name, kwargs, size)
        scripted = torch.jit.script(optimize(model))
        assert_same_function(model, scripted, x)


def test_torch_compile_of_optimized_model():
    model, x = make('se_resnet50', ONE, 64)
    compiled = torch.compile(optimize(model))
    assert_same_function(model, compiled, x)


# ---------------------------------------------------------------------------------------------
# oneDNN convolutions on packed weights (eager CPU inference) and the tools they step aside for

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason='needs a oneDNN (mkldnn) build')


def _fused_convs(model):
    return [m for m in model.modules() if isinstance(m, (FusedConv2d, GatedPointwiseConv))]


@needs_onednn
def test_optimized_convolutions_run_as_onednn_ops_on_packed_weights():
    from torch.profiler import ProfilerActivity, profile
    model, x = make('se_resnet50b', {}, 64)
    fused = optimize(model)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        out = fused(x)
    names = {e.key for e in prof.key_averages()}
    assert 'mkldnn::_convolution_pointwise' in names and 'aten::convolution' not in names
    assert 'aten::mean' in names  # the squeezes (spatial_mean); exports keep a global pool instead
    # batch 2: no gate goes into the weights, so every convolution reads its packed weights
    assert all(m.__dict__.get('_onednn_packed') for m in _fused_convs(fused))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), out, atol=0, rtol=0)  # packed once, reused
    x_grad = x.clone().requires_grad_()
    standard = fused(x_grad)  # autograd: the standard ops
    torch.testing.assert_close(out, standard.detach(), atol=1e-4, rtol=0)
    standard.sum().backward()
    assert x_grad.grad is not None and torch.isfinite(x_grad.grad).all()


@needs_onednn
def test_packed_weights_follow_weight_changes_and_stay_out_of_copies():
    import copy
    import io
    model, x = make('se_resnet50b', {}, 64)
    fused = optimize(model)
    with torch.no_grad():
        fused(x)
        fused.layer1[0].branch[0].weight.mul_(0.5)  # an in-place edit (load_state_dict does the same)
        fused.layer4[0].conv_pw.weight.mul_(0.5)
        edited = fused(x)
        reference = fused(x.clone().requires_grad_())  # the standard ops, under autograd
    torch.testing.assert_close(edited, reference, atol=1e-4, rtol=0)
    assert not torch.allclose(edited, model(x).detach(), atol=1e-2)
    twin = copy.deepcopy(fused)
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        for other in (twin, loaded):
            assert not any('_onednn_packed' in m.__dict__ for m in other.modules())
            torch.testing.assert_close(other(x), edited, atol=0, rtol=0)


@needs_onednn
def test_tracers_and_flop_counters_see_the_standard_convolutions():
    from torch.utils.flop_counter import FlopCounterMode
    model, x = make('se_resnet50b', {}, 64)
    fused = optimize(model)

    def conv_flops(m):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            m(x)
        return counter.get_flop_counts()['Global'][torch.ops.aten.convolution]

    # torch's own count of the original network's convolutions (BN folding adds none)
    assert conv_flops(fused) == conv_flops(model) > 0
    with torch.no_grad():
        traced = torch.jit.trace(fused, x, check_trace=False)
        assert 'mkldnn' not in str(traced.inlined_graph)
        torch.testing.assert_close(traced(x), model(x), atol=1e-4, rtol=0)


@needs_onednn
def test_a_wrong_input_raises_torch_error_and_the_next_good_one_runs_fast(monkeypatch):
    from torch.profiler import ProfilerActivity, profile
    model, x = make('se_resnet50b', {}, 64)
    fused = optimize(model)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match='to have 3 channels, but got 4'):
            fused(torch.randn(2, 4, 64, 64))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = fused(x)
        torch.testing.assert_close(out, model(x), atol=1e-4, rtol=0)
    names = {e.key for e in prof.key_averages()}
    assert 'mkldnn::_convolution_pointwise' in names and 'aten::convolution' not in names

    # an op this torch build refuses: the standard ops from then on, same function
    def refuse(*args, **kwargs):
        raise RuntimeError('not supported by this build')
    refuse.binary = refuse
    monkeypatch.setattr(torch.ops.mkldnn, '_convolution_pointwise', refuse)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=0)
    assert all(m.__dict__.get('_onednn_failed') for m in _fused_convs(fused))


@pytest.mark.parametrize('activation,reference', [('', lambda y: y), ('relu', torch.relu),
                                                  ('silu', torch.nn.functional.silu)])
@pytest.mark.parametrize('memory_format', [torch.channels_last, torch.contiguous_format])
def test_fused_conv2d_is_its_convolution_activation_and_add(activation, reference, memory_format):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2).to(memory_format=memory_format)
    expected_conv = copy.deepcopy(conv)
    calls = []
    conv.register_forward_hook(lambda mod, inp, out: calls.append(out.shape))
    fused = FusedConv2d.from_conv(conv, activation)
    assert fused is conv and isinstance(fused, torch.nn.Conv2d)
    x = torch.randn(2, 8, 10, 10).to(memory_format=memory_format)
    shortcut = torch.randn(2, 16, 5, 5).to(memory_format=memory_format)
    with torch.no_grad():
        plain = expected_conv(x)
        out, with_add = fused(x), fused(x, shortcut)
    torch.testing.assert_close(out, reference(plain), atol=1e-5, rtol=0)
    torch.testing.assert_close(with_add, reference(plain + shortcut), atol=1e-5, rtol=0)
    assert out.is_contiguous(memory_format=memory_format)  # the layout F.conv2d gives
    assert len(calls) == 2


def test_fused_conv2d_refuses_what_it_cannot_run():
    from timm.layers import Conv2dSame
    with pytest.raises(TypeError, match='plain zero-padded nn.Conv2d'):
        FusedConv2d.from_conv(Conv2dSame(4, 4, 3))
    with pytest.raises(TypeError, match='plain zero-padded nn.Conv2d'):
        FusedConv2d.from_conv(torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode='reflect'))
    with pytest.raises(ValueError, match="activation is one of"):
        FusedConv2d.from_conv(torch.nn.Conv2d(4, 4, 3), 'gelu')
