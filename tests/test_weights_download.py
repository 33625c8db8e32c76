"""Pretrained weights end to end with the real huggingface_hub client and torch.hub's
downloader against a Hub look-alike on 127.0.0.1 (tests/hub_server.py): resolve, download,
verify, convert and load through timm.create_model; cache hits, offline mode, damaged files,
missing repos / revisions / files, URL sources with hash prefixes, two processes at once,
publishing and reloading."""
import io
import json
import subprocess
import sys
from pathlib import Path

import local_only
import pytest
import timm
import torch
from hub_server import fresh_request_sessions, point_client_at
from safetensors.torch import save

import se_hub
import se_hub.hub
import se_hub_cli
from _helpers import randomize_batchnorm
from se_hub.weights.manifest import find_weights
from se_hub.weights.sources import CorruptWeightsError, WeightsUnavailableError, resolve_weight_file

REPO = Path(__file__).resolve().parents[1]
MODEL, TAG = 'se_resnext26d_32x4d', 'bt_in1k'  # Hub source timm/seresnext26d_32x4d.bt_in1k (16.8M params)
HUB_REPO = 'timm/seresnext26d_32x4d.bt_in1k'
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope='module')
def upstream():
    """What timm's published file holds: timm's seresnext26d_32x4d with some trained-looking state."""
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model('seresnext26d_32x4d'), calibrate_on=X)
    blob = save({k: v.contiguous() for k, v in model.state_dict().items()})
    return model, blob


@pytest.fixture
def hub(local_hub, monkeypatch, tmp_path):
    """The local Hub, with huggingface_hub, timm and se_hub all pointed at it, fresh caches."""
    cache = tmp_path / 'hf'
    point_client_at(monkeypatch, local_hub.endpoint, cache)
    monkeypatch.setenv('HF_ENDPOINT', local_hub.endpoint)
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_OFFLINE', '0')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    torch.hub.set_dir(str(tmp_path / 'torch' / 'hub'))
    local_hub.cache = cache
    return local_hub


def gets(hub):
    return [p for m, p in hub.requests if m == 'GET' and '/resolve/' in p]


def logits(model):
    with torch.no_grad():
        return model.eval()(X)


def go_offline(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    fresh_request_sessions(monkeypatch)  # huggingface_hub < 1.0 would go on with its online session


def test_pretrained_downloads_verifies_and_loads(hub, upstream):
    ref, blob = upstream
    hub.add_file(HUB_REPO, 'model.safetensors', blob)
    model = timm.create_model(f'{MODEL}.{TAG}', pretrained=True)
    torch.testing.assert_close(logits(model), logits(ref), atol=1e-4, rtol=0)
    assert model.loaded_weights == f'{MODEL}.{TAG}' and 'state_dict' not in model.pretrained_cfg
    assert len(gets(hub)) == 1
    # second time: from the cache, no download
    timm.create_model(f'{MODEL}.{TAG}', pretrained=True)
    assert len(gets(hub)) == 1


def test_new_head_and_in_chans_are_adapted(hub, upstream):
    ref, blob = upstream
    hub.add_file(HUB_REPO, 'model.safetensors', blob)
    model = timm.create_model(f'{MODEL}.{TAG}', pretrained=True, num_classes=10).eval()
    assert model.fc.out_features == 10
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(X), ref.eval().forward_features(X), atol=1e-4, rtol=0)
    gray = timm.create_model(f'{MODEL}.{TAG}', pretrained=True, in_chans=1)
    torch.testing.assert_close(gray.conv1[0].weight, ref.conv1[0].weight.sum(1, keepdim=True))


def test_offline_with_filled_cache_works_and_without_says_what_to_do(hub, upstream, monkeypatch):
    ref, blob = upstream
    hub.add_file(HUB_REPO, 'model.safetensors', blob)
    se_hub_cli.main(['download', f'{MODEL}.{TAG}', '--quiet'])
    go_offline(monkeypatch)
    requests_before = len(hub.requests)
    model = timm.create_model(f'{MODEL}.{TAG}', pretrained=True)
    torch.testing.assert_close(logits(model), logits(ref), atol=1e-4, rtol=0)
    assert len(hub.requests) == requests_before
    with pytest.raises(WeightsUnavailableError, match=r'se_resnet50b.ra2_in1k.*timm/seresnet50.ra2_in1k/model'
                                                      r'.safetensors.*HF_HUB_OFFLINE.*se-hub download'):
        timm.create_model('se_resnet50b.ra2_in1k', pretrained=True)


def test_damaged_download_is_detected_removed_and_fetched_again(hub, upstream):
    ref, blob = upstream
    hub.add_file(HUB_REPO, 'model.safetensors', blob)
    damaged = bytearray(blob)
    damaged[len(damaged) // 2] ^= 0xFF  # same size: huggingface_hub itself checks only the size
    hub.set_served_bytes(HUB_REPO, 'model.safetensors', bytes(damaged))
    with pytest.raises(CorruptWeightsError, match=r'model.safetensors is damaged: sha256 .*removed from the cache'):
        timm.create_model(f'{MODEL}.{TAG}', pretrained=True)
    assert not [p for p in hub.cache.rglob('*') if p.is_file() and p.parent.name == 'blobs']
    hub.set_served_bytes(HUB_REPO, 'model.safetensors', blob)
    model = timm.create_model(f'{MODEL}.{TAG}', pretrained=True)
    torch.testing.assert_close(logits(model), logits(ref), atol=1e-4, rtol=0)


def test_truncated_download_never_reaches_the_cache(hub, upstream):
    _, blob = upstream
    hub.add_file(HUB_REPO, 'model.safetensors', blob)
    hub.set_served_bytes(HUB_REPO, 'model.safetensors', blob[: len(blob) // 3])
    with pytest.raises(WeightsUnavailableError, match='could not download the weights of se_resnext26d_32x4d.bt_in1k'):
        timm.create_model(f'{MODEL}.{TAG}', pretrained=True)
    # no blob (huggingface_hub < 1.0 keeps the partial body as blobs/<sha256>.incomplete to resume from)
    assert not [p for p in hub.cache.rglob('*') if p.parent.name == 'blobs' and p.suffix != '.incomplete']


def _entry(**source):
    return dict(model='se_resnet18b', tag='test', sources=[source], sha256=None)


@pytest.mark.parametrize('source,error', [
    (dict(kind='hf_hub', repo_id='me/missing', filename='model.safetensors'), 'RepositoryNotFoundError'),
    (dict(kind='hf_hub', repo_id='me/weights', filename='model.safetensors', revision='v9'), 'RevisionNotFoundError'),
    (dict(kind='hf_hub', repo_id='me/weights', filename='other.safetensors'), 'EntryNotFoundError'),
])
def test_missing_repo_revision_or_file_is_named(hub, source, error):
    hub.add_file('me/weights', 'model.safetensors', b'x' * 10)
    with pytest.raises(WeightsUnavailableError, match=rf"could not download .*{source['repo_id']}.*{error}"):
        resolve_weight_file(_entry(**source), progress=False)


def test_url_source_checks_the_hash_prefix(hub, tmp_path):
    import hashlib
    data = b'weights' * 1000
    prefix = hashlib.sha256(data).hexdigest()[:8]
    hub.add_file('files/release', f'w-{prefix}.pth', data)
    url = f'{hub.endpoint}/files/release/resolve/main/w-{prefix}.pth'
    path = resolve_weight_file(_entry(kind='url', url=url, hash_prefix=prefix), progress=False)
    assert path.read_bytes() == data and path.parent == Path(torch.hub.get_dir()) / 'checkpoints'
    hub.add_file('files/release', 'w-deadbeef.pth', data)
    bad = f'{hub.endpoint}/files/release/resolve/main/w-deadbeef.pth'
    with pytest.raises(WeightsUnavailableError, match='invalid hash value'):
        resolve_weight_file(_entry(kind='url', url=bad, hash_prefix='deadbeef'), progress=False)
    assert not (Path(torch.hub.get_dir()) / 'checkpoints' / 'w-deadbeef.pth').exists()


def _env(hub):
    """For a subprocess that downloads from the local hub, with the loopback-only guard (tests/local_only.py)."""
    return local_only.subprocess_env([REPO], HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(hub.cache), HF_HUB_OFFLINE='0',
                                     HF_HUB_DISABLE_TELEMETRY='1')


def test_two_processes_fetch_the_same_file(hub, upstream):
    _, blob = upstream
    hub.add_file(HUB_REPO, 'model.safetensors', blob)
    code = ('from se_hub.weights.manifest import find_weights; from se_hub.weights.sources import '
            f'resolve_weight_file; print(resolve_weight_file(find_weights("{MODEL}", "{TAG}")[0], progress=False))')
    procs = [subprocess.Popen([sys.executable, '-c', code], env=_env(hub), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    paths = {o[0].strip() for o in outs}
    assert len(paths) == 1 and Path(paths.pop()).read_bytes() == blob


def test_cli_download_verify_and_damage_on_disk(hub, upstream):
    _, blob = upstream
    hub.add_file(HUB_REPO, 'model.safetensors', blob)
    run = lambda *a: subprocess.run([sys.executable, '-m', 'se_hub_cli', *a], env=_env(hub),  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    got = run('download', f'{MODEL}.{TAG}', '--quiet')
    assert got.returncode == 0, got.stderr
    path = Path(got.stdout.split(': ', 1)[1].strip())
    ok = run('verify')
    assert ok.returncode == 0 and f'{MODEL}.{TAG}  {path}  ok' in ok.stdout and ', 0 damaged' in ok.stdout
    real = path.resolve()
    real.chmod(0o644)
    data = bytearray(real.read_bytes())
    data[100] ^= 0xFF
    real.write_bytes(bytes(data))
    bad = run('verify')
    assert bad.returncode == 1 and 'DAMAGED' in bad.stdout and not real.exists()
    unknown = run('download', 'se_resnet50_r2')
    assert unknown.returncode == 1 and unknown.stderr.startswith('se-hub: error: se_resnet50_r2 has no published')
    assert 'Traceback' not in unknown.stderr


def test_push_to_hub_and_reload(hub):
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model('se_resnet18b', num_classes=3, se_layer='eca'), calibrate_on=X)
    url = se_hub.push_to_hub(model, 'me/se-test', label_names=['cat', 'dog', 'fox'],
                             metrics=[dict(dataset='toy', top1=99.0, provenance='measured by se_hub', reference='t')])
    assert 'me/se-test' in url
    files = hub.files('me/se-test')
    assert set(files) >= {'config.json', 'model.safetensors', 'README.md'}
    config = json.loads(files['config.json'])
    assert config['architecture'] == 'se_resnet18b' and config['label_names'] == ['cat', 'dog', 'fox']
    assert config['model_args']['se_layer'] == 'eca'
    card = files['README.md'].decode()
    assert '| toy | 99.0 |' in card and 'architecture arguments' in card and 'Squeeze-and-Excitation' in card
    reloaded = timm.create_model('hf-hub:me/se-test', pretrained=True)
    torch.testing.assert_close(logits(reloaded), logits(model))
    assert reloaded.pretrained_cfg['label_names'] == ['cat', 'dog', 'fox']


def test_non_serialisable_model_args_are_refused(hub):
    from functools import partial

    from se_hub.layers import SqueezeExcite
    model = timm.create_model('se_resnet18b', se_layer=partial(SqueezeExcite, rd_ratio=0.5))
    with pytest.raises(ValueError, match="'se_layer' is not serializable"):
        se_hub.push_to_hub(model, 'me/bad')


def test_pickle_with_code_is_refused_on_the_pretrained_path(hub, monkeypatch):
    class Payload:
        def __reduce__(self):
            return (print, ('pwned',))

    buffer = io.BytesIO()
    torch.save({'conv1.weight': Payload()}, buffer)
    hub.add_file('me/evil', 'pytorch_model.bin', buffer.getvalue())
    entry = dict(find_weights(MODEL, TAG)[0], sources=[dict(kind='hf_hub', repo_id='me/evil',
                                                             filename='pytorch_model.bin')])
    monkeypatch.setattr('se_hub.weights.pretrained.find_weights', lambda model, tag: (entry, TAG))
    with pytest.raises(se_hub.CheckpointLayoutError, match='never unpickles code'):
        timm.create_model(f'{MODEL}.{TAG}', pretrained=True)


def test_cli_push_publishes_a_saved_directory(hub, tmp_path):
    model = timm.create_model('se_resnet18b', num_classes=2)
    se_hub.hub.save_pretrained(model, tmp_path / 'export', label_names=['no', 'yes'])
    result = subprocess.run([sys.executable, '-m', 'se_hub_cli', 'push', str(tmp_path / 'export'), 'me/from-cli'],
                            env=_env(hub), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    files = hub.files('me/from-cli')
    assert json.loads(files['config.json'])['label_names'] == ['no', 'yes']
    reloaded = timm.create_model('hf-hub:me/from-cli', pretrained=True)
    torch.testing.assert_close(logits(reloaded), logits(model))


def test_offline_hub_repo_with_config_but_no_weights_says_which(hub, monkeypatch):
    """Offline, an hf-hub: repo whose config.json is cached but whose weights are not: the error names the repo,
    the file and offline mode (huggingface_hub's own says only 'check your connection')."""
    from huggingface_hub import hf_hub_download
    model = timm.create_model('se_resnet18b', num_classes=3)
    se_hub.push_to_hub(model, 'me/half-cached')
    hf_hub_download('me/half-cached', 'config.json', cache_dir=str(hub.cache))
    go_offline(monkeypatch)
    with pytest.raises(WeightsUnavailableError) as caught:
        timm.create_model('hf-hub:me/half-cached', pretrained=True)
    message = str(caught.value)
    assert message.startswith('hf-hub:me/half-cached: its weights (model.safetensors or pytorch_model.bin) are '
                              f'not in the local Hugging Face cache ({hub.cache}) and HF_HUB_OFFLINE is set'), message
    assert len(message.splitlines()) == 1


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 128 MiB tmpfs at tmp_path/fs that the test can remount read-only (root, where mounting is allowed)."""
    mount = tmp_path / 'fs'
    mount.mkdir()
    made = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=128m', 'tmpfs', str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs here (needs root where mounting is allowed): {made.stderr.strip()}')
    try:
        yield mount
    finally:
        subprocess.run(['umount', str(mount)], check=True)


def test_damaged_file_in_a_read_only_cache_is_reported_damaged(hub, upstream, small_filesystem):
    """The damaged file cannot be removed from a read-only cache: it is still reported as damaged (not as
    '[Errno 30] Read-only file system'), and `se-hub verify` goes on to the other cached files."""
    _, blob = upstream
    hub.add_file(HUB_REPO, 'model.safetensors', blob)
    env = dict(_env(hub), HF_HUB_CACHE=str(small_filesystem / 'hf'))
    run = lambda *a: subprocess.run([sys.executable, '-m', 'se_hub_cli', *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    got = run('download', f'{MODEL}.{TAG}', '--quiet')
    assert got.returncode == 0, got.stderr
    path = Path(got.stdout.split(': ', 1)[1].strip())
    real = path.resolve()
    real.chmod(0o644)
    data = bytearray(real.read_bytes())
    data[100] ^= 0xFF
    real.write_bytes(bytes(data))
    subprocess.run(['mount', '-o', 'remount,ro', str(small_filesystem)], check=True)
    bad = run('verify')
    lines = bad.stdout.splitlines()
    damaged = [line for line in lines if line.startswith(f'{MODEL}.{TAG}  {path}  DAMAGED: ')]
    assert bad.returncode == 1 and len(damaged) == 1, bad.stdout + bad.stderr
    assert 'is damaged' in damaged[0] and 'could not be removed from the cache: Read-only file system' in damaged[0]
    assert real.exists() and 'Traceback' not in bad.stderr
    checked = int(lines[-1].split()[0])
    assert lines[-1] == f'{checked} cached file(s) checked, 1 damaged' and checked > 1  # it went on
    loaded = subprocess.run([sys.executable, '-c', f'import timm, se_hub; timm.create_model("{MODEL}.{TAG}", '
                             'pretrained=True)'], env=env, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 1 and 'CorruptWeightsError' in loaded.stderr and 'is damaged' in loaded.stderr
