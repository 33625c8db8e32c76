"""timm's own model tests (tests/test_models.py of the timm sdist of the installed version)
run on every se_hub model: passing them is what "timm-conformant" means.

.ci/run fetches the file from the package registry into .ci/cache/timm-tests/ (tests never
touch the network); elsewhere set SE_HUB_TIMM_TESTS to a copy of it.
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import timm

import se_hub  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SUITE = Path(os.environ.get('SE_HUB_TIMM_TESTS', REPO / '.ci' / 'cache' / 'timm-tests' / 'test_models.py'))

if not SUITE.is_file():
    if os.environ.get('CI'):
        raise RuntimeError(f"timm's test suite is missing at {SUITE}: .ci/run fetches it before the tests")
    pytest.skip(f"timm's tests/test_models.py not found at {SUITE} (run .ci/run once, or set SE_HUB_TIMM_TESTS)",
                allow_module_level=True)


def _load_suite():
    spec = importlib.util.spec_from_file_location('timm_upstream_test_models', SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


suite = _load_suite()
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
]


def test_code_path_models_are_registered():
    assert set(CODE_PATHS + SCRIPT_MODELS) <= set(SE_MODELS)


@pytest.mark.timm_suite
@pytest.mark.parametrize('test_name,model_name,kwargs', [
    pytest.param(test, model, kwargs, id=f'{test}[{model}]') for test, models, kwargs in CASES for model in models
])
def test_timm_model_suite(test_name, model_name, kwargs):
    getattr(suite, test_name)(model_name=model_name, **kwargs)
