"""Exports and checkpoints round-trip: a model built with any architecture kwargs, through
timm.create_model, torch.hub (hubconf.py) or the entrypoint, reloads from its export
('local-dir:' / 'hf-hub:' through the local test Hub, tests/hub_server.py) to the same function;
the config and card claim no pretrained tag the weights cannot back; `se-hub push` refuses random
weights unless asked; `as_timm` exports load with plain timm in a process that never imports
se_hub; se_hub.load_checkpoint reads what timm's CheckpointSaver writes."""
import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import local_only
import pytest
import timm
import torch
from hub_server import point_client_at
from safetensors.torch import save

import se_hub
import se_hub_cli
from _helpers import randomize_batchnorm
from se_hub import _compat  # timm < 1.0.16 has no local-dir: source
from se_hub.hub import save_pretrained

REPO = Path(__file__).resolve().parents[1]
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def hub(local_hub, monkeypatch, tmp_path):
    cache = tmp_path / 'hf'
    point_client_at(monkeypatch, local_hub.endpoint, cache)
    monkeypatch.setenv('HF_ENDPOINT', local_hub.endpoint)
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_OFFLINE', '0')
    local_hub.cache = cache
    return local_hub


def logits(model):
    with torch.no_grad():
        return model.eval()(X)


def build(how, name, **kwargs):
    if how == 'create_model':
        model = timm.create_model(name, **kwargs)
    elif how == 'torch.hub':
        model = torch.hub.load(str(REPO), name, source='local', trust_repo=True, **kwargs)
    else:
        model = timm.models.model_entrypoint(name)(**kwargs)
    torch.manual_seed(0)
    with torch.no_grad():  # trained-looking weights, so that every SE unit changes the logits
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return randomize_batchnorm(model, calibrate_on=X)


KWARGS = {
    'eca': dict(se_layer='eca'),
    'se_args': dict(se_args=dict(rd_ratio=0.25, gate='hard_sigmoid')),
    'placement': dict(se_placement='identity'),
    'stages': dict(se_stages=(2, 3)),
    'drop_path': dict(drop_path_rate=0.1, se_layer='cbam'),
}


CASES = [('create_model', case) for case in KWARGS] + [(how, case) for how in ('torch.hub', 'entrypoint')
                                                       for case in ('eca', 'se_args')]


@pytest.mark.parametrize('how,case', CASES)
def test_export_reloads_to_the_same_function(how, case, tmp_path):
    model = build(how, 'se_resnet18b', num_classes=5, **KWARGS[case])
    save_pretrained(model, tmp_path / 'export')
    config = json.loads((tmp_path / 'export' / 'config.json').read_text())
    for key, value in KWARGS[case].items():
        if key != 'drop_path_rate':  # timm leaves training-only rates out of exports
            assert json.dumps(config['model_args'][key]) == json.dumps(value)
    reloaded = _compat.create_model(f'local-dir:{tmp_path / "export"}', pretrained=True)
    torch.testing.assert_close(logits(reloaded), logits(model))
    if how == 'create_model':  # the kwargs are not decoration: without them the function differs
        plain = build(how, 'se_resnet18b', num_classes=5)
        assert not torch.allclose(logits(plain), logits(model), atol=1e-3)


def test_entrypoint_export_through_the_hub(hub):
    model = build('entrypoint', 'se_resnet18b', num_classes=3, se_layer='eca', se_stages=(1, 2, 3))
    se_hub.push_to_hub(model, 'me/eca-entry', label_names=['a', 'b', 'c'])
    reloaded = timm.create_model('hf-hub:me/eca-entry', pretrained=True)
    torch.testing.assert_close(logits(reloaded), logits(model))
    assert reloaded.pretrained_cfg['label_names'] == ['a', 'b', 'c']


def test_callable_se_layer_is_a_clear_error(tmp_path):
    from se_hub.layers import SqueezeExcite
    model = timm.models.model_entrypoint('se_resnet18b')(se_layer=SqueezeExcite)
    with pytest.raises(ValueError, match=r"'se_layer' is not serializable .*se_layer='eca'"):
        save_pretrained(model, tmp_path / 'export')
    assert not (tmp_path / 'export' / 'config.json').exists()


def test_random_weights_claim_no_pretrained_tag(tmp_path):
    model = timm.create_model('se_resnet18')  # its cfg is the manifest's default tag, 'in1k'
    assert model.pretrained_cfg['tag'] == 'in1k' and model.loaded_weights is None
    save_pretrained(model, tmp_path / 'export')
    cfg = json.loads((tmp_path / 'export' / 'config.json').read_text())['pretrained_cfg']
    assert 'tag' not in cfg and 'origin_url' not in cfg and 'license' not in cfg
    card = (tmp_path / 'export' / 'README.md').read_text()
    assert 'random initialisation' in card and 'in1k' not in card and 'license: other' in card


def test_loaded_weights_keep_their_tag_and_a_checkpoint_is_named(hub, tmp_path, monkeypatch):
    from se_hub.weights.manifest import find_weights
    torch.manual_seed(0)
    ref = randomize_batchnorm(timm.create_model('legacy_seresnet18'), calibrate_on=X)
    hub.add_file('manifest/r18', 'model.safetensors', save({k: v.contiguous() for k, v in ref.state_dict().items()}))
    entry = dict(find_weights('se_resnet18', 'in1k')[0], sha256=None,
                 sources=[dict(kind='hf_hub', repo_id='manifest/r18', filename='model.safetensors')])
    monkeypatch.setattr('se_hub.weights.pretrained.find_weights', lambda model, tag: (entry, 'in1k'))
    model = timm.create_model('se_resnet18', pretrained=True)
    save_pretrained(model, tmp_path / 'tagged')
    cfg = json.loads((tmp_path / 'tagged' / 'config.json').read_text())['pretrained_cfg']
    assert cfg['tag'] == 'in1k' and cfg['origin_url'] == entry['origin']
    assert 'initial weights: `se_resnet18.in1k`' in (tmp_path / 'tagged' / 'README.md').read_text()
    # a new head: started from the tag, no longer the tag's weights
    head = timm.create_model('se_resnet18', pretrained=True, num_classes=10)
    save_pretrained(head, tmp_path / 'head')
    assert 'tag' not in json.loads((tmp_path / 'head' / 'config.json').read_text())['pretrained_cfg']
    assert 'initial weights: `se_resnet18.in1k`' in (tmp_path / 'head' / 'README.md').read_text()
    # reloaded from the export: the export's own tag stays true
    again = _compat.create_model(f'local-dir:{tmp_path / "tagged"}', pretrained=True)
    save_pretrained(again, tmp_path / 'again')
    assert json.loads((tmp_path / 'again' / 'config.json').read_text())['pretrained_cfg']['tag'] == 'in1k'
    # weights from a checkpoint are not the tag's
    fresh = timm.create_model('se_resnet18')
    torch.save(ref.state_dict(), tmp_path / 'ckpt.pth')
    se_hub.load_checkpoint(fresh, tmp_path / 'ckpt.pth')
    save_pretrained(fresh, tmp_path / 'ckpt')
    assert 'tag' not in json.loads((tmp_path / 'ckpt' / 'config.json').read_text())['pretrained_cfg']
    assert f'checkpoint:{tmp_path / "ckpt.pth"}' in (tmp_path / 'ckpt' / 'README.md').read_text()


def test_cli_push_refuses_random_weights_unless_asked(hub, capsys):
    assert se_hub_cli.main(['push', 'se_resnet18b', 'me/random']) == 1
    err = capsys.readouterr().err
    assert 'random weights' in err and '--allow-random-weights' in err and len(err.strip().splitlines()) == 1
    with pytest.raises(KeyError):
        hub.files('me/random')
    assert se_hub_cli.main(['push', 'se_resnet18b', 'me/random', '--allow-random-weights']) == 0
    assert 'random initialisation' in hub.files('me/random')['README.md'].decode()


AS_TIMM = {'se_resnet18b': 'seresnet18', 'se_resnet18': 'legacy_seresnet18', 'se_efficientnet_b0': 'efficientnet_b0'}


def test_as_timm_exports_load_without_se_hub(hub, tmp_path):
    expected = {}
    for name, upstream in AS_TIMM.items():
        model = build('create_model', name, num_classes=7)
        se_hub.push_to_hub(model, f'me/{name}-timm', as_timm=True, label_names=[str(i) for i in range(7)])
        config = json.loads(hub.files(f'me/{name}-timm')['config.json'])
        assert config['architecture'] == upstream and 'se_hub' not in json.dumps(config['model_args'])
        expected[f'me/{name}-timm'] = logits(model)
    # the CLI, from an se_hub export directory
    model = build('create_model', 'se_resnet18b', num_classes=2)
    save_pretrained(model, tmp_path / 'export')
    assert se_hub_cli.main(['push', str(tmp_path / 'export'), 'me/cli-timm', '--as-timm']) == 0
    expected['me/cli-timm'] = logits(model)
    code = (
        'import sys, torch, timm\n'
        'x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))\n'
        'out = {}\n'
        f'for repo in {sorted(expected)!r}:\n'
        "    m = timm.create_model('hf-hub:' + repo, pretrained=True).eval()\n"
        '    with torch.no_grad():\n'
        '        out[repo] = (type(m).__name__, m(x))\n'
        "assert not [k for k in sys.modules if k.startswith('se_hub')], 'se_hub was imported'\n"
        f'torch.save(out, {str(tmp_path / "out.pt")!r})\n')
    # no repository on the path (plain timm), the loopback-only guard (tests/local_only.py)
    env = local_only.subprocess_env(HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(tmp_path / 'child-cache'),
                                    HF_HUB_OFFLINE='0', HF_HUB_DISABLE_TELEMETRY='1')
    result = subprocess.run([sys.executable, '-c', code], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = torch.load(tmp_path / 'out.pt', weights_only=True)
    for repo, ref in expected.items():
        torch.testing.assert_close(out[repo][1], ref, atol=1e-3, rtol=1e-3)
    assert X.equal(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize('name,kwargs,message', [
    ('se_resnet18b', dict(se_layer='eca'), "computes another function than timm's seresnet18"),
    ('se_resnet18b', dict(se_args=dict(rd_ratio=0.25)), "computes another function"),
    ('se_resnet50_identity', {}, 'has no timm counterpart'),
])
def test_as_timm_refuses_another_function(hub, name, kwargs, message):
    model = timm.create_model(name, **kwargs)
    with pytest.raises(ValueError, match=message):
        se_hub.push_to_hub(model, 'me/nope', as_timm=True)
    with pytest.raises(KeyError):
        hub.files('me/nope')


# ---------------------------------------------------------------- timm training checkpoints
class DataParallelLike(torch.nn.Module):
    """What train.py saves through when its unwrap function keeps the wrapper: 'module.' keys."""
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


@pytest.fixture(scope='module')
def timm_checkpoint(tmp_path_factory):
    """A checkpoint written by timm's own CheckpointSaver after a real optimizer step and EMA update."""
    from timm.utils import CheckpointSaver, ModelEmaV3
    directory = tmp_path_factory.mktemp('train')
    torch.manual_seed(0)
    model = timm.create_model('se_resnet18b', num_classes=4)
    ema = ModelEmaV3(model, decay=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    wrapped = DataParallelLike(model)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(wrapped.train()(X), torch.tensor([1, 3]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model)
    args = argparse.Namespace(model='se_resnet18b', lr=0.5, model_ema=True, epochs=1)
    saver = CheckpointSaver(DataParallelLike(model), optimizer, args=args, model_ema=DataParallelLike(ema.module),
                            checkpoint_dir=str(directory), recovery_dir=str(directory), unwrap_fn=lambda m: m)
    saver.save_checkpoint(epoch=0, metric=0.5)
    path = directory / 'last.pth.tar'
    raw = torch.load(path, weights_only=False)
    assert isinstance(raw['args'], argparse.Namespace) and all(k.startswith('module.') for k in raw['state_dict'])
    return path, model, ema.module


@pytest.mark.parametrize('use_ema', [False, True])
def test_load_checkpoint_reads_timm_train_checkpoints(timm_checkpoint, use_ema):
    path, model, ema = timm_checkpoint
    loaded = timm.create_model('se_resnet18b', num_classes=4)
    assert se_hub.load_checkpoint(loaded, path, use_ema=use_ema) == 'se_hub'
    expected = ema if use_ema else model
    other = model if use_ema else ema
    torch.testing.assert_close(logits(loaded), logits(expected))
    assert not torch.allclose(logits(loaded), logits(other))
    # timm's own loader reads the same weights from the same file
    reference = timm.create_model('se_resnet18b', num_classes=4)
    timm.models.load_checkpoint(reference, str(path), use_ema=use_ema)
    torch.testing.assert_close(logits(loaded), logits(reference))


def test_load_checkpoint_without_ema_says_so(tmp_path):
    model = timm.create_model('se_resnet18b')
    torch.save({'epoch': 3, 'state_dict': model.state_dict(), 'args': argparse.Namespace(model='x')},
               tmp_path / 'plain.pth.tar')
    with pytest.raises(se_hub.CheckpointLayoutError, match='has no EMA weights.*use_ema=False'):
        se_hub.load_checkpoint(timm.create_model('se_resnet18b'), tmp_path / 'plain.pth.tar', use_ema=True)


class Payload:
    def __reduce__(self):
        return (print, ('pwned',))


def _evil_checkpoint(directory):
    buffer = io.BytesIO()
    torch.save({'state_dict': timm.create_model('se_resnet18b').state_dict(),
                'args': argparse.Namespace(hook=Payload())}, buffer)
    (directory / 'evil.pth.tar').write_bytes(buffer.getvalue())
    return directory / 'evil.pth.tar'


def test_checkpoint_that_runs_code_is_still_refused(tmp_path):
    with pytest.raises(se_hub.CheckpointLayoutError, match='never unpickles code'):
        se_hub.load_checkpoint(timm.create_model('se_resnet18b'), _evil_checkpoint(tmp_path))


def test_torch_2_4_reads_timm_checkpoints_and_keeps_its_allow_list(timm_checkpoint, tmp_path, monkeypatch):
    """torch 2.4 has no scoped ``safe_globals``, only the process-wide allow-list: Namespace is
    allowed for se_hub's load and the list is as it was afterwards (also after a refused file)."""
    monkeypatch.delattr(torch.serialization, 'safe_globals', raising=False)  # as on torch 2.4
    before = set(torch.serialization.get_safe_globals())
    path, model, _ = timm_checkpoint
    loaded = timm.create_model('se_resnet18b', num_classes=4)
    se_hub.load_checkpoint(loaded, path, use_ema=False)
    torch.testing.assert_close(logits(loaded), logits(model))
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(se_hub.CheckpointLayoutError, match='never unpickles code'):
        se_hub.load_checkpoint(timm.create_model('se_resnet18b'), _evil_checkpoint(tmp_path))
    assert set(torch.serialization.get_safe_globals()) == before


def test_as_timm_push_of_a_tagged_model(hub, tmp_path):
    """The real Lite0 weights carry their manifest tag (and licence): `se-hub push --as-timm` publishes them with
    that tag, and plain timm's model from the Hub gives se_hub's logits on a real photo."""
    from se_hub.deploy.export import data_config as export_data_config
    from se_hub.deploy.export import photo_batch, sample_images
    assert se_hub_cli.main(['push', 'se_tf_efficientnet_lite0.tf_in1k', 'me/lite0-timm', '--as-timm']) == 0
    config = json.loads(hub.files('me/lite0-timm')['config.json'])
    ours = timm.create_model('se_tf_efficientnet_lite0.tf_in1k', pretrained=True).eval()
    assert config['architecture'] == 'tf_efficientnet_lite0'
    assert config['pretrained_cfg']['tag'] == 'tf_in1k'
    assert config['pretrained_cfg']['license'] == ours.pretrained_cfg['license']
    theirs = timm.create_model('hf-hub:me/lite0-timm', pretrained=True).eval()
    assert type(theirs).__module__.startswith('timm.')
    batch = photo_batch({'preprocessing': export_data_config(ours)}, sample_images()[1][:2])
    with torch.no_grad():
        torch.testing.assert_close(theirs(batch), ours(batch), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('how', ['torch.hub', 'entrypoint'])
def test_se_free_model_built_with_none_reloads(how, tmp_path):
    """se_layer=None (no SE) through torch.hub or the entrypoint is recorded so that the export rebuilds the
    SE-free network (timm drops None-valued model args, which would rebuild the default SE network)."""
    model = build(how, 'se_resnet18b', num_classes=3, se_layer=None)
    reference = build('create_model', 'se_resnet18b', num_classes=3, se_layer='none')
    assert sorted(model.state_dict()) == sorted(reference.state_dict())  # it is the SE-free network
    save_pretrained(model, tmp_path / 'export')
    reloaded = _compat.create_model(f'local-dir:{tmp_path / "export"}', pretrained=True)
    torch.testing.assert_close(logits(reloaded), logits(model))


@pytest.mark.parametrize('umask', [0o022, 0o002])
def test_export_files_follow_the_umask(umask, tmp_path):
    """safetensors writes model.safetensors 0o600: another user reading a shared run directory got 'Permission
    denied'. Every exported file gets the mode the umask gives new files, as a plain open() would."""
    code = ('import os, sys, timm\nfrom se_hub.hub import save_pretrained\n'
            f'os.umask({umask})\n'
            f"save_pretrained(timm.create_model('se_resnet20_cifar', layers=(1, 1, 1)), sys.argv[1])\n"
            f"open(os.path.join(sys.argv[1], 'reference'), 'w').close()\n")
    run = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'export')], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert run.returncode == 0, run.stderr
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / 'export').iterdir()}
    assert set(modes) == {'config.json', 'model.safetensors', 'README.md', 'reference'}
    assert set(modes.values()) == {modes['reference']} == {0o666 & ~umask}, {k: oct(v) for k, v in modes.items()}
