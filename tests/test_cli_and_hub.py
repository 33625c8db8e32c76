"""The se-hub command, README's generated tables, and the torch.hub entrypoints."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from se_hub.cli import format_table, model_rows

REPO = Path(__file__).resolve().parents[1]


def readme_block(name: str) -> str:
    text = (REPO / 'README.md').read_text()
    m = re.search(rf'<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->', text, re.S)
    assert m, f'README.md has no {name} block'
    return m.group(1)


@pytest.mark.parametrize('block,pattern,exclude', [
    ('models-table', 'se_*', ['se_resnet50_*']),
    ('ablation-table', 'se_resnet50*', ['se_resnet50b']),
])
def test_readme_tables_are_generated_from_code(block, pattern, exclude):
    assert readme_block(block) == format_table(model_rows(pattern, exclude), markdown=True)


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'se_hub.cli', *args], capture_output=True, text=True, cwd=REPO)


def test_list_prints_measured_and_paper_figures():
    result = run_cli('list', 'se_resnet50_r*')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ['model', 'params', '(M)']
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {'se_resnet50_r2', 'se_resnet50_r4', 'se_resnet50_r8', 'se_resnet50_r32', 'se_resnet50_relu'}
    assert rows['se_resnet50_r2'].split()[1:3] == ['45.70', '3.889']


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
