"""A full disk, on a real small file system (a tmpfs mounted here; skipped where mounting is not
allowed): a checkpoint save and the export at the end of fine-tuning both fail with one message,
"the disk is full, could not write PATH; the previous PATH is intact", keep the previous file, and
leave no temporary file behind. (/dev/full, the ``full_disk`` fixture, fails every write at once; a
real file system fills in the middle of a file, where torch's zip writer reports a RuntimeError
about stream positions and safetensors an error that names no file.)
"""
import os
import re
import shutil
import subprocess

import pytest
import torch
from test_finetune_classification import FAST, MODEL, make_folders, sha

from se_hub.files import FileWriteError, save_atomic
from se_hub.tasks import checkpoints
from se_hub.tasks.classification import finetune
from se_hub.tasks.output_lock import LOCK_NAME

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture
def small_filesystem(tmp_path):
    """``mount(size)``: a fresh tmpfs of ``size`` (e.g. '1m'), unmounted after the test."""
    mounted = []

    def mount(size: str):
        where = tmp_path / f'tmpfs-{len(mounted)}'
        where.mkdir()
        if not shutil.which('mount'):
            pytest.skip('no mount command: the full-disk case needs a real small file system')
        run = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(where)],
                             capture_output=True, text=True)
        if run.returncode:
            pytest.skip(f'cannot mount a tmpfs here ({run.stderr.strip() or "not allowed"}): the full-disk case '
                        'needs a real small file system (root on CI)')
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(['umount', '-l', str(where)], capture_output=True)


def fill(directory, leave: int = 0):
    """Fill the file system of ``directory`` up to ``leave`` free bytes (one filler file)."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    with open(directory / 'filler', 'ab') as f:
        try:
            f.write(b'\0' * max(0, free - leave))
        except OSError:  # the last block: full is full
            pass


def full_message(path):
    path = re.escape(str(path))
    return rf'^the disk is full, could not write {path}; the previous {path} is intact \(free some space'


@pytest.mark.parametrize('leave', [0, 100_000], ids=['nothing-free', 'part-of-the-file-fits'])
def test_checkpoint_save_on_a_full_filesystem(small_filesystem, leave):
    """torch.save into a 1 MiB tmpfs: with nothing free the OSError comes when the file is closed, with
    part of the file fitting torch raises ``[enforce fail at inline_container.cc] unexpected pos``."""
    fs = small_filesystem('1m')
    last = fs / 'last.pth'
    save_atomic({'weights': torch.arange(20_000.)}, last)  # 80 kB
    before = last.read_bytes()
    fill(fs, leave)
    with pytest.raises(FileWriteError, match=full_message(last)) as e:
        save_atomic({'weights': torch.randn(200_000)}, last)  # 800 kB
    assert e.value.errno == 28
    assert last.read_bytes() == before and torch.equal(checkpoints.load(last)['weights'], torch.arange(20_000.))
    assert sorted(p.name for p in fs.iterdir()) == ['filler', 'last.pth']  # no temporary file


def test_finetune_checkpoint_and_export_on_a_full_filesystem(small_filesystem, tmp_path, monkeypatch):
    """A real run in a 16 MiB tmpfs. Resumed with the disk nearly full: the checkpoint of the next epoch
    does not fit. Then with room for the checkpoint but the disk filled as the export starts: the export at
    the end of training does not fit. Each time the previous file is intact and nothing temporary is left;
    with room again the run completes."""
    import se_hub.hub
    data = make_folders(tmp_path / 'data', n_train=4, n_val=2)
    out = small_filesystem('16m') / 'run'
    finetune(MODEL, data, epochs=1, output=out, **FAST)
    files = {p.name: sha(p) for p in out.iterdir()}
    assert {'last.pth', 'model.safetensors', 'config.json', 'README.md'} <= set(files)

    # a checkpoint: room for metrics.jsonl and curves.png (rewritten on resume), not for a checkpoint (3.4 MB;
    # the resume first copies last.pth to best.pth when the last epoch was the best)
    fill(out.parent, leave=200_000)
    with pytest.raises(FileWriteError) as e:
        finetune(MODEL, data, epochs=2, output=out, resume=True, **FAST)
    assert any(re.match(full_message(out / name), str(e.value)) for name in ('last.pth', 'best.pth')), e.value
    for name in ('last.pth', 'best.pth'):
        assert sha(out / name) == files[name] and checkpoints.load(out / name)['epoch'] == 1
    assert not [p.name for p in out.iterdir() if p.name.startswith('.') and p.name != LOCK_NAME]
    (out.parent / 'filler').unlink()

    # the export: the disk fills just before it (another process's file)
    real_save = se_hub.hub.save_pretrained

    def save_on_a_full_disk(*args, **kwargs):
        fill(out.parent)
        return real_save(*args, **kwargs)
    monkeypatch.setattr(se_hub.hub, 'save_pretrained', save_on_a_full_disk)
    with pytest.raises(FileWriteError, match=full_message(out / 'model.safetensors')):
        finetune(MODEL, data, epochs=2, output=out, resume=True, **FAST)
    assert checkpoints.load(out / 'last.pth')['epoch'] == 2  # the epoch itself was saved
    for name in ('model.safetensors', 'config.json', 'README.md'):
        assert sha(out / name) == files[name], name
    assert not [p.name for p in out.iterdir() if p.name.startswith('.') and p.name != LOCK_NAME]

    monkeypatch.setattr(se_hub.hub, 'save_pretrained', real_save)
    (out.parent / 'filler').unlink()
    result = finetune(MODEL, data, epochs=3, output=out, resume=True, **FAST)
    assert [r['epoch'] for r in result.history] == [1, 2, 3] and sha(out / 'model.safetensors') != files[
        'model.safetensors']
