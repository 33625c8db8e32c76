"""Keyword arguments are honoured or refused with a clear error, never silently dropped; every
entrypoint's docstring lists only keyword arguments its model accepts."""
import re

import pytest
import timm
import torch
from timm.layers import make_divisible

import se_hub  # noqa: F401  (registers the models)
from _helpers import randomize_batchnorm
from se_hub.layers import SqueezeExcite
from se_hub.models.catalog import MODELS

# a value for each documented keyword argument that differs from every default
SAMPLES = {
    'num_classes': 7, 'in_chans': 1, 'global_pool': 'max', 'drop_rate': 0.1, 'drop_path_rate': 0.1,
    'features_only': True, 'se_layer': 'eca', 'se_args': dict(gate='tanh'), 'se_ratio': 0.5,
    'se_placement': 'post', 'se_stages': (1,),
}


def documented(name):
    doc = timm.models.model_entrypoint(name).__doc__
    line = re.search(r'^Keyword arguments: (.*)$', doc, re.M)
    assert line, f'{name}: no "Keyword arguments:" line in its docstring'
    return re.findall(r'`(\w+)`', line.group(1))


@pytest.mark.parametrize('name', sorted(MODELS))
def test_every_documented_kwarg_builds(name):
    kwargs = documented(name)
    assert {'num_classes', 'in_chans', 'se_layer'} <= set(kwargs)
    assert set(kwargs) <= set(SAMPLES), f'add a sample value for {set(kwargs) - set(SAMPLES)}'
    for key in kwargs:
        with torch.device('meta'):
            timm.create_model(name, **{key: SAMPLES[key]})


def _se_units(model):
    return [m for m in model.modules() if isinstance(m, SqueezeExcite)]


def test_mbconv_honours_rd_divisor():
    """Each SE is rd_ratio x the block's input width, rounded as timm's make_divisible does."""
    model = timm.create_model('se_efficientnet_b0', se_args=dict(rd_divisor=8))
    plain = timm.create_model('se_efficientnet_b0')
    blocks = [b for stage in model.blocks for b in stage]
    widths = [se.rd_channels for se in _se_units(model)]
    in_chs = [(b.conv_pw if hasattr(b, 'conv_pwl') else b.conv_dw).in_channels for b in blocks]
    assert widths == [make_divisible(c * 0.25, 8, round_limit=0.) for c in in_chs]
    assert widths != [se.rd_channels for se in _se_units(plain)]  # the option changed something


def test_mbconv_honours_rd_channels():
    model = timm.create_model('se_efficientnet_b0', se_args=dict(rd_channels=12))
    assert {(se.fc1.out_channels, se.fc2.in_channels) for se in _se_units(model)} == {(12, 12)}


@pytest.mark.parametrize('name', ['se_resnet50', 'se_efficientnet_b0', 'se_inception_v3', 'se_resnet20_cifar'])
@pytest.mark.parametrize('se_layer', ['eca', 'cbam', 'none'])
def test_se_args_with_another_attention_layer_are_refused(name, se_layer):
    with pytest.raises(ValueError, match=f"se_layer='{se_layer}' takes no se_args: drop 'gate'"):
        with torch.device('meta'):
            timm.create_model(name, se_layer=se_layer, se_args=dict(gate='tanh'))


def test_se_args_with_a_callable_se_layer_are_refused():
    with pytest.raises(ValueError, match="takes no se_args: drop 'rd_ratio'"):
        timm.create_model('se_resnet18b', se_layer=lambda c: torch.nn.Identity(), se_args=dict(rd_ratio=0.5))


def test_configuration_se_args_give_way_to_another_attention_layer():
    """se_resnet50's own se_args (Caffe rounding) do not stand in the way of se_layer='eca'."""
    model = timm.create_model('se_resnet50', se_layer='eca')
    assert not _se_units(model) and type(model.layer1[0].se).__name__ == 'EcaModule'


@pytest.mark.parametrize('name', ['se_resnet50', 'se_efficientnet_b0'])
def test_unknown_se_args_keys_are_named(name):
    """Even where no block gets SE (se_stages=()), a misspelt option is an error, not ignored."""
    extra = dict(se_stages=()) if name == 'se_resnet50' else {}
    with pytest.raises(ValueError, match=r"se_args keys \['reduction'\] are not options"):
        timm.create_model(name, se_args=dict(reduction=8), **extra)


@pytest.mark.parametrize('layers', [(3, 4, 6), (3, 4, 6, 3, 2)])
def test_residual_layers_of_the_wrong_length_are_refused(layers):
    with pytest.raises(ValueError, match='4 stages'):
        timm.create_model('se_resnet50', layers=layers)


def test_inception_resnet_v2_stochastic_depth():
    """drop_path_rate drops residual branches in training (two forwards differ), rising linearly to
    the last residual block; in eval it is the same function as without it."""
    x = torch.randn(2, 3, 75, 75, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model('se_inception_resnet_v2', drop_path_rate=0.3))
    plain = timm.create_model('se_inception_resnet_v2')
    plain.load_state_dict(model.state_dict())
    rates = [b.drop_path.drop_prob for b in model.modules() if getattr(b, 'drop_path', None) is not None]
    assert len(rates) == 40 - 1 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain.eval()(x))
        model.train()
        assert (model(x) - model(x)).abs().max() > 1e-3


@pytest.mark.parametrize('name', ['se_inception_v3', 'se_bn_inception'])
def test_inception_without_residual_branches_refuses_drop_path_rate(name):
    with pytest.raises(ValueError, match='stochastic depth drops residual branches'):
        timm.create_model(name, drop_path_rate=0.1)
