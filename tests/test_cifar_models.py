"""The paper's CIFAR networks (se_hub.models.se_cifar): parameter counts against the literature
and against counts derived by hand from the architectures, the SE unit's place in each block,
the timm API at 32x32, and a real training step."""
import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers.cbam import CbamModule
from timm.layers.eca import EcaModule
from timm.models import FeatureListNet, get_pretrained_cfg, group_parameters

from _helpers import randomize_batchnorm
from se_hub.complexity import count_params
from se_hub.layers import SqueezeExcite
from se_hub.models.catalog import MODELS
from se_hub.models.se_cifar import PadShortcut, PreActBasicBlock, PreActBottleneck
from se_hub_cli.listing import model_rows

CIFAR_MODELS = ['se_resnet20_cifar', 'se_resnet32_cifar', 'se_resnet56_cifar', 'se_resnet110_cifar',
                'se_resnet164_cifar', 'se_wrn16_8_cifar']
PREACT = ['se_resnet164_cifar', 'se_wrn16_8_cifar']

# Parameter counts of the plain networks as the literature quotes them (M): He et al. 2015 / 2016,
# Zagoruyko & Komodakis (WRN-16-8: 11.0M in their table; 10.96M is the unrounded figure).
LITERATURE_PARAMS = [('se_resnet20_cifar', 0.27), ('se_resnet110_cifar', 1.73),
                     ('se_resnet164_cifar', 1.70), ('se_wrn16_8_cifar', 10.96)]

WIDTHS = (16, 32, 64)


def bn(c):
    return 2 * c  # weight and bias


def fc(c, k):
    return c * k + k


def stage_inputs(stem, outs, n):
    """(input channels, output channels, first block of a stage) for every block."""
    blocks, c_in = [], stem
    for c_out in outs:
        for i in range(n):
            blocks.append((c_in, c_out, i == 0))
            c_in = c_out
    return blocks


def plain_resnet_cifar(n, k=10):
    """ResNet-(6n+2), post-activation basic blocks, parameter-free option-A shortcuts."""
    total = 3 * 9 * 16 + bn(16)
    for c_in, c, _ in stage_inputs(16, WIDTHS, n):
        total += 9 * c_in * c + bn(c) + 9 * c * c + bn(c)
    return total + fc(64, k)


def plain_resnet164(n=18, k=10):
    """Pre-activation bottlenecks (expansion 4), 1x1 projection without BN where the shape changes."""
    total = 3 * 9 * 16
    for c_in, c_out, first in stage_inputs(16, [4 * w for w in WIDTHS], n):
        w = c_out // 4
        total += bn(c_in) + c_in * w + bn(w) + 9 * w * w + bn(w) + w * c_out
        total += c_in * c_out if first else 0
    return total + bn(256) + fc(256, k)


def plain_wrn(n=2, widen=8, k=10):
    """WRN-(6n+4)-widen: pre-activation basic blocks, 1x1 projection where the shape changes."""
    total = 3 * 9 * 16
    for c_in, c, first in stage_inputs(16, [widen * w for w in WIDTHS], n):
        total += bn(c_in) + 9 * c_in * c + bn(c) + 9 * c * c
        total += c_in * c if first else 0
    return total + bn(64 * widen) + fc(64 * widen, k)


def params(name, **kwargs):
    with torch.device('meta'):
        return count_params(timm.create_model(name, **kwargs))


def se_params(channels):
    """One SE unit: C -> floor(C/16) (at least 1) -> C, both 1x1 with bias."""
    r = max(1, channels // 16)
    return channels * r + r + r * channels + channels


# (model, number of blocks per stage, block output channels per stage, plain count by hand)
DERIVED = [
    ('se_resnet20_cifar', 3, WIDTHS, plain_resnet_cifar(3)),
    ('se_resnet32_cifar', 5, WIDTHS, plain_resnet_cifar(5)),
    ('se_resnet56_cifar', 9, WIDTHS, plain_resnet_cifar(9)),
    ('se_resnet110_cifar', 18, WIDTHS, plain_resnet_cifar(18)),
    ('se_resnet164_cifar', 18, (64, 128, 256), plain_resnet164()),
    ('se_wrn16_8_cifar', 2, (128, 256, 512), plain_wrn()),
]


@pytest.mark.parametrize('name,literature_m', LITERATURE_PARAMS)
def test_plain_params_match_literature(name, literature_m):
    plain = params(name, se_layer='none')
    assert round(plain / 1e6, 2) == literature_m, f'{name}: {plain / 1e6:.4f}M vs {literature_m}M'


@pytest.mark.parametrize('name,n,outs,plain', DERIVED)
def test_params_equal_hand_derivation(name, n, outs, plain):
    """Plain network exactly as derived above; SE adds exactly one SE unit per block."""
    assert params(name, se_layer='none') == plain
    with_se = params(name)
    assert with_se == plain + sum(n * se_params(c) for c in outs)
    assert params(name, num_classes=100) - with_se == 90 * (outs[-1] + 1)  # 90 more classifier rows


def test_shortcut_choice_against_the_counts():
    """ResNet-164 and WRN-16-8 reach the literature only with projection shortcuts (option A drops
    exactly the three projections and misses it); for the classic ResNets both options round
    alike, and He et al.'s text (option A for CIFAR) decides."""
    r164_a = params('se_resnet164_cifar', se_layer='none', shortcut='A')
    assert r164_a == plain_resnet164() - (16 * 64 + 64 * 128 + 128 * 256) and round(r164_a / 1e6, 2) != 1.70
    wrn_a = params('se_wrn16_8_cifar', se_layer='none', shortcut='A')
    assert wrn_a == plain_wrn() - (16 * 128 + 128 * 256 + 256 * 512) and round(wrn_a / 1e6, 2) != 10.96
    r20_b = params('se_resnet20_cifar', se_layer='none', shortcut='B')
    assert r20_b == plain_resnet_cifar(3) + 16 * 32 + bn(32) + 32 * 64 + bn(64)  # 1x1 conv + BN, twice
    assert round(r20_b / 1e6, 2) == 0.27


@pytest.mark.parametrize('name,depth', [('se_resnet20_cifar', 20), ('se_resnet32_cifar', 32),
                                        ('se_resnet56_cifar', 56), ('se_resnet110_cifar', 110),
                                        ('se_resnet164_cifar', 164), ('se_wrn16_8_cifar', 16)])
def test_depth(name, depth):
    """ResNets count the weighted layers on the main path plus the classifier (6n+2, 9n+2);
    WRN-d-k counts the convolutions, projections included (6n+4)."""
    with torch.device('meta'):
        model = timm.create_model(name)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and '.se.' not in n]
    projections = [n for n in convs if '.downsample' in n]
    if name.startswith('se_wrn'):
        assert len(convs) == depth and len(projections) == 3
    else:
        assert len(convs) - len(projections) + 1 == depth


@pytest.mark.parametrize('name', CIFAR_MODELS)
def test_pretrained_cfg_and_catalog(name):
    cfg = get_pretrained_cfg(name)
    assert cfg.input_size == (3, 32, 32) and cfg.pool_size == (8, 8) and cfg.num_classes == 10
    assert cfg.crop_pct == 1.0 and cfg.mean == (0.4914, 0.4822, 0.4465) and cfg.std == (0.2470, 0.2435, 0.2616)
    assert cfg.first_conv == 'conv1' and cfg.classifier == 'fc'
    assert cfg.license and cfg.paper_ids == 'arXiv:1709.01507'
    info = MODELS[name]
    assert info.family == 'se_cifar' and 'CIFAR' in info.description


@pytest.mark.parametrize('name,c10,c100', [
    ('se_resnet110_cifar', (6.37, 5.21), (26.88, 23.85)),
    ('se_resnet164_cifar', (5.46, 4.39), (24.33, 21.31)),
    ('se_wrn16_8_cifar', (4.27, 3.88), (20.43, 19.14)),
])
def test_paper_errors_in_catalog_and_cli(name, c10, c100):
    paper = MODELS[name].paper
    assert paper['cifar10_err'] == dict(base=c10[0], se=c10[1])
    assert paper['cifar100_err'] == dict(base=c100[0], se=c100[1])
    assert paper['top1_err'] == c10[1] and paper['row'].startswith('CIFAR')
    if name == 'se_resnet110_cifar':  # `se-hub list` (counts multiply-adds: one model is enough)
        row, = model_rows(name)
        assert row['input'] == '32x32' and row['paper top-1 / top-5 err (%)'] == f'{c10[1]:.2f}'


@pytest.mark.parametrize('name', CIFAR_MODELS)
def test_output_shapes(name):
    """CIFAR-100 head on real tensors (finite logits, 8x8 final map); the default CIFAR-10 head."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=100).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model.forward_head(feats)
        pre = model.forward_head(feats, pre_logits=True)
    assert out.shape == (2, 100) and torch.isfinite(out).all()
    assert feats.shape == (2, model.num_features, 8, 8) and pre.shape == (2, model.num_features)
    torch.testing.assert_close(model.get_classifier()(pre), out)
    with torch.device('meta'):
        default = timm.create_model(name)
        assert default.num_classes == 10 and default(torch.empty(2, 3, 32, 32)).shape == (2, 10)


def _blocks(model):
    return [b for stage in (model.layer1, model.layer2, model.layer3) for b in stage]


def test_se_layer_variants():
    def count(model, cls):
        return sum(isinstance(m, cls) for m in model.modules())

    plain = timm.create_model('se_resnet20_cifar', se_layer='none')
    assert count(plain, SqueezeExcite) == 0 and count_params(plain) == plain_resnet_cifar(3)
    se = timm.create_model('se_resnet20_cifar')
    assert [b.se.rd_channels for b in _blocks(se)] == [1] * 3 + [2] * 3 + [4] * 3  # floor(C / 16)
    assert all(b.se_gates and b.se_placement == 'standard' for b in _blocks(se))  # the lean tail applies
    for name, cls in [('eca', EcaModule), ('cbam', CbamModule)]:
        model = timm.create_model('se_resnet20_cifar', se_layer=name)
        assert count(model, cls) == 9 and count(model, SqueezeExcite) == 0
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    custom = timm.create_model('se_wrn16_8_cifar', se_layer=lambda c: SqueezeExcite(c, rd_ratio=1 / 4))
    assert [b.se.rd_channels for b in _blocks(custom)] == [32, 32, 64, 64, 128, 128]
    tanh = timm.create_model('se_resnet164_cifar', se_args=dict(gate='tanh'))
    se0 = tanh.layer1[0].se
    assert isinstance(se0.gate, torch.nn.Tanh) and se0.rd_channels == 4  # CIFAR rounding kept: 64 // 16


@pytest.mark.parametrize('name', CIFAR_MODELS)
def test_se_args_reduction_rule(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert all(b.se.rd_channels == max(1, b.se.channels // 16) for b in _blocks(model))


def test_se_sits_on_the_residual_branch_before_the_addition():
    """The paper's SE-ResNet module: out = relu(SE(residual) + shortcut) for post-activation
    blocks, out = SE(residual(relu(bn(x)))) + shortcut for pre-activation ones."""
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model('se_resnet20_cifar'))
    for block in (model.layer1[1], model.layer2[0]):  # identity / option-A shortcut
        x = torch.randn(2, 16, 32, 32)
        with torch.no_grad():
            u = block.bn2(block.residual(x))
            scaled = u * torch.sigmoid(block.se.fc2(torch.relu(block.se.fc1(u.mean((2, 3), keepdim=True)))))
            shortcut = x if block.downsample is None else block.downsample(x)
            torch.testing.assert_close(block(x), torch.relu(scaled + shortcut))

    for name, stage in [('se_resnet164_cifar', 'layer2'), ('se_wrn16_8_cifar', 'layer3')]:
        model = randomize_batchnorm(timm.create_model(name))
        block = getattr(model, stage)[0]
        assert isinstance(block, (PreActBottleneck, PreActBasicBlock))
        x = torch.randn(2, block.bn1.num_features, 16, 16)
        with torch.no_grad():
            x_pre = torch.relu(block.bn1(x))
            u = block.residual(x_pre)
            scaled = u * block.se(u)
            torch.testing.assert_close(block(x), scaled + block.downsample(x_pre))


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 32, 32)
    y = PadShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 16, 16)
    torch.testing.assert_close(y[:, :16], x[:, :, 0::2, 0::2])
    assert not y[:, 16:].any()
    with pytest.raises(ValueError, match='narrow'):
        PadShortcut(32, 16, 2)


def test_training_step_reduces_the_loss():
    """SGD as in the paper's CIFAR recipe (momentum 0.9, weight decay 1e-4): a few steps on a
    small random batch lower the loss on that batch, and every parameter (SE units included) learns."""
    torch.manual_seed(0)
    model = timm.create_model('se_resnet20_cifar').train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = F.cross_entropy(model(x), y).item()
    assert all(map(math.isfinite, losses))
    assert final < 0.8 * losses[0], losses + [final]
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_lean_tail_gradients_equal_plain_path():
    """The residual family's memory-lean SE tail, with option-A shortcuts, computes the plain
    path's gradients. In float64: with random BN statistics, float32 rounding alone moves the
    plain path's stem gradients by ~1%, which would hide nothing and catch nothing."""
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model('se_resnet20_cifar')).double().train()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    state = copy.deepcopy(model.state_dict())
    results = []
    for lean in (True, False):
        model.load_state_dict(state)
        model.zero_grad()
        for b in _blocks(model):  # the plain path: scale + add without the lean backward
            if lean:
                b.__dict__.pop('_scale_add', None)
            else:
                b._scale_add = lambda y, gate, shortcut, z: torch.addcmul(shortcut, y, gate)
        out = model(x)
        out.pow(2).sum().backward()
        results.append((out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for k in results[0][1]:
        torch.testing.assert_close(results[0][1][k], results[1][1][k], msg=k)


@pytest.mark.parametrize('name,channels', [
    ('se_resnet20_cifar', [16, 16, 32, 64]), ('se_resnet164_cifar', [16, 64, 128, 256]),
    ('se_wrn16_8_cifar', [16, 128, 256, 512]),
])
def test_features_only(name, channels):
    with torch.device('meta'):  # shapes only: timm's suite runs features_only on real tensors
        model = timm.create_model(name, features_only=True)
        feats = model.eval()(torch.empty(1, 3, 32, 32))
    assert model.feature_info.channels() == channels and model.feature_info.reduction() == [1, 1, 2, 4]
    assert [f.shape[1] for f in feats] == channels
    assert [32 // f.shape[-1] for f in feats] == [1, 1, 2, 4]
    sub = timm.create_model(name, features_only=True, out_indices=(2, 3), device='meta')
    assert sub.feature_info.reduction() == [2, 4]


# The code paths of the deep networks at a fraction of the cost: fewer blocks per stage.
SHALLOW = [('se_resnet20_cifar', {}), ('se_resnet164_cifar', dict(layers=(2, 2, 2))),
           ('se_wrn16_8_cifar', dict(widen_factor=2))]


@pytest.mark.parametrize('name,kwargs', SHALLOW, ids=[name for name, _ in SHALLOW])
def test_features_agree_with_forward_intermediates(name, kwargs):
    """Hooked features (FeatureListNet on the same weights) equal forward_intermediates; the last
    tap of a pre-activation network is the final BN-ReLU output, i.e. forward_features."""
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model(name, **kwargs))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, norm=True)
        feats = FeatureListNet(copy.deepcopy(model), out_indices=(0, 1, 2, 3))(x)
        torch.testing.assert_close(final, model.forward_features(x))
    for a, b in zip(feats, inter):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(feats[-1], final)

    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers([2]) == [2] and pruned.num_features == model.feature_info[2]['num_chs']
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), inter[2])


def test_timm_contract_options():
    with pytest.raises(TypeError, match='no_such_option'):
        timm.create_model('se_resnet20_cifar', no_such_option=1)
    with pytest.raises(ValueError, match='block'):
        timm.create_model('se_resnet20_cifar', block='dense')
    with pytest.raises(ValueError, match='shortcut'):
        timm.create_model('se_resnet20_cifar', shortcut='C')

    meta = timm.create_model('se_wrn16_8_cifar', device='meta', dtype=torch.bfloat16)
    assert all(p.device.type == 'meta' and p.dtype == torch.bfloat16 for p in meta.parameters())

    model = timm.create_model('se_resnet20_cifar', in_chans=1, drop_rate=0.2, drop_path_rate=0.1,
                              global_pool='catavgmax')
    assert model.conv1.in_channels == 1 and model.drop_rate == 0.2
    assert model.layer1[0].drop_path is None and model.layer3[2].drop_path.drop_prob == pytest.approx(0.1)
    assert model.head_hidden_size == 2 * model.num_features
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    model.reset_classifier(100, 'avg')
    assert model.get_classifier().out_features == 100 and model(torch.randn(2, 1, 32, 32)).shape == (2, 100)

    assert len(group_parameters(model, model.group_matcher(coarse=True))) == 5  # stem, 3 stages, head
    assert len(group_parameters(model, model.group_matcher())) == 1 + 9 + 1
    assert model.no_weight_decay() == set()


@pytest.mark.parametrize('name,kwargs', SHALLOW, ids=[name for name, _ in SHALLOW])
def test_grad_checkpointing_gives_same_output_and_grads(name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0., **kwargs).train()
    x = torch.randn(2, 3, 32, 32)
    state = copy.deepcopy(model.state_dict())
    out = model(x)
    out.sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.load_state_dict(state)
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out2 = model(x)
    out2.sum().backward()
    torch.testing.assert_close(out2, out)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], atol=1e-5, rtol=1e-4, msg=k)
