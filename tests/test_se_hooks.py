"""Every SE submodule runs as a module: forward hooks fire, wrappers are called, their outputs
are used, and torch.fx can return them, in every family and placement, in train and eval mode,
while the residual tail still keeps no extra activation for backward."""
import pytest
import timm
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

import se_hub  # noqa: F401  (registers the models)
from _helpers import randomize_batchnorm
from se_hub.layers import SqueezeExcite
from se_hub.models.se_residual import ResidualBlock

# one model per family / block kind / SE placement, with an input size that runs it cheaply
MODELS = {
    'se_resnet18': 32,  # Cadene basic block, ReLU before the SE
    'se_resnet50b': 32,  # bottleneck, standard placement (the memory-lean tail)
    'se_resnet50_pre': 32, 'se_resnet50_post': 32, 'se_resnet50_identity': 32, 'se_resnet50_3x3': 32,
    'se_resnet50_nosqueeze': 32, 'se_resnet50_gmp': 32,
    'se_efficientnet_b0': 32,  # MBConv and depthwise-separable blocks
    'se_bn_inception': 32, 'se_inception_v3': 75, 'se_inception_resnet_v2': 75,
    'se_resnet20_cifar': 16, 'se_resnet164_cifar': 16, 'se_wrn16_8_cifar': 16,  # post- and pre-activation
    'se_mobilenet': 32, 'se_shufflenet': 32, 'se_vgg16': 32, 'se_shake_shake26_2x96d_cifar': 16,
}


def se_parts(model):
    """Names of every SE unit, its fc1 / fc2 / gate, and every residual block's act_out."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, SqueezeExcite):
            names += [name, f'{name}.fc1', f'{name}.fc2', f'{name}.gate']
        elif isinstance(m, ResidualBlock):
            names.append(f'{name}.act_out')
    return names


def build(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs)


@pytest.mark.parametrize('name', list(MODELS))
def test_hooks_fire_once_per_block_per_forward(name):
    model = build(name)
    modules = dict(model.named_modules())
    parts = se_parts(model)
    assert sum(isinstance(modules[p], SqueezeExcite) for p in parts) >= 6
    calls = dict.fromkeys(parts, 0)
    for p in parts:
        modules[p].register_forward_hook(lambda m, i, o, p=p: calls.__setitem__(p, calls[p] + 1))
    x = torch.randn(2, 3, MODELS[name], MODELS[name])
    for mode, grad in (('train', True), ('eval', False)):
        getattr(model, mode)()
        calls.update(dict.fromkeys(calls, 0))
        with torch.set_grad_enabled(grad):
            model(x)
        missed = {p: n for p, n in calls.items() if n != 1}
        assert not missed, f'{mode} mode (grad {grad}): calls != 1 for {missed}'


def _zero_output(m, i, o):
    return torch.zeros_like(o)


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_the_block_uses_the_se_output(mode):
    """A hook that zeroes the gate leaves relu(shortcut) as the residual block's output: the
    value the SE module returns is the one the block scales by."""
    block = randomize_batchnorm(build('se_resnet50b')).layer1[0]
    getattr(block, mode)()
    x = torch.randn(2, 64, 16, 16)
    with torch.no_grad():
        plain = block(x)
        block.se.register_forward_hook(_zero_output)
        torch.testing.assert_close(block(x), torch.relu(block.downsample(x)))
    assert (plain - torch.relu(block.downsample(x))).abs().max() > 0.1


@pytest.mark.parametrize('name,part', [('se_resnet50b', 'se'), ('se_resnet50_3x3', 'fc1'),
                                       ('se_efficientnet_b0', 'fc2'), ('se_bn_inception', 'gate'),
                                       ('se_wrn16_8_cifar', 'se')])
def test_hook_that_changes_an_se_output_changes_the_model_output(name, part):
    model = randomize_batchnorm(build(name)).eval()
    x = torch.randn(2, 3, MODELS[name], MODELS[name])
    with torch.no_grad():
        plain = model(x)
        for m in model.modules():
            if isinstance(m, SqueezeExcite):
                (m if part == 'se' else getattr(m, part)).register_forward_hook(_zero_output)
        changed = model(x)
    assert (plain - changed).abs().max() > 1e-3


class CountingWrapper(nn.Module):
    """Stands for a LoRA / quantization-observer wrapper: calls the module it replaced."""

    def __init__(self, inner: nn.Module, counter: dict):
        super().__init__()
        self.inner = inner
        self.counter = counter

    def forward(self, x):
        self.counter['calls'] += 1
        return self.inner(x)


class LowRankDelta(nn.Module):
    """A LoRA-style wrapper around a 1x1 convolution: ``conv(x) + up(down(x))``, ``up`` zero at init."""

    def __init__(self, conv: nn.Conv2d, rank: int = 2):
        super().__init__()
        self.conv = conv
        self.down = nn.Conv2d(conv.in_channels, rank, 1, bias=False)
        self.up = nn.Conv2d(rank, conv.out_channels, 1, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x):
        return self.conv(x) + self.up(self.down(x))


@pytest.mark.parametrize('name', ['se_resnet50b', 'se_efficientnet_b0', 'se_inception_v3', 'se_resnet164_cifar'])
def test_modules_swapped_in_for_fc1_fc2_are_called(name):
    model = randomize_batchnorm(build(name))
    x = torch.randn(2, 3, MODELS[name], MODELS[name])
    with torch.no_grad():
        expected = model(x)
    counter = {'calls': 0}
    units = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    for se in units:
        se.fc1 = CountingWrapper(se.fc1, counter)
        se.fc2 = LowRankDelta(se.fc2)
    outputs = {}
    for mode in ('eval', 'train'):
        counter['calls'] = 0
        outputs[mode] = getattr(model, mode)()(x)
        assert counter['calls'] == len(units)
    torch.testing.assert_close(outputs['eval'], expected)
    # the LoRA delta is trained: its up-projection gets a gradient through every block
    outputs['train'].square().sum().backward()
    assert all(se.fc2.up.weight.grad.abs().sum() > 0 for se in units)


@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('name,node', [('se_resnet50b', 'layer2.1.se'), ('se_resnet50b', 'layer2.1.se.fc1'),
                                       ('se_resnet50b', 'layer2.1.act_out'), ('se_efficientnet_b0', 'blocks.2.0.se'),
                                       ('se_inception_v3', 'Mixed_5c.se'), ('se_resnet20_cifar', 'layer3.2.se')])
def test_fx_feature_extraction_by_module_name(name, node, mode):
    """torchvision's fx feature extractor returns what a forward hook on that module sees."""
    model = getattr(randomize_batchnorm(build(name)), mode)()
    x = torch.randn(2, 3, MODELS[name], MODELS[name])
    extractor = create_feature_extractor(model, return_nodes={node: 'out'})
    seen = {}
    dict(model.named_modules())[node].register_forward_hook(lambda m, i, o: seen.setdefault('out', o.detach()))
    with torch.no_grad():
        model(x)
        torch.testing.assert_close(extractor(x)['out'], seen['out'])


def test_timm_fx_features_reach_se_modules():
    model = build('se_resnet50b').eval()
    extractor = timm.models.create_feature_extractor(model, return_nodes={'layer3.0.se': 'gate'})
    gate = extractor(torch.randn(1, 3, 64, 64))['gate']
    assert gate.shape == (1, 1024, 1, 1) and 0 < gate.min() and gate.max() < 1


def test_training_gradients_equal_timm_with_hooks_attached():
    """Train mode, float64, a hook on every module: se_hub's SE-ResNet-50 gives timm's seresnet50
    gradients, and autograd still keeps no BatchNorm output of a block's last BN (the lean tail)."""
    ref = randomize_batchnorm(timm.create_model('seresnet50')).double().train()
    model = timm.create_model('se_resnet50b').double().train()
    se_hub.load_checkpoint(model, ref.state_dict())
    last_bn_outputs = []  # held here, so that no later tensor reuses their memory during the forward
    for name, m in model.named_modules():
        m.register_forward_hook(lambda m, i, o: None)
        if name.endswith('.bn3'):
            m.register_forward_hook(lambda m, i, o: last_bn_outputs.append(o))
    saved = set()

    def pack(t):
        saved.add(t.untyped_storage().data_ptr())
        return t

    x = torch.randn(3, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    assert len(last_bn_outputs) == 16
    assert not ({t.untyped_storage().data_ptr() for t in last_bn_outputs} & saved)
    out.square().sum().backward()
    ref(x).square().sum().backward()
    ref_grads = dict(ref.named_parameters())
    for key, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[key].grad, rtol=1e-7, atol=1e-9, msg=key)


@pytest.mark.parametrize('name', ['se_resnet50_identity', 'se_resnet50_stage3', 'se_efficientnet_b0',
                                  'se_wrn16_8_cifar'])
def test_torchscript_computes_the_eager_function(name):
    """Blocks tell se_hub's gate-returning SE from other attention modules by a flag TorchScript
    keeps constant; an isinstance() in forward resolves wrongly for its specialised module copies."""
    model = randomize_batchnorm(build(name)).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, MODELS.get(name, 32), MODELS.get(name, 32))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
