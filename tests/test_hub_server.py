"""tests/hub_server.py works with the real huggingface_hub client and with timm's Hub functions."""
import hashlib
import json
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from hub_server import LocalHub, allow_downloads, point_client_at
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.utils import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError  # .errors: >= 0.24

REPO = 'timm/seresnet50.ra2_in1k'
WEIGHTS = bytes(range(256)) * 40


@pytest.fixture
def online(local_hub, monkeypatch):
    """tests/conftest.py puts huggingface_hub offline for the session: lift that for one test, with
    the default endpoint on the local hub too, so that a request that ignored ``endpoint=`` would
    show up in ``local_hub.requests`` (the tests below assert exact request lists)."""
    assert constants.HF_HUB_OFFLINE, 'conftest.py should have put huggingface_hub offline'
    point_client_at(monkeypatch, local_hub.endpoint)


@pytest.fixture
def trap():
    """A second hub that must never be asked anything."""
    hub = LocalHub()
    yield hub
    hub.stop()


def use_default_endpoint(monkeypatch, endpoint):
    """ENDPOINT and the URL template go together: hf_hub_url() swaps in endpoint= only where the
    formatted template starts with constants.ENDPOINT, else the URL stays on huggingface.co."""
    monkeypatch.setattr(constants, 'ENDPOINT', endpoint)
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', endpoint + '/{repo_id}/resolve/{revision}/{filename}')


def download(hub, tmp_path, filename='model.safetensors', repo_id=REPO, **kwargs):
    return hf_hub_download(repo_id, filename, endpoint=hub.endpoint, cache_dir=tmp_path, **kwargs)


HF_BEFORE_1 = int(huggingface_hub.__version__.split('.')[0]) < 1


def blobs(tmp_path, repo_id=REPO):
    folder = tmp_path / ('models--' + repo_id.replace('/', '--')) / 'blobs'
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_offline_by_default_never_reaches_the_server(local_hub, tmp_path):
    local_hub.add_file(REPO, 'model.safetensors', WEIGHTS)
    with pytest.raises(huggingface_hub.utils.LocalEntryNotFoundError):
        download(local_hub, tmp_path)
    assert local_hub.requests == []


def test_explicit_arguments_need_only_allow_downloads(local_hub, trap, tmp_path, monkeypatch):
    """endpoint= and cache_dir= on every call + allow_downloads(): nothing goes to constants.ENDPOINT."""
    allow_downloads(monkeypatch)
    use_default_endpoint(monkeypatch, trap.endpoint)
    local_hub.add_file(REPO, 'model.safetensors', WEIGHTS)
    assert Path(download(local_hub, tmp_path)).read_bytes() == WEIGHTS
    snapshot_download(REPO, endpoint=local_hub.endpoint, cache_dir=tmp_path)
    api = HfApi(endpoint=local_hub.endpoint)
    api.create_repo('se-hub-test/explicit')
    api.upload_file(path_or_fileobj=b'x', path_in_repo='x.txt', repo_id='se-hub-test/explicit')
    assert local_hub.files('se-hub-test/explicit') == {'x.txt': b'x'}
    assert trap.requests == []


def test_agent_detection_fetches_from_the_default_endpoint(local_hub, trap, tmp_path, monkeypatch):
    """Why allow_downloads() disables telemetry and empties the agent registry: without that, the first
    online request of the process also asks constants.ENDPOINT (huggingface.co by default) for
    /api/agent-harnesses. (conftest.py's HF_HUB_DISABLE_TELEMETRY=1 avoids it too, unless the
    environment already had HF_HUB_DISABLE_TELEMETRY=0.)"""
    detect_agent = pytest.importorskip('huggingface_hub.utils._detect_agent')
    monkeypatch.setattr(constants, 'HF_HUB_DISABLE_TELEMETRY', False)
    monkeypatch.setattr(detect_agent, '_registry', None)
    monkeypatch.setattr(constants, 'AGENT_HARNESSES_PATH', str(tmp_path / 'agent_harnesses.json'))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    use_default_endpoint(monkeypatch, trap.endpoint)
    local_hub.add_file(REPO, 'model.safetensors', WEIGHTS)
    download(local_hub, tmp_path)
    assert trap.requests == [('GET', '/api/agent-harnesses')]
    assert [m for m, _ in local_hub.requests] == ['HEAD', 'GET']


def test_download_then_cache_hit(local_hub, tmp_path, online):
    sha = local_hub.add_file(REPO, 'model.safetensors', WEIGHTS)
    assert len(sha) == 40 and int(sha, 16) >= 0
    path = Path(download(local_hub, tmp_path))
    assert path.read_bytes() == WEIGHTS
    assert path.parent.name == sha  # snapshots/<commit sha>/model.safetensors
    assert blobs(tmp_path) == [hashlib.sha256(WEIGHTS).hexdigest()]
    assert local_hub.requests == [('HEAD', f'/{REPO}/resolve/main/model.safetensors'),
                                  ('GET', f'/{REPO}/resolve/main/model.safetensors')]
    assert download(local_hub, tmp_path) == str(path)
    assert [m for m, _ in local_hub.requests] == ['HEAD', 'GET', 'HEAD']  # second call: no GET


def test_revisions_branch_pr_ref_and_commit_sha(local_hub, tmp_path, online):
    first = local_hub.add_file(REPO, 'model.safetensors', b'v1')
    second = local_hub.add_file(REPO, 'model.safetensors', b'v2')
    pr = local_hub.add_file(REPO, 'model.safetensors', b'pr', revision='refs/pr/1')
    assert len({first, second, pr}) == 3
    assert Path(download(local_hub, tmp_path)).read_bytes() == b'v2'
    assert Path(download(local_hub, tmp_path, revision=first)).read_bytes() == b'v1'
    assert Path(download(local_hub, tmp_path, revision='refs/pr/1')).read_bytes() == b'pr'
    assert ('HEAD', f'/{REPO}/resolve/refs%2Fpr%2F1/model.safetensors') in local_hub.requests
    assert local_hub.files(REPO) == {'model.safetensors': b'v2'}
    assert local_hub.files(REPO, first) == {'model.safetensors': b'v1'}


def test_errors_map_to_the_client_exceptions(local_hub, tmp_path, online):
    local_hub.add_file(REPO, 'model.safetensors', WEIGHTS)
    with pytest.raises(RevisionNotFoundError):
        download(local_hub, tmp_path, revision='no-such-branch')
    with pytest.raises(EntryNotFoundError):
        download(local_hub, tmp_path, filename='pytorch_model.bin')
    with pytest.raises(RepositoryNotFoundError):  # from the X-Error-Code header alone, no auth needed
        download(local_hub, tmp_path, repo_id='timm/no-such-model')
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=local_hub.endpoint).model_info('timm/no-such-model')
    # the client caches the missing entry under .no_exist/<commit> as on the Hub
    assert list((tmp_path / 'models--timm--seresnet50.ra2_in1k' / '.no_exist').rglob('pytorch_model.bin'))


def test_model_info_tree_and_snapshot_download(local_hub, tmp_path, online):
    local_hub.add_file(REPO, 'config.json', b'{"architecture": "seresnet50"}')
    sha = local_hub.add_file(REPO, 'sub/dir/model.safetensors', WEIGHTS)
    api = HfApi(endpoint=local_hub.endpoint)
    info = api.model_info(REPO)
    assert (info.id, info.sha) == (REPO, sha)
    assert sorted(s.rfilename for s in info.siblings) == ['config.json', 'sub/dir/model.safetensors']
    info = api.model_info(REPO, revision=sha, files_metadata=True)
    assert {s.rfilename: s.size for s in info.siblings}['sub/dir/model.safetensors'] == len(WEIGHTS)
    assert sorted(f.path for f in api.list_repo_tree(REPO)) == ['config.json', 'sub']
    assert api.file_exists(REPO, 'config.json') and not api.file_exists(REPO, 'nope.json')
    folder = Path(snapshot_download(REPO, endpoint=local_hub.endpoint, cache_dir=tmp_path))
    assert folder.name == sha
    assert (folder / 'sub/dir/model.safetensors').read_bytes() == WEIGHTS
    assert json.loads((folder / 'config.json').read_text()) == {'architecture': 'seresnet50'}
    if not HF_BEFORE_1:  # older clients list a snapshot from model_info's siblings, not the tree
        assert ('GET', f'/api/models/{REPO}/tree/{sha}') in local_hub.requests


def test_truncated_download_raises_and_leaves_no_blob(local_hub, tmp_path, online):
    """huggingface_hub checks the size of what GET returned against the HEAD answer."""
    local_hub.add_file(REPO, 'model.safetensors', WEIGHTS)
    local_hub.set_served_bytes(REPO, 'model.safetensors', WEIGHTS[:-100])
    with pytest.raises(OSError, match='Consistency check failed'):
        download(local_hub, tmp_path)
    # no blob; 2.4.0 leaves no *.incomplete either, while huggingface_hub < 1.0 (requests) keeps the
    # partial body as blobs/<sha256>.incomplete to resume from
    partial = ('.incomplete',) if HF_BEFORE_1 else ()
    assert [b for b in blobs(tmp_path) if not b.endswith(partial)] == []
    assert not list(tmp_path.rglob('model.safetensors'))
    local_hub.set_served_bytes(REPO, 'model.safetensors', WEIGHTS)  # the network heals: a retry works
    assert Path(download(local_hub, tmp_path)).read_bytes() == WEIGHTS


def test_same_size_corruption_is_not_detected_by_huggingface_hub(local_hub, tmp_path, online):
    """It never hashes a download: a same-size corrupt body lands in the cache under the good sha256."""
    local_hub.add_file(REPO, 'model.safetensors', WEIGHTS)
    corrupt = bytes(reversed(WEIGHTS))
    local_hub.set_served_bytes(REPO, 'model.safetensors', corrupt)
    path = Path(download(local_hub, tmp_path))
    assert path.read_bytes() == corrupt
    assert blobs(tmp_path) == [hashlib.sha256(WEIGHTS).hexdigest()]
    assert hashlib.sha256(path.read_bytes()).hexdigest() != blobs(tmp_path)[0]


def test_create_repo_upload_folder_and_download_back(local_hub, tmp_path, online):
    api = HfApi(endpoint=local_hub.endpoint)
    url = api.create_repo('se-hub-test/uploaded')
    assert url.repo_id == 'se-hub-test/uploaded'
    assert api.create_repo('se-hub-test/uploaded', exist_ok=True).repo_id == 'se-hub-test/uploaded'
    with pytest.raises(huggingface_hub.utils.HfHubHTTPError):
        api.create_repo('se-hub-test/uploaded')
    src = tmp_path / 'src'
    (src / 'nested').mkdir(parents=True)
    (src / 'README.md').write_text('---\nlicense: apache-2.0\n---\n# uploaded\n')
    (src / 'nested' / 'weights.bin').write_bytes(WEIGHTS)
    commit = api.upload_folder(repo_id='se-hub-test/uploaded', folder_path=src, commit_message='upload')
    assert local_hub.files('se-hub-test/uploaded') == {'README.md': (src / 'README.md').read_bytes(),
                                                       'nested/weights.bin': WEIGHTS}
    assert commit.oid == api.model_info('se-hub-test/uploaded').sha
    api.upload_file(path_or_fileobj=b'extra', path_in_repo='extra.txt', repo_id='se-hub-test/uploaded')
    assert set(local_hub.files('se-hub-test/uploaded')) == {'README.md', 'nested/weights.bin', 'extra.txt'}
    path = download(local_hub, tmp_path / 'cache', 'nested/weights.bin', repo_id='se-hub-test/uploaded')
    assert Path(path).read_bytes() == WEIGHTS
    assert ('POST', '/api/validate-yaml') in local_hub.requests


def test_pull_request_commits_and_deletions(local_hub, tmp_path, online):
    api = HfApi(endpoint=local_hub.endpoint)
    api.create_repo('se-hub-test/pr')
    first = api.upload_file(path_or_fileobj=b'a', path_in_repo='d/a.txt', repo_id='se-hub-test/pr')
    pr = api.upload_file(path_or_fileobj=b'b', path_in_repo='b.txt', repo_id='se-hub-test/pr', create_pr=True)
    assert pr.pr_revision == 'refs/pr/1'
    assert local_hub.files('se-hub-test/pr', 'refs/pr/1') == {'d/a.txt': b'a', 'b.txt': b'b'}
    path = download(local_hub, tmp_path, 'b.txt', repo_id='se-hub-test/pr', revision=pr.pr_revision)
    assert Path(path).read_bytes() == b'b'
    api.delete_folder('d', repo_id='se-hub-test/pr')
    assert local_hub.files('se-hub-test/pr') == {}
    with pytest.raises(huggingface_hub.utils.HfHubHTTPError, match='412'):  # parent is no longer the head
        api.upload_file(path_or_fileobj=b'c', path_in_repo='c.txt', repo_id='se-hub-test/pr', parent_commit=first.oid)


def test_timm_push_to_hf_hub_then_create_model_from_it(local_hub, tmp_path, monkeypatch):
    """timm passes no endpoint/cache_dir: the recipe of point_client_at is what makes it work."""
    point_client_at(monkeypatch, local_hub.endpoint, cache_dir=tmp_path / 'hf-cache')
    torch.manual_seed(0)
    model = timm.create_model('resnet10t', num_classes=3).eval()
    repo_id = 'se-hub-test/resnet10t-tiny'
    timm.models.push_to_hf_hub(model, repo_id, safe_serialization=True)
    assert {'config.json', 'model.safetensors', 'README.md'} <= set(local_hub.files(repo_id))
    loaded = timm.create_model('hf-hub:' + repo_id, pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert ('GET', f'/{repo_id}/resolve/main/model.safetensors') in local_hub.requests
    assert list((tmp_path / 'hf-cache').glob('models--se-hub-test--resnet10t-tiny/snapshots/*/model.safetensors'))


def test_tests_cannot_open_connections_beyond_this_machine(local_hub):
    """conftest.py refuses every in-process connection that is not to this machine."""
    import socket
    with socket.socket() as s, pytest.raises(RuntimeError, match=r'never reach the internet.*203\.0\.113\.7'):
        s.connect(('203.0.113.7', 443))  # TEST-NET-3: refused before any packet leaves
    with socket.socket() as s, pytest.raises(RuntimeError, match='never reach the internet.*huggingface.co'):
        s.connect_ex(('huggingface.co', 443))
    host, port = local_hub.endpoint.split('//')[1].split(':')
    with socket.create_connection((host, int(port)), timeout=10):  # loopback: allowed
        pass
