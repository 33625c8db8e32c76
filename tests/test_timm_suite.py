"""timm's own model tests (tests/test_models.py of the timm sdist of the installed version)
run on se_hub models: passing them is what "timm-conformant" means.

What runs (README says the same): the forward, forward_features, forward_intermediates and default-cfg
tests on every model; backward, intermediates-as-features, the pruning contract, torch.fx forward /
backward on one model per code path (CODE_PATHS); TorchScript on one model per family and layout
(SCRIPT_MODELS). Inputs are capped at 64 px (timm's own size knobs; the Inception stems take their
139 px minimum).

The file comes from the package registry, fetched before the tests by .ci/fetch_timm_tests.py into
.ci/cache/timm-tests/ (.ci/run does it; the tests themselves never reach the network). When it is missing
or another timm's, collection fails and says how to get it; set SE_HUB_TIMM_TESTS to a copy of the file, or
SE_HUB_SKIP_TIMM_SUITE=1 to skip it knowingly (then every one of its tests is reported as skipped, with the
reason).
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import timm
import torch

import se_hub  # noqa: F401
from se_hub.models.catalog import MODELS

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / '.ci' / 'cache' / 'timm-tests'
SUITE = Path(os.environ.get('SE_HUB_TIMM_TESTS', CACHE / 'test_models.py'))


def _cached_version() -> str:
    try:
        return (CACHE / 'VERSION').read_text().strip() if SUITE.is_file() else ''
    except OSError:
        return ''


SKIP_REASON = None
if os.environ.get('SE_HUB_SKIP_TIMM_SUITE'):
    SKIP_REASON = "SE_HUB_SKIP_TIMM_SUITE is set: timm's own model tests were NOT run"
elif 'SE_HUB_TIMM_TESTS' in os.environ and not SUITE.is_file():
    raise RuntimeError(f'SE_HUB_TIMM_TESTS={SUITE} does not exist')
elif 'SE_HUB_TIMM_TESTS' not in os.environ and _cached_version() != timm.__version__:  # missing, or another timm's
    raise RuntimeError(
        f"timm {timm.__version__}'s tests/test_models.py is not at {SUITE}: run `{sys.executable} "
        f".ci/fetch_timm_tests.py` (pip fetches it from the package registry; .ci/run does this), set "
        'SE_HUB_TIMM_TESTS to a copy of the file, or set SE_HUB_SKIP_TIMM_SUITE=1 to skip it knowingly')
if SKIP_REASON:
    pytest.skip(SKIP_REASON, allow_module_level=True)


def _load_suite():
    spec = importlib.util.spec_from_file_location('timm_upstream_test_models', SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


suite = _load_suite()
# timm's size knobs: big inputs only make the same code slower (models with a minimum size keep it)
suite.TARGET_BWD_SIZE = suite.TARGET_JIT_SIZE = suite.TARGET_FWD_FX_SIZE = suite.TARGET_BWD_FX_SIZE = 64
SE_MODELS = timm.list_models('se_*')
# The heavier tests run on one model per distinct code path (block type, stem, SE variant and
# placement, padding, family); the others differ from one of these only in depth / width / input
# size, which the forward, features and cfg tests cover on every model.
CODE_PATHS = [
    'se_resnet18', 'se_resnet34b', 'se_resnet50', 'se_resnet50b', 'se_resnext26d_32x4d', 'se_senet154',
    'se_resnet50_none', 'se_resnet50_gmp', 'se_resnet50_nosqueeze', 'se_resnet50_tanh', 'se_resnet50_pre',
    'se_resnet50_post', 'se_resnet50_identity', 'se_resnet50_3x3', 'se_resnet50_stage3',
    'se_bn_inception', 'se_inception_v3', 'se_inception_resnet_v2',
    'se_efficientnet_b0', 'se_efficientnet_b3', 'se_tf_efficientnet_b0', 'se_efficientnet_lite0',
    'se_resnet20_cifar', 'se_resnet164_cifar', 'se_wrn16_8_cifar',
    'se_mobilenet', 'se_shufflenet', 'se_shake_shake26_2x96d_cifar',
]
# se_vgg16 (15.5 GMACs) runs the tests every model runs; its blocks and the shared stage API
# (se_hub/models/staged.py) are the mobile models' code paths. The pruning contract, the
# costliest test (minutes on 2 cores for these two), also skips Shake-Shake; tests/test_vgg.py
# and tests/test_shake_shake.py prune them at a small size.
PRUNE_MODELS = [m for m in CODE_PATHS if m != 'se_shake_shake26_2x96d_cifar']
# Scripting compiles every block: fewer still.
SCRIPT_MODELS = ['se_resnet18', 'se_resnet34b', 'se_resnet50', 'se_resnext26d_32x4d', 'se_resnet50_nosqueeze',
                 'se_resnet50_pre', 'se_resnet50_post', 'se_resnet50_identity', 'se_resnet50_3x3',
                 'se_resnet50_none', 'se_resnet50_gmp', 'se_inception_v3', 'se_resnet20_cifar',
                 'se_efficientnet_b0', 'se_tf_efficientnet_b0']
# ... and every family and layout is scripted: SENet-154's stem and grouped blocks, the Caffe-layout
# ResNeXt, the pre-activation CIFAR blocks, MBConv without SE (Lite), BN-Inception and Inception-ResNet-v2
SCRIPT_MODELS += ['se_resnet50b', 'se_senet154', 'se_resnext26_32x4d', 'se_resnet164_cifar', 'se_wrn16_8_cifar',
                  'se_efficientnet_lite0', 'se_bn_inception', 'se_inception_resnet_v2',
                  'se_mobilenet', 'se_shufflenet', 'se_vgg16']
# Not scriptable yet (docs/index.md says so): Shake-Shake mixes its branches in a custom autograd function.
# A test below proves that scripting it fails, so this list stays true.
NOT_SCRIPTABLE_FAMILIES = ('se_shake_shake',)

CASES = [
    ('test_model_default_cfgs', SE_MODELS, dict(batch_size=1, cfg_device='meta')),
    ('test_model_forward', SE_MODELS, dict(batch_size=1)),
    ('test_model_forward_features', SE_MODELS, dict(batch_size=1)),
    ('test_model_forward_intermediates', SE_MODELS, dict(batch_size=1)),
    ('test_model_backward', CODE_PATHS, dict(batch_size=2)),
    ('test_model_forward_intermediates_features', CODE_PATHS, dict(batch_size=1)),
    ('test_prune_intermediate_layers_contract', PRUNE_MODELS, dict()),
    ('test_model_forward_fx', CODE_PATHS, dict(batch_size=1)),
    ('test_model_backward_fx', CODE_PATHS, dict(batch_size=2)),
    ('test_model_forward_torchscript', SCRIPT_MODELS, dict(batch_size=1)),
    # se_vgg16's own head (the MLP of 4096-wide layers): backward and fx too, not the costly pruning contract
    ('test_model_backward', ['se_vgg16'], dict(batch_size=2)),
    ('test_model_forward_fx', ['se_vgg16'], dict(batch_size=1)),
    ('test_model_backward_fx', ['se_vgg16'], dict(batch_size=2)),
]


def test_code_path_models_are_registered():
    assert set(CODE_PATHS + SCRIPT_MODELS) <= set(SE_MODELS)


def test_every_family_runs_backward_fx_and_torchscript():
    families = {info.family for info in MODELS.values()}
    # se_vgg16's blocks and stage API are the mobile models' code paths (see CODE_PATHS)
    assert {MODELS[m].family for m in CODE_PATHS} == families - {'se_vgg'}
    assert {MODELS[m].family for m in SCRIPT_MODELS} == families - set(NOT_SCRIPTABLE_FAMILIES)
    # the layouts README lists: Caffe and timm residual layouts, SENet-154 (the Caffe grouped block,
    # as in the Caffe SE-ResNeXt, scripted too), pre-activation CIFAR blocks, TF padding, Lite, each Inception
    for name in ('se_resnet50', 'se_resnet50b', 'se_resnext26d_32x4d', 'se_senet154', 'se_resnet164_cifar',
                 'se_wrn16_8_cifar', 'se_tf_efficientnet_b0', 'se_efficientnet_lite0', 'se_bn_inception',
                 'se_inception_v3', 'se_inception_resnet_v2'):
        assert name in CODE_PATHS and name in SCRIPT_MODELS, name
    assert 'se_resnext26_32x4d' in SCRIPT_MODELS


@pytest.mark.parametrize('model_name', ['se_shake_shake26_2x96d_cifar'])
def test_families_listed_as_not_scriptable_really_are(model_name):
    assert MODELS[model_name].family in NOT_SCRIPTABLE_FAMILIES
    with torch.device('meta'):
        model = timm.create_model(model_name, num_classes=2)
    with pytest.raises(Exception):  # noqa: B017 - TorchScript's frontend raises several types
        torch.jit.script(model)


@pytest.mark.timm_suite
@pytest.mark.parametrize('test_name,model_name,kwargs', [
    pytest.param(test, model, kwargs, id=f'{test}[{model}]') for test, models, kwargs in CASES for model in models
])
def test_timm_model_suite(test_name, model_name, kwargs):
    getattr(suite, test_name)(model_name=model_name, **kwargs)
