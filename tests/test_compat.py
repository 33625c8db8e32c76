"""se_hub on every release it declares: the fall-backs of se_hub/_compat.py against the APIs they
stand in for (the newer API is removed to make the fall-back run), and the declared floors
against what CI installs for its floor run."""
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import huggingface_hub.utils
import pytest
import timm
import timm.layers
import timm.models
import timm.models._features
import torch
from packaging.requirements import Requirement
from packaging.version import Version

import se_hub._compat as compat

ROOT = Path(__file__).resolve().parents[1]
TIMM_TAKE = timm.models._features.feature_take_indices  # before any test removes it
LOCAL_MISS = huggingface_hub.utils.LocalEntryNotFoundError
TIMM_DD = getattr(timm.layers, 'get_device_dtype', None)  # timm >= 1.0.29
TIMM_CREATE_CLASSIFIER = timm.layers.create_classifier


@pytest.fixture
def old_timm(monkeypatch):
    """se_hub._compat re-imported with the APIs newer than timm 1.0.15 / huggingface_hub 0.23
    taken away (and re-imported again, whole, afterwards)."""
    monkeypatch.delattr(timm.layers, 'get_device_dtype', raising=False)
    monkeypatch.delattr(timm.models, 'save_for_hf', raising=False)
    monkeypatch.delattr(timm.models._features, 'feature_take_indices')
    import huggingface_hub.errors
    # huggingface_hub 2.x's utils re-exports it lazily from errors: pin it there before removing it
    monkeypatch.setattr(huggingface_hub.utils, 'LocalEntryNotFoundError', LOCAL_MISS, raising=False)
    monkeypatch.delattr(huggingface_hub.errors, 'LocalEntryNotFoundError', raising=False)
    create = timm.layers.create_classifier

    def create_classifier(num_features, num_classes, pool_type='avg', use_conv=False, input_fmt='NCHW',
                          drop_rate=None):  # timm < 1.0.21: no device= / dtype=
        return create(num_features, num_classes, pool_type, use_conv=use_conv, input_fmt=input_fmt,
                      drop_rate=drop_rate)

    monkeypatch.setattr(timm.layers, 'create_classifier', create_classifier)
    yield importlib.reload(compat)
    monkeypatch.undo()
    importlib.reload(compat)


def test_fallbacks_run_without_the_newer_apis(old_timm):
    assert old_timm.get_device_dtype.__module__ == 'se_hub._compat'
    assert old_timm.feature_take_indices.__module__ == 'se_hub._compat'
    assert not old_timm._CLASSIFIER_TAKES_DD
    from timm.models._hub import save_for_hf
    assert old_timm.LocalEntryNotFoundError is LOCAL_MISS
    assert old_timm.save_for_hf is save_for_hf


def test_get_device_dtype_fallback(old_timm):
    """The first parameter's device and dtype unless given (timm's own function where it has one)."""
    module = torch.nn.Linear(3, 2, dtype=torch.float64, device='meta')
    cases = [({}, dict(device=torch.device('meta'), dtype=torch.float64)),
             (dict(dtype=torch.float16), dict(device=torch.device('meta'), dtype=torch.float16)),
             (dict(device='cpu'), dict(device='cpu', dtype=torch.float64))]
    for kwargs, expected in cases:
        assert old_timm.get_device_dtype(module, **kwargs) == expected
        if TIMM_DD is not None:
            assert TIMM_DD(module, **kwargs) == expected
    assert old_timm.get_device_dtype(torch.nn.ReLU()) == dict(device=None, dtype=None)


@pytest.mark.parametrize('pool', ['avg', 'max', 'avgmax', ''])
def test_create_classifier_fallback_places_the_head(old_timm, pool):
    pool_ref, fc_ref = TIMM_CREATE_CLASSIFIER(16, 5, pool_type=pool)
    pool_new, fc_new = old_timm.create_classifier(16, 5, pool_type=pool, device='meta', dtype=torch.float64)
    assert type(pool_new) is type(pool_ref) and pool_new.pool_type == pool_ref.pool_type
    assert pool_new.feat_mult() == pool_ref.feat_mult()
    assert (fc_new.weight.shape, fc_new.weight.dtype, fc_new.weight.device.type) == (
        fc_ref.weight.shape, torch.float64, 'meta')


def test_reset_classifier_keeps_dtype_and_device_on_old_timm(old_timm, monkeypatch):
    import se_hub.models.classifier_head as head
    monkeypatch.setattr(head, 'create_classifier', old_timm.create_classifier)
    monkeypatch.setattr(head, 'get_device_dtype', old_timm.get_device_dtype)
    model = timm.create_model('se_resnet18b', num_classes=4).double()
    model.reset_classifier(7)
    fc = model.get_classifier()
    assert (fc.out_features, fc.weight.dtype) == (7, torch.float64)
    model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).sum().backward()


@pytest.mark.parametrize('indices', [None, 1, 3, 5, [0], [1, 3], (0, -1), [-2, -1], [4]])
def test_feature_take_indices_fallback_equals_timm(old_timm, indices):
    assert old_timm.feature_take_indices is not TIMM_TAKE
    assert old_timm.feature_take_indices(5, indices) == TIMM_TAKE(5, indices)
    assert old_timm.feature_take_indices(5, indices, as_set=True) == TIMM_TAKE(5, indices, as_set=True)


@pytest.mark.parametrize('indices', [0, 6, [5], [-6]])
def test_feature_take_indices_fallback_refuses_out_of_range(old_timm, indices):
    with pytest.raises(AssertionError, match='out of range'):
        old_timm.feature_take_indices(5, indices)


def test_import_and_models_work_with_every_newer_api_removed(tmp_path):
    """`import se_hub` and a model of every family (forward, features, head reset, fx) in a process
    whose timm lacks every API newer than 1.0.15 that se_hub uses (as timm 1.0.15 does)."""
    script = tmp_path / 'old_timm.py'
    script.write_text(inspect.cleandoc("""
        import timm.layers, timm.layers.classifier, timm.models, timm.models._features, torch
        for module, name in [(timm.layers, 'get_device_dtype'), (timm.layers, 'register_notrace_function'),
                             (timm.models, 'save_for_hf'), (timm.models._features, 'feature_take_indices')]:
            if hasattr(module, name):  # (timm 1.0.15 has none of them)
                delattr(module, name)
        create = timm.layers.create_classifier
        timm.layers.create_classifier = lambda n, c, pool_type='avg': create(n, c, pool_type=pool_type)
        import se_hub, se_hub._compat as compat
        assert not compat._CLASSIFIER_TAKES_DD and compat.get_device_dtype.__module__ == 'se_hub._compat'
        for name, size in [('se_resnet18b', 64), ('se_resnet50', 64), ('se_efficientnet_b0', 64),
                           ('se_inception_v3', 75), ('se_resnet20_cifar', 32)]:
            model = timm.create_model(name, num_classes=3).eval()
            x = torch.randn(1, 3, size, size)
            y = model(x)
            final, inter = model.forward_intermediates(x, indices=2)  # feature_take_indices
            assert len(inter) == 2 and torch.allclose(model.forward_head(final), y, atol=1e-5), name
            model.reset_classifier(5)  # create_classifier(device=, dtype=), get_device_dtype
            assert model(x).shape == (1, 5), name
        fx = timm.create_model('se_resnet18', features_only=True, feature_cls='fx').train()
        fx(torch.randn(2, 3, 64, 64))[-1].sum().backward()
        print('ok')
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith('ok'), result.stderr[-3000:]


def _export(tmp_path, model_args=None):
    torch.manual_seed(0)
    model = timm.create_model('se_resnet18b', num_classes=3, **(model_args or {})).eval()
    compat.save_for_hf(model, str(tmp_path), model_config={'label_names': ['a', 'b', 'c']}, model_args=model_args,
                       safe_serialization=True)
    return model


@pytest.mark.parametrize('model_args', [None, {'se_layer': 'eca'}])
def test_local_dir_fallback_reads_an_export(tmp_path, monkeypatch, model_args):
    model = _export(tmp_path, model_args)
    x = torch.randn(2, 3, 64, 64)
    if compat.TIMM_HAS_LOCAL_DIR:  # timm's own reader is the reference where there is one
        reference = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
        torch.testing.assert_close(reference(x), model(x))
        assert reference.loaded_weights == f'local-dir:{tmp_path}'  # how timm names an export's weights
    monkeypatch.setattr(compat, 'TIMM_HAS_LOCAL_DIR', False)  # as on timm < 1.0.16
    reloaded = compat.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    torch.testing.assert_close(reloaded(x), model(x))
    # reported as the export's weights (so a re-export keeps its tag), as timm's own reader reports them
    assert reloaded.loaded_weights == f'local-dir:{tmp_path}'
    assert reloaded.pretrained_cfg['label_names'] == ['a', 'b', 'c'] and reloaded.num_classes == 3
    assert isinstance(reloaded.layer1[0].se, type(model.layer1[0].se))
    fresh = compat.create_model(f'local-dir:{tmp_path}', num_classes=4)  # config only, a new head
    assert fresh.num_classes == 4


def test_local_dir_fallback_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(compat, 'TIMM_HAS_LOCAL_DIR', False)
    with pytest.raises(FileNotFoundError, match='no config.json in'):
        compat.create_model(f'local-dir:{tmp_path}', pretrained=True)
    (tmp_path / 'config.json').write_text(json.dumps({'architecture': 'se_resnet18b', 'num_classes': 3}))
    with pytest.raises(FileNotFoundError, match='no model.safetensors or pytorch_model.bin'):
        compat.create_model(f'local-dir:{tmp_path}', pretrained=True)


def test_local_dir_support_is_detected():
    assert compat.TIMM_HAS_LOCAL_DIR == (Version(timm.__version__) >= Version('1.0.16'))


def test_local_hub_miss_is_caught_on_every_huggingface_hub(tmp_path):
    """se_hub catches the exception huggingface_hub really raises for a file not in the cache."""
    from huggingface_hub import hf_hub_download
    with pytest.raises(compat.LocalEntryNotFoundError):
        # cache only; the endpoint is a closed local port in case the client tried the network anyway
        hf_hub_download(endpoint='http://127.0.0.1:9', repo_id='me/not-cached', filename='model.safetensors',
                        local_files_only=True, cache_dir=tmp_path)


def _declared():
    text = (ROOT / 'pyproject.toml').read_text(encoding='utf-8')
    deps = re.search(r'^dependencies = \[(.*?)^\]', text, re.S | re.M).group(1)
    return {r.name: r for r in (Requirement(s) for s in re.findall(r'"([^"]+)"', deps))}


def _floor(requirement):
    return next(Version(s.version) for s in requirement.specifier if s.operator == '>=')


def test_ci_floor_run_installs_the_declared_floors():
    """.ci/run's floor run installs exactly the lowest release of every dependency pyproject.toml allows."""
    declared = _declared()
    ci = (ROOT / '.ci' / 'run').read_text(encoding='utf-8')
    pins = dict(re.findall(r'^FLOOR_([A-Z_]+)=([0-9][0-9.]*)$', ci, re.M))
    names = tuple(declared)
    assert {n: Version(pins[n.upper().replace('-', '_')]) for n in names} == {n: _floor(declared[n]) for n in names}


def test_installed_releases_are_in_the_declared_range():
    import safetensors
    import torchvision
    installed = {'timm': timm.__version__, 'huggingface-hub': huggingface_hub.__version__,
                 'torch': torch.__version__.split('+')[0], 'torchvision': torchvision.__version__.split('+')[0],
                 'safetensors': safetensors.__version__}
    for name, version in installed.items():
        assert _declared()[name].specifier.contains(version, prereleases=True), (name, version)


# torch APIs se_hub uses, newest first, with the release that brought each
TORCH_APIS = [('add_safe_globals(', '2.4'),  # weights-only reading of timm's training checkpoints
              ('torch.amp.GradScaler(', '2.3'),  # GradScaler(device): fine-tuning's float16 AMP
              ('FlopCounterMode', '2.1')]  # complexity.py: multiply-adds


def test_torch_floor_covers_the_apis_used():
    used = [(api, Version(v)) for api, v in TORCH_APIS
            if any(api in p.read_text(encoding='utf-8') for p in (ROOT / 'se_hub').rglob('*.py'))]
    assert used, 'none of the listed torch APIs is used any more: re-derive the torch floor'
    need = max(v for _, v in used)
    assert _floor(_declared()['torch']) == need, f'torch floor should be {need}, set by {used}'


# imports that fail on the declared floors, or reach into timm's private modules; se_hub/_compat.py
# is the one place for them
FLOOR_BREAKERS = [
    (r'from timm\.(layers|models)\._\w+ import|import timm\.(layers|models)\._', "timm's private modules"),
    (r'from timm\.layers import [^\n]*\b(get_device_dtype|register_notrace_\w+)\b',
     'timm.layers lacks it before 1.0.17 / 1.0.29 (register_notrace_* are in timm.models on every release)'),
    (r'from timm\.models import [^\n]*\bsave_for_hf\b', 'timm.models exports it from 1.0.16'),
    (r'from huggingface_hub\.errors import', 'huggingface_hub.errors lacks most errors before 0.24'),
    (r'(?m)^[^\'"#`\n]*\btimm\.create_model\(',  # in code, not in a string or comment
     'timm reads local-dir: names from 1.0.16 on; se_hub._compat.create_model reads them before'),
]


def test_no_import_that_breaks_the_floor():
    found = []
    for path in sorted((ROOT / 'se_hub').rglob('*.py')):
        if path.name == '_compat.py':
            continue
        text = path.read_text(encoding='utf-8')
        found += [f'{path.relative_to(ROOT)}: {m.group(0)!r} ({why})'
                  for pattern, why in FLOOR_BREAKERS for m in re.finditer(pattern, text)]
    assert not found, 'import these from se_hub._compat (or the public place named):\n' + '\n'.join(found)


def test_create_model_passes_se_layer_none_through():
    """timm.create_model drops None-valued kwargs (so plain timm builds the default SE network);
    se_hub's tools build through _compat.create_model, where None means no SE."""
    from se_hub._compat import create_model
    from se_hub.layers import SqueezeExcite
    with torch.device('meta'):
        through_timm = timm.create_model('se_resnet20_cifar', se_layer=None)
        through_se_hub = create_model('se_resnet20_cifar', se_layer=None)
    assert any(isinstance(m, SqueezeExcite) for m in through_timm.modules())  # timm's behaviour, unchanged
    assert not any(isinstance(m, SqueezeExcite) for m in through_se_hub.modules())
