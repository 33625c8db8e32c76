"""Files are data, never code: hostile files given to se_hub run nothing, and the error names the file
without advising to load it unsafely. Each hostile file carries a payload that creates a marker file when
unpickled; the marker must not appear."""
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import timm
import torch

REPO = Path(__file__).resolve().parents[1]


class _CreatesMarker:
    """Unpickling this calls ``open(marker, 'w')``: the file appears if the pickle is run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


def _pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _run(*args, cwd=REPO, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE='1')
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
                          **kwargs)


def _rewrite_zip(src: Path, dst: Path, change) -> None:
    """Copy the zip ``src`` to ``dst``, each entry's bytes passed through ``change(name, data)``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
        for info in zin.infolist():
            zout.writestr(info, change(info.filename, zin.read(info.filename)))


def _hostile_pt2(clean: Path, out: Path, marker: Path, where: str) -> None:
    """``clean`` (a real export) with a payload that creates ``marker`` on unpickling: in a weight
    (``where='weight'``) or in the sample inputs (``'sample_inputs'``), in the layout this torch writes."""
    names = zipfile.ZipFile(clean).namelist()
    payload = _pickled(_CreatesMarker(marker))
    if any(n.endswith('/archive_format') for n in names):  # pt2 archive (torch >= 2.8)
        config_name = next(n for n in names if n.endswith('_weights_config.json'))
        config = json.loads(zipfile.ZipFile(clean).read(config_name))
        fqn, meta = next(iter(config['config'].items()))
        meta['use_pickle'] = True
        target = config_name.rsplit('/', 1)[0] + '/' + meta['path_name']

        def change(name, data):
            if where == 'weight':
                return json.dumps(config).encode() if name == config_name else payload if name == target else data
            return payload if '/data/sample_inputs/' in name else data
    else:  # torch 2.4 - 2.7: pickled state dict and sample inputs
        target = 'serialized_state_dict.pt' if where == 'weight' else 'serialized_example_inputs.pt'

        def change(name, data):
            return payload if name == target else data
    _rewrite_zip(clean, out, change)


@pytest.fixture(scope='module')
def clean_pt2(tmp_path_factory):
    from se_hub.deploy.export import export_model
    path = tmp_path_factory.mktemp('pt2') / 'clean.pt2'
    model = timm.create_model('se_resnet20_cifar', layers=(1, 1, 1), num_classes=10).eval()
    export_model(model, 'pt2', str(path), img_size=32)
    return path


@pytest.mark.parametrize('where', ['weight', 'sample_inputs'])
def test_predict_refuses_a_pt2_that_would_run_code(where, clean_pt2, tmp_path):
    # the same payload, loaded by torch.export.load directly, really runs (else this test would prove nothing)
    proof_marker, marker = tmp_path / 'torch-ran-it', tmp_path / 'se-hub-ran-it'
    proof, hostile = tmp_path / 'proof.pt2', tmp_path / 'hostile.pt2'
    _hostile_pt2(clean_pt2, proof, proof_marker, where)
    _hostile_pt2(clean_pt2, hostile, marker, where)
    _run('-c', f'import torch\ntry: torch.export.load({str(proof)!r})\nexcept Exception: pass')
    if not proof_marker.exists():
        pytest.skip(f'torch {torch.__version__} does not unpickle the {where} payload of its .pt2 files unsafely')
    # the CLI run also passes a clean file first: the check lets real exports through
    ok = _run('-m', 'se_hub_cli', 'predict', '--model', str(clean_pt2), 'skimage:chelsea')
    assert ok.returncode == 0, ok.stderr
    result = _run('-m', 'se_hub_cli', 'predict', '--model', str(hostile), 'skimage:chelsea')
    assert not marker.exists(), 'loading the .pt2 file ran the code inside it'
    assert result.returncode == 1
    assert result.stderr.startswith(f'se-hub: error: {hostile}: refusing to load it:'), result.stderr
    assert 'pickled' in result.stderr and 'weights_only' not in result.stderr


def test_pt2_with_a_compiled_library_is_refused(clean_pt2, tmp_path):
    """torch.export.load dlopens AOTInductor libraries it finds in the archive: never loaded."""
    from se_hub.deploy.pt2 import UnsafeFileError, check_pt2
    data = clean_pt2.read_bytes()
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    root = next((n[:-len('archive_format')] for n in names if n.endswith('/archive_format')), '')
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, 'w') as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info.filename))
        zout.writestr(f'{root}data/aotinductor/model/model.so', b'\x7fELF')
    with pytest.raises(UnsafeFileError, match='model.so'):
        check_pt2(out.getvalue(), 'x.pt2')
    check_pt2(data, 'clean.pt2')  # the real export passes


@pytest.fixture
def hostile_pth(tmp_path):
    marker = tmp_path / 'ran'
    path = tmp_path / 'hostile.pth'
    path.write_bytes(_pickled({'fc.weight': torch.zeros(1), 'x': _CreatesMarker(marker)}))
    return path, marker


def test_unreadable_pth_is_named_and_never_advises_weights_only_false(hostile_pth, tmp_path):
    from se_hub.tasks.checkpoints import load
    from se_hub.weights import CheckpointLayoutError, load_checkpoint
    path, marker = hostile_pth
    model = timm.create_model('se_resnet20_cifar', layers=(1, 1, 1), num_classes=10)
    with pytest.raises(CheckpointLayoutError) as caught:
        load_checkpoint(model, path)
    message = str(caught.value)
    assert message.startswith(f'{path} is not a plain tensor checkpoint: it refers to the Python object '
                              f'{open.__module__}.open'), message
    with pytest.raises(ValueError) as caught:
        load(path)
    assert str(caught.value) == message
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint')
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(_pickled({'w': torch.zeros(100)})[:60])
    for bad in (junk, truncated):
        with pytest.raises(CheckpointLayoutError) as caught:
            load_checkpoint(model, bad)
        assert str(caught.value).startswith(f'{bad} is not a plain tensor checkpoint'), caught.value
        for message in (str(caught.value), str(pytest.raises(ValueError, load, bad).value)):
            assert 'weights_only' not in message and 'False' not in message
    assert not marker.exists()


def test_cli_push_with_a_hostile_checkpoint(hostile_pth):
    path, marker = hostile_pth
    result = _run('-m', 'se_hub_cli', 'push', 'se_resnet20_cifar', 'user/repo', '--checkpoint', str(path))
    assert result.returncode == 1 and not marker.exists()
    assert f'{path} is not a plain tensor checkpoint' in result.stderr, result.stderr
    assert 'weights_only' not in result.stderr
