"""What a killed process leaves behind is cleaned by the next run, never what a live one is writing: Hub
downloads (``blobs/*.incomplete``), URL downloads (``*.partial``) and export work folders
(``OUT/.se_hub-export-*``). Downloads are real processes, SIGKILLed while the local Hub (tests/hub_server.py)
holds the rest of the file back."""
import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import local_only
import pytest
import timm
import torch
from hub_server import point_client_at

REPO = Path(__file__).resolve().parents[1]
SIZE, AFTER = 2 << 20, 1 << 20  # a 2 MiB file, of which the Hub sends 1 MiB before it hangs


@pytest.fixture
def hub(local_hub, monkeypatch, tmp_path):
    cache = tmp_path / 'hf'
    point_client_at(monkeypatch, local_hub.endpoint, cache)
    for key, value in dict(HF_ENDPOINT=local_hub.endpoint, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE='0',
                           TORCH_HOME=str(tmp_path / 'torch')).items():
        monkeypatch.setenv(key, value)
    torch.hub.set_dir(str(tmp_path / 'torch' / 'hub'))
    local_hub.cache = cache
    yield local_hub
    local_hub.release_stalls()


def _local_only_env() -> dict:
    """The test's environment (the hub fixture's endpoint included) for a subprocess that installs
    tests/local_only.py's guard at start-up: loopback connections only, as in this process."""
    return local_only.subprocess_env([REPO])


@pytest.mark.parametrize('how', ['subprocess_env', 'inherited'])
def test_download_subprocesses_cannot_reach_the_internet(how):
    """A child built with ``subprocess_env``, and one that merely inherits the test's environment (conftest
    puts the guard on PYTHONPATH and forces HF_HUB_OFFLINE=1), is refused a non-local connection."""
    code = ('import os, socket\n'
            'print(os.environ["HF_HUB_OFFLINE"])\n'
            'try:\n    socket.create_connection(("203.0.113.1", 80), timeout=5)\n'
            'except RuntimeError as e:\n    print(type(e).__name__)\n')
    env = _local_only_env() if how == 'subprocess_env' else None
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=60)
    assert run.stdout.split()[-1] == 'InternetAccessError', run.stderr[-2000:]
    if how == 'inherited':
        assert run.stdout.split()[0] == '1'


def _download(source: dict) -> subprocess.Popen:
    code = ('import sys, json\n'
            'from se_hub.weights.sources import resolve_weight_file\n'
            'resolve_weight_file(dict(model="m", tag="t", sha256=None, sources=[json.loads(sys.argv[1])]), '
            'progress=False)\n')
    import json
    return subprocess.Popen([sys.executable, '-c', code, json.dumps(source)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_local_only_env())


def _wait_for(find, proc, what: str):
    deadline = time.time() + 120
    while time.time() < deadline:
        found = find()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f'the download ended before leaving {what}: {proc.stderr.read().decode()[-2000:]}')
        time.sleep(0.05)
    raise AssertionError(f'no {what} after 120 s')


def _kill(proc):
    proc.kill()
    proc.wait(timeout=30)


def _locked(lock_file: Path) -> bool:
    from filelock import FileLock, Timeout
    if not lock_file.exists():
        return False
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def _finish(proc):
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise
    assert proc.returncode == 0, err.decode()[-2000:]


def test_killed_hub_download_is_cleaned_by_the_next_not_a_live_one(hub):
    from se_hub.weights.sources import remove_stale_hub_downloads
    data = os.urandom(SIZE)
    hub.add_file('me/debris', 'model.safetensors', data)
    hub.stall('me/debris', 'model.safetensors', AFTER)
    folder = hub.cache / 'models--me--debris'
    source = dict(kind='hf_hub', repo_id='me/debris', filename='model.safetensors')
    partial = lambda: sorted((folder / 'blobs').glob('*.incomplete')) if (folder / 'blobs').is_dir() else []  # noqa

    killed = _download(source)
    [stale] = _wait_for(partial, killed, 'a partial download')
    _kill(killed)
    assert stale.exists(), 'SIGKILL leaves the partial file'
    etag = stale.name.split('.')[0]
    live = _download(source)
    if stale.name == f'{etag}.incomplete':
        # huggingface_hub < 1.0 names the file after the etag alone and the next download appends to it (a
        # resume, not debris): it is kept, and is the live download's file once that download holds the lock
        _wait_for(lambda: _locked(folder.parent / '.locks' / folder.name / f'{etag}.lock'), live,
                  'a download holding the lock')
        current = stale
    else:  # huggingface_hub >= 1.0: a new name per download; the next run removes the stale file, then hangs
        [current] = _wait_for(lambda: [p for p in partial() if p != stale] if not stale.exists() else [], live,
                              'the stale file removed and a new partial download')
    remove_stale_hub_downloads(folder)  # a third process looking while the live download is under way
    assert current.exists(), "a live download's file was removed"
    hub.release_stalls()
    _finish(live)
    assert partial() == [] and (folder / 'blobs' / hashlib.sha256(data).hexdigest()).read_bytes() == data


def test_killed_url_download_is_cleaned_by_the_next_not_a_live_one(hub):
    from se_hub.weights.sources import remove_stale_url_downloads, url_cache_dir
    data = os.urandom(SIZE)
    hub.add_file('files/release', 'w-debris.pth', data)
    hub.stall('files/release', 'w-debris.pth', AFTER)
    source = dict(kind='url', url=f'{hub.endpoint}/files/release/resolve/main/w-debris.pth')
    target = url_cache_dir() / 'w-debris.pth'
    partial = lambda: sorted(target.parent.glob('w-debris.pth.*.partial')) if target.parent.is_dir() else []  # noqa

    killed = _download(source)
    [stale] = _wait_for(partial, killed, 'a partial download')
    _kill(killed)
    assert stale.exists()
    live = _download(source)
    [current] = _wait_for(lambda: [p for p in partial() if p != stale] if not stale.exists() else [], live,
                          'the stale file removed and a new partial download')
    remove_stale_url_downloads(target)
    assert current.exists(), "a live download's file was removed"
    hub.release_stalls()
    _finish(live)
    assert partial() == [] and target.read_bytes() == data


def test_export_work_folder_of_a_dead_process_is_cleaned_not_a_live_ones(tmp_path):
    from se_hub.hub import save_pretrained
    out = tmp_path / 'out'
    out.mkdir()
    host = socket.gethostname()
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    dead_pid = int(gone.stdout)  # that process has exited: its folder is debris
    alive = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])
    try:
        stale = out / f'.se_hub-export-{host}-{dead_pid}-abc123'
        live = out / f'.se_hub-export-{host}-{alive.pid}-def456'
        other_host = out / f'.se_hub-export-{host}x-{dead_pid}-ghi789'  # pids of another machine are not ours
        for folder in (stale, live, other_host):
            folder.mkdir()
            (folder / 'model.safetensors').write_bytes(b'x' * 1000)
        save_pretrained(timm.create_model('se_resnet20_cifar', layers=(1, 1, 1)), out)
        assert not stale.exists()
        assert (live / 'model.safetensors').exists() and (other_host / 'model.safetensors').exists()
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith('.')) == [
            'README.md', 'config.json', 'model.safetensors']
    finally:
        alive.kill()
        alive.wait()
