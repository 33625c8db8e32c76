"""SE-Inception family: SE-BN-Inception against the official Caffe release and the paper's
multiply-adds, SE-Inception-v3 / SE-Inception-ResNet-v2 against timm's inception_v3 /
inception_resnet_v2 (same function with se_layer='none', seeding of the SE models). Big models
are counted on the meta device; forwards run at small sizes."""
import pytest
import timm
import torch
from timm.layers.cbam import CbamModule
from timm.layers.eca import EcaModule
from timm.models import get_pretrained_cfg
from timm.models.inception_v3 import InceptionAux
from torch.utils.flop_counter import FlopCounterMode

import se_hub
from _helpers import conv_linear_macs, output_shapes, randomize_batchnorm, se_unit_macs, se_unit_params
from se_hub.complexity import count_macs, count_params, model_complexity
from se_hub.layers import SqueezeExcite
from se_hub.models.catalog import MODELS
from se_hub.models.se_inception import LAYOUTS, InceptionBlock
from se_hub.weights import CheckpointLayoutError, convert_state_dict

NAMES = ['se_bn_inception', 'se_inception_v3', 'se_inception_resnet_v2']
UPSTREAM = {'se_inception_v3': ('inception_v3', 'se_hub'),
            'se_inception_resnet_v2': ('inception_resnet_v2', 'timm_inception_resnet_v2')}
SIZE = 80  # the valid-padding stems need >= 75 px


def meta_model(name, **kwargs):
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


# ---------------------------------------------------------------------------------------------
# SE-BN-Inception: the Caffe release's layer list and the paper's cost

def test_bn_inception_multiply_adds_reproduce_paper():
    """Paper: BN-Inception 2.03 G -> SE-BN-Inception 2.04 G. se_hub's convention (conv + linear, plus
    the SE unit's pooling and scale) reproduces both; conv + linear alone leaves SE-BN-Inception at
    2.03 (its SE units cost 0.0007 G in FC layers but 0.0024 G in pooling + scale)."""
    _, plain = model_complexity('se_bn_inception', se_layer='none')
    _, with_se = model_complexity('se_bn_inception')
    assert round(plain / 1e9, 2) == 2.03 == MODELS['se_bn_inception'].paper['baseline_gmacs']
    assert round(with_se / 1e9, 2) == 2.04 == MODELS['se_bn_inception'].paper['gmacs']
    model = meta_model('se_bn_inception').eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 224, 224, device='meta'))
    conv_linear = counter.get_total_flops() // 2
    assert round(conv_linear / 1e9, 2) == 2.03
    # the SE terms: one add (pooling) and one multiply (scale) per element of the 10 module outputs
    outputs = {256: 28, 320: 28, 576: 14, 608: 14, 1056: 7, 1024: 7}
    widths = [256, 320, 576, 576, 576, 608, 608, 1056, 1024, 1024]
    assert with_se - conv_linear == 2 * sum(c * outputs[c] ** 2 for c in widths)


def test_bn_inception_layout_is_the_caffe_release():
    """SE-BN-Inception.prototxt: SE widths floor(C/16) (inception_3a_1x1_down: 16, 3b: 20, ...), conv
    layers without bias, BatchNorm eps 1e-5, ceil-mode max-pools (224 -> 112 -> 56 -> 28 -> 14 -> 7)."""
    model = meta_model('se_bn_inception')
    ses = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    assert [se.rd_channels for se in ses] == [16, 20, 36, 36, 36, 38, 38, 66, 64, 64]
    assert [se.channels for se in ses] == [256, 320, 576, 576, 576, 608, 608, 1056, 1024, 1024]
    convs = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and '.se.' not in n]
    assert len(convs) == 3 + 8 * 7 + 2 * 5 and all(c.bias is None for c in convs)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}
    feats = model.forward_intermediates(torch.zeros(1, 3, 224, 224, device='meta'), intermediates_only=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 112, 112), (192, 56, 56), (320, 28, 28), (608, 14, 14),
                                                   (1024, 7, 7)]


# BN-Inception's modules as Ioffe & Szegedy (2015, Fig. 5) and the release's prototxt list them:
# (input channels, #1x1, (#3x3 reduce, #3x3), (#double 3x3 reduce, #double 3x3), pool projection or 0).
# 3c and 4e have stride 2 and pass the max-pooled input through.
BN_INCEPTION_MODULES = [
    (192, 64, (64, 64), (64, 96), 32), (256, 64, (64, 96), (64, 96), 64), (320, 0, (128, 160), (64, 96), 0),
    (576, 224, (64, 96), (96, 128), 128), (576, 192, (96, 128), (96, 128), 128),
    (576, 160, (128, 160), (128, 160), 128), (608, 96, (128, 192), (160, 192), 128),
    (608, 0, (128, 192), (192, 256), 0), (1056, 352, (192, 320), (160, 224), 128),
    (1024, 352, (192, 320), (192, 224), 128),
]


def bn_inception_params_by_hand(num_classes=1000):
    """Convolutions without bias, each followed by a BatchNorm (weight + bias); a linear classifier."""
    def conv(c_in, c_out, k):
        return c_in * c_out * k * k + 2 * c_out
    total = conv(3, 64, 7) + conv(64, 64, 1) + conv(64, 192, 3)
    for c_in, n1x1, (r3, n3), (rd, nd), proj in BN_INCEPTION_MODULES:
        total += (conv(c_in, n1x1, 1) if n1x1 else 0) + conv(c_in, r3, 1) + conv(r3, n3, 3)
        total += conv(c_in, rd, 1) + conv(rd, nd, 3) + conv(nd, nd, 3) + (conv(c_in, proj, 1) if proj else 0)
    return total + 1024 * num_classes + num_classes


def test_bn_inception_params_by_hand():
    """The plain network has BN-Inception's parameters counted from its layer table; SE adds one paper
    SE unit (floor(C/16) wide) per module output."""
    widths = [c_in for c_in, *_ in BN_INCEPTION_MODULES[1:]] + [1024]
    assert widths == [256, 320, 576, 576, 576, 608, 608, 1056, 1024, 1024]
    plain = bn_inception_params_by_hand()
    assert count_params(meta_model('se_bn_inception', se_layer='none')) == plain
    assert count_params(meta_model('se_bn_inception')) == plain + sum(se_unit_params(c) for c in widths)


def test_bn_inception_preprocessing_is_caffe_mean_subtraction():
    """timm normalises RGB in [0, 1]; the cfg makes that x_255 - (123, 117, 104), the release's
    BGR mean (104, 117, 123) subtraction with the channels in RGB order."""
    cfg = get_pretrained_cfg('se_bn_inception')
    rgb = torch.randint(0, 256, (3, 4, 4)).float()
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    caffe = rgb.flip(0) - torch.tensor([104., 117., 123.]).view(3, 1, 1)  # BGR, 0-255
    torch.testing.assert_close((rgb / 255 - mean) / std, caffe.flip(0), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# SE-Inception-v3 / SE-Inception-ResNet-v2 against timm

# Where the SE units sit in timm's networks: after each Inception-v3 block's concatenation; on
# each Inception-ResNet-v2 residual branch (its last 1x1 conv), before the scaled addition.
SE_POSITIONS = {
    'se_inception_v3': ['Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a', 'Mixed_6b', 'Mixed_6c', 'Mixed_6d',
                        'Mixed_6e', 'Mixed_7a', 'Mixed_7b', 'Mixed_7c'],
    'se_inception_resnet_v2': [f'repeat.{i}.conv2d' for i in range(10)] + [f'repeat_1.{i}.conv2d' for i in range(20)]
    + [f'repeat_2.{i}.conv2d' for i in range(9)] + ['block8.conv2d'],
}


@pytest.mark.parametrize('name,gmacs', [('se_inception_v3', 5.71), ('se_inception_resnet_v2', 13.16)])
def test_cost_equals_timm_network_plus_paper_se_units(name, gmacs):
    """With se_layer='none', timm's network parameter for parameter and multiply-add for multiply-add
    (the design notes' (shared/DESIGN.md) measurements: 5.71 / 13.16 G at 299); with SE, that plus one
    paper SE unit per position, sized from the outputs of timm's own modules."""
    upstream = meta_model(UPSTREAM[name][0])
    plain = meta_model(name, se_layer='none')
    base_params, base_macs = count_params(upstream), conv_linear_macs(upstream, (3, 299, 299))
    assert count_params(plain) == base_params
    assert count_macs(plain, (3, 299, 299)) == base_macs
    assert round(base_macs / 1e9, 2) == gmacs
    shapes = output_shapes(upstream, SE_POSITIONS[name], (3, 299, 299))
    params, macs = model_complexity(name)
    assert params == base_params + sum(se_unit_params(c) for c, _, _ in shapes)
    assert macs == base_macs + sum(se_unit_macs(c, h, w) for c, h, w in shapes)


def test_inception_resnet_v2_reports_paper_and_measured_cost():
    info = MODELS['se_inception_resnet_v2']
    assert (info.paper['baseline_gmacs'], info.paper['gmacs']) == (11.75, 11.76)
    assert info.paper['measured_baseline_gmacs'] == 13.16 and '13.16' in info.description
    ses = [m for m in meta_model('se_inception_resnet_v2').modules() if isinstance(m, SqueezeExcite)]
    assert [se.channels for se in ses] == [320] * 10 + [1088] * 20 + [2080] * 10  # the residual branches


@pytest.fixture(scope='module')
def x():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope='module')
def upstream_models():
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            calibration = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
            cache[name] = randomize_batchnorm(timm.create_model(name), calibrate_on=calibration)
        return cache[name]
    return get


@pytest.mark.parametrize('name', list(UPSTREAM))
def test_se_layer_none_computes_timm_function(name, x, upstream_models):
    upstream_name, layout = UPSTREAM[name]
    ref = upstream_models(upstream_name)
    model = timm.create_model(name, se_layer='none')
    assert se_hub.load_checkpoint(model, ref.state_dict()) == layout
    expected = logits(ref, x)
    assert (expected[0] - expected[1]).abs().max() > 0.1  # the logits depend on the input
    torch.testing.assert_close(logits(model, x), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize('name', list(UPSTREAM))
def test_timm_checkpoint_seeds_se_model(name, upstream_models):
    ref = upstream_models(UPSTREAM[name][0])
    model = timm.create_model(name)
    with pytest.raises(CheckpointLayoutError, match=r'missing keys: .*\.se\.fc1\.weight'):
        se_hub.load_checkpoint(model, ref.state_dict())
    se_hub.load_checkpoint(model, ref.state_dict(), strict=False)
    _, converted = convert_state_dict(ref.state_dict(), model)
    missing = set(model.state_dict()) - set(converted)
    assert missing and all('.se.' in k for k in missing)
    assert missing == {k for k in model.state_dict() if '.se.' in k}
    assert not set(converted) - set(model.state_dict())
    for key, value in model.state_dict().items():
        if key in converted:
            torch.testing.assert_close(value, converted[key], rtol=0, atol=0, msg=key)


def test_inception_v3_checkpoint_with_aux_classifier_loads(x, upstream_models):
    """torchvision's / timm's tv_in1k Inception-v3 weights carry the auxiliary classifier."""
    ref = upstream_models('inception_v3')
    aux = {f'AuxLogits.{k}': v for k, v in InceptionAux(768, 1000).state_dict().items()}
    model = timm.create_model('se_inception_v3', se_layer='none')
    assert se_hub.load_checkpoint(model, {**ref.state_dict(), **aux}) == 'inception_v3_aux'
    torch.testing.assert_close(logits(model, x), logits(ref, x), atol=1e-4, rtol=0)


def test_wrong_architecture_is_refused(upstream_models):
    ref = upstream_models('inception_v3')
    with pytest.raises(CheckpointLayoutError, match='unknown checkpoint layout for se_bn_inception'):
        se_hub.load_checkpoint(timm.create_model('se_bn_inception'), ref.state_dict())


def test_catalog_upstream_is_left_empty():
    """The SE models have no timm counterpart (their SE-free baselines have: said in the description)."""
    for name in NAMES:
        assert MODELS[name].upstream == '' and MODELS[name].family == 'se_inception'
    assert "timm's inception_v3" in MODELS['se_inception_v3'].description
    assert "timm's inception_resnet_v2" in MODELS['se_inception_resnet_v2'].description


# ---------------------------------------------------------------------------------------------
# The timm contract (timm's own suite runs on these models too, see test_timm_suite.py)

@pytest.mark.parametrize('name,input_size,pool_size,first_conv', [
    ('se_bn_inception', (3, 224, 224), (7, 7), 'conv1.conv'),
    ('se_inception_v3', (3, 299, 299), (8, 8), 'Conv2d_1a_3x3.conv'),
    ('se_inception_resnet_v2', (3, 299, 299), (8, 8), 'conv2d_1a.conv'),
])
def test_pretrained_cfg(name, input_size, pool_size, first_conv):
    cfg = get_pretrained_cfg(name)
    assert (cfg.input_size, cfg.pool_size, cfg.first_conv, cfg.classifier) == (input_size, pool_size, first_conv, 'fc')
    assert cfg.paper_ids == 'arXiv:1709.01507' and cfg.license and cfg.crop_pct and cfg.interpolation
    if name != 'se_bn_inception':
        assert cfg.mean == cfg.std == (0.5, 0.5, 0.5) and cfg.interpolation == 'bicubic'
    model = meta_model(name)
    assert model.forward_features(torch.zeros(1, *input_size, device='meta')).shape[-2:] == pool_size
    assert dict(model.named_modules())[first_conv].in_channels == 3


@pytest.mark.parametrize('name,size', [('se_bn_inception', 64), ('se_bn_inception', 224),
                                       ('se_inception_v3', 139), ('se_inception_v3', 299),
                                       ('se_inception_resnet_v2', 139), ('se_inception_resnet_v2', 299)])
def test_features_only_matches_feature_info(name, size):
    device = 'cpu' if size == 64 else 'meta'  # shapes only; timm's suite runs them on real tensors
    model = timm.create_model(name, features_only=True, device=device).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, size, size, device=device))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    for f, r in zip(feats, model.feature_info.reduction()):
        if name == 'se_bn_inception':
            assert f.shape[-1] == size // r  # padded convolutions, ceil-mode pools
        else:  # valid convolutions shrink the maps below size / r, never by 2x at >= 139 px
            assert size / (2 * r) < f.shape[-1] <= size // r


def test_heads_intermediates_pruning_and_checkpointing():
    torch.manual_seed(0)
    model = timm.create_model('se_bn_inception').eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        out = model(x)
        final, inter = model.forward_intermediates(x)
        early = model.forward_intermediates(x, indices=[2], stop_early=True, intermediates_only=True)
    assert pre.shape == (2, 1024) and model.head_hidden_size == model.num_features == 1024
    torch.testing.assert_close(model.get_classifier()(pre), out)
    torch.testing.assert_close(final, feats)
    assert [t.shape[1] for t in inter] == [64, 192, 320, 608, 1024]
    torch.testing.assert_close(early[0], inter[2])

    model.set_grad_checkpointing(True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), out)
    model.set_grad_checkpointing(False)

    kept = model.prune_intermediate_layers(indices=[3], prune_head=True)
    assert kept == [3] and model.num_classes == 0 and model.num_features == 608
    with torch.no_grad():
        torch.testing.assert_close(model(x), inter[3])  # pruned: no pooling, no head
    model.reset_classifier(5, 'avg')
    assert model(x).shape == (2, 5)


@pytest.mark.parametrize('name', NAMES)
def test_group_matcher_and_classifier(name):
    from timm.models import group_parameters
    model = meta_model(name)
    groups = group_parameters(model, model.group_matcher(coarse=True))
    assert len(groups) == 5  # stem, three strides of blocks, head
    fine = group_parameters(model, model.group_matcher())
    assert len(fine) > len(groups)
    assert model.no_weight_decay() == set() and model.get_classifier(name_only=True) == 'fc'
    model.reset_classifier(7, 'max')
    assert model.fc.out_features == 7 and model.fc.weight.device.type == 'meta'


@pytest.mark.parametrize('se_layer,module,count', [
    ('none', SqueezeExcite, 0), ('se', SqueezeExcite, 10), ('eca', EcaModule, 10), ('cbam', CbamModule, 10),
])
def test_se_layer_choices(se_layer, module, count):
    model = meta_model('se_bn_inception', se_layer=se_layer)
    assert sum(isinstance(m, module) for m in model.modules()) == count
    assert [b.se is None for b in model.children() if hasattr(b, 'se')] == [count == 0] * 10


def test_se_layer_callable_and_se_args():
    seen = []

    def make(channels):
        seen.append(channels)
        return torch.nn.Identity()
    meta_model('se_inception_v3', se_layer=make)
    assert seen == [256, 288, 288, 768, 768, 768, 768, 768, 1280, 2048, 2048]
    se = meta_model('se_bn_inception', se_args=dict(gate='tanh')).inception_3b.se
    assert isinstance(se.gate, torch.nn.Tanh) and se.rd_channels == 20  # keeps floor(C / 16)


def test_kwargs_device_dtype_and_options():
    with pytest.raises(TypeError, match='no_such_option'):
        timm.create_model('se_inception_v3', no_such_option=1)
    model = timm.create_model('se_inception_resnet_v2', device='meta', dtype=torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {('meta', torch.bfloat16)}
    model = timm.create_model('se_bn_inception', in_chans=1, num_classes=3, drop_rate=0.5, global_pool='max')
    assert model.conv1.conv.in_channels == 1 and model.drop_rate == 0.5 and model.global_pool.pool_type == 'max'
    x = torch.randn(2, 1, 64, 64)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert a.shape == (2, 3) and not torch.allclose(a, model(x))  # dropout active in training


def test_block_code_scripts():
    """se_inception_v3 is scripted by timm's suite; this covers the branch-list blocks (BN-Inception,
    Inception-ResNet residual blocks)."""
    model = timm.create_model('se_bn_inception').eval()
    x = torch.randn(1, 3, 64, 64)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), logits(model, x))
    spec = {name: args for name, _, args in LAYOUTS['inception_resnet_v2']['layers']}['repeat_2']['block']
    block = InceptionBlock(2080, eps=1e-3, attn_layer=SqueezeExcite, **spec).eval()
    assert block.se.channels == 2080
    y = torch.randn(1, 2080, 3, 3)
    torch.testing.assert_close(torch.jit.script(block)(y), block(y))
