"""weights_manifest.json: schema, consistency with timm's own pretrained cfgs, and the
pretrained tags it gives the registered models."""
import copy
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import timm
import torch
from timm.models import get_pretrained_cfg

import se_hub
from se_hub.models.catalog import MODELS
from se_hub.weights import LAYOUTS, detect_layout
from se_hub.weights.manifest import (
    MANIFEST_PATH,
    SCHEMA_PATH,
    ManifestError,
    UnknownWeightsError,
    find_weights,
    schema_errors,
    validate_manifest,
)

REPO = Path(__file__).resolve().parents[1]
DATA = se_hub.manifest()
SCHEMA = json.loads(SCHEMA_PATH.read_text())
ENTRIES = DATA['weights']


def test_root_manifest_is_the_packaged_one():
    assert (REPO / 'weights_manifest.json').read_bytes() == MANIFEST_PATH.read_bytes()


def test_manifest_follows_its_schema_per_the_reference_validator():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(DATA, SCHEMA)
    assert schema_errors(DATA, SCHEMA) == []


def _mutations():
    first = ENTRIES[0]
    yield 'missing field', lambda d: d['weights'][0].pop('layout')
    yield 'unknown field', lambda d: d['weights'][0].update(weights_file='x')
    yield 'bad model name', lambda d: d['weights'][0].update(model='resnet50')
    yield 'bad source kind', lambda d: d['weights'][0]['sources'].append({'kind': 'ftp'})
    yield 'bad hash prefix', lambda d: d['weights'][0]['sources'].append(
        {'kind': 'url', 'url': 'https://x/y-ZZZ.pth', 'hash_prefix': 'ZZZ'})
    yield 'bad crop', lambda d: d['weights'][0]['preprocessing'].update(crop_pct=3)
    yield 'wrong type', lambda d: d['weights'][0].update(num_classes='1000')
    yield 'short mean', lambda d: d['weights'][0]['preprocessing'].update(mean=[0.5])
    yield 'bad provenance', lambda d: d['weights'][0]['metrics'].append(
        {'dataset': 'x', 'top1': 1, 'provenance': 'rumour', 'reference': 'x'})
    assert first


@pytest.mark.parametrize('label,mutate', list(_mutations()), ids=[m[0] for m in _mutations()])
def test_both_validators_reject_a_broken_manifest(label, mutate):
    broken = copy.deepcopy(DATA)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)
    with pytest.raises(ManifestError):
        validate_manifest(broken)


def test_semantic_checks_beyond_the_schema():
    dup = copy.deepcopy(DATA)
    dup['weights'].append(copy.deepcopy(dup['weights'][0]))
    with pytest.raises(ManifestError, match='duplicate entry'):
        validate_manifest(dup)
    incomplete = copy.deepcopy(DATA)
    incomplete['weights'][0]['sources'] = [{'kind': 'hf_hub', 'repo_id': 'timm/x'}]
    with pytest.raises(ManifestError, match=r"hf_hub source needs \['filename'\]"):
        validate_manifest(incomplete)


@pytest.mark.parametrize('entry', ENTRIES, ids=[f"{e['model']}.{e['tag']}" for e in ENTRIES])
def test_entry_is_consistent(entry):
    assert entry['model'] in MODELS
    assert entry['layout'] == 'se_hub' or entry['layout'] in LAYOUTS
    for source in entry['sources']:
        if source['kind'] == 'url' and 'hash_prefix' in source:
            assert re.search(rf"-{source['hash_prefix']}\.\w+$", source['url'])
    if 'upstream' not in entry:
        return
    # the same repo ids, URLs and preprocessing as timm's own cfg for the counterpart, and the
    # layout se_hub detects in the counterpart's state dict
    upstream, _, tag = entry['upstream'].partition('.')
    with torch.device('meta'):
        assert detect_layout(timm.create_model(upstream).state_dict(), timm.create_model(entry['model'])).name \
            == entry['layout']
    assert upstream == MODELS[entry['model']].upstream and tag == entry['tag']
    cfg = get_pretrained_cfg(entry['upstream'])
    hub = [s for s in entry['sources'] if s['kind'] == 'hf_hub']
    urls = [s['url'] for s in entry['sources'] if s['kind'] == 'url']
    assert [s['repo_id'] for s in hub] == ([cfg.hf_hub_id] if cfg.hf_hub_id else [])
    assert urls == ([cfg.url] if cfg.url else [])
    pre = entry['preprocessing']
    assert tuple(pre['input_size']) == cfg.input_size and pre['interpolation'] == cfg.interpolation
    assert pre['crop_pct'] == cfg.crop_pct and tuple(pre['mean']) == tuple(cfg.mean)
    assert tuple(pre['std']) == tuple(cfg.std) and entry['num_classes'] == cfg.num_classes
    assert tuple(pre.get('test_input_size', ())) == tuple(cfg.test_input_size or ())


def test_every_manifest_weight_is_a_timm_pretrained_tag():
    tags = {f"{e['model']}.{e['tag']}" for e in ENTRIES if e['model'] in timm.list_models('se_*')}
    assert set(timm.list_pretrained('se_*')) == tags


def test_tag_cfg_comes_from_the_manifest():
    entry, tag = find_weights('se_resnet50b', 'ra2_in1k')
    cfg = get_pretrained_cfg(f'se_resnet50b.{tag}')
    assert cfg.hf_hub_id == 'timm/seresnet50.ra2_in1k' and cfg.test_input_size == (3, 288, 288)
    assert cfg.interpolation == entry['preprocessing']['interpolation']
    assert get_pretrained_cfg('se_resnet50').url.endswith('se_resnet50-ce0d4300.pth')


def test_unknown_tag_and_weightless_model_are_clear_errors():
    with pytest.raises(UnknownWeightsError, match="no weights tagged 'nope'.*ra2_in1k"):
        find_weights('se_resnet50b', 'nope')
    with pytest.raises(UnknownWeightsError, match='se_resnet50_r2 has no published pretrained weights.*pretrained='):
        timm.create_model('se_resnet50_r2', pretrained=True)


def test_official_release_metrics_carry_provenance():
    entry, _ = find_weights('se_resnet50')
    (metric,) = entry['metrics']
    assert metric['top1'] == pytest.approx(100 - 22.37) and metric['provenance'] == 'upstream report'
    assert 'hujie-frank/SENet' in metric['reference']


def test_wheel_ships_the_manifest_and_schema(tmp_path):
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w',
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob('se_hub-*.whl')
    names = zipfile.ZipFile(wheel).namelist()
    assert 'se_hub/weights/weights_manifest.json' in names and 'se_hub/weights/manifest.schema.json' in names
    assert json.loads(zipfile.ZipFile(wheel).read('se_hub/weights/weights_manifest.json')) == DATA
