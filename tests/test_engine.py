"""The fine-tuning engine (se_hub/tasks/engine.py, distributed.py): device / AMP / backend selection for every
documented case (no GPU needed: the machine's facts are arguments), the data order, progress
output off a terminal, honest metrics, bad input, Cutout, and several processes (torchrun with 2
gloo processes) for both tasks, including an exact 2-process resume."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from se_hub import files
from se_hub.tasks import checkpoints
from se_hub.tasks.distributed import DeviceError, EpochSampler, plan_device
from se_hub.tasks.engine import Progress

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_finetune_classification import MODEL, make_folders  # noqa: E402

FAST = dict(pretrained=False, batch_size=8, lr=3e-3, num_workers=0, progress=False)
CLI_FAST = ['--model', MODEL, '--no-pretrained', '--batch-size', '8', '--lr', '3e-3', '--workers', '0']
TORCHRUN = ['TORCHELASTIC_ERROR_FILE', 'MASTER_PORT', 'MASTER_ADDR', 'WORLD_SIZE', 'RANK', 'LOCAL_RANK']


pytestmark = pytest.mark.usefixtures('one_thread')


# ------------------------------------------------------------------------------ device and AMP

GPU2 = dict(cuda_devices=2, bf16_supported=True)
NO_GPU = dict(cuda_devices=0, bf16_supported=False)
TORCHRUN_RANK1 = {'WORLD_SIZE': '2', 'RANK': '1', 'LOCAL_RANK': '1'}


@pytest.mark.parametrize('device,amp,environ,machine,expected', [
    # (device, amp precision, scaler, backend)
    (None, 'auto', {}, NO_GPU, ('cpu', None, False, None)),
    ('cpu', 'auto', {}, GPU2, ('cpu', None, False, None)),
    ('cpu', 'bf16', {}, NO_GPU, ('cpu', 'bfloat16', False, None)),
    (None, 'auto', {}, GPU2, ('cuda:0', 'bfloat16', False, None)),
    ('cuda', 'auto', {}, GPU2, ('cuda:0', 'bfloat16', False, None)),  # today: "Expected a torch.device with an index"
    ('cuda:1', 'auto', {}, GPU2, ('cuda:1', 'bfloat16', False, None)),
    ('cuda', 'auto', {}, dict(cuda_devices=1, bf16_supported=False), ('cuda:0', 'float16', True, None)),
    ('cuda', 'fp16', {}, GPU2, ('cuda:0', 'float16', True, None)),
    ('cuda', 'off', {}, GPU2, ('cuda:0', None, False, None)),
    (None, 'auto', TORCHRUN_RANK1, GPU2, ('cuda:1', 'bfloat16', False, 'nccl')),  # torchrun: GPU of LOCAL_RANK
    ('cuda', 'auto', TORCHRUN_RANK1, GPU2, ('cuda:1', 'bfloat16', False, 'nccl')),
    (None, 'auto', TORCHRUN_RANK1, NO_GPU, ('cpu', None, False, 'gloo')),
    ('cpu', 'auto', TORCHRUN_RANK1, GPU2, ('cpu', None, False, 'gloo')),
])
def test_device_plan(device, amp, environ, machine, expected):
    plan = plan_device(device, amp, environ=environ, **machine)
    assert (plan.device, plan.amp, plan.scaler, plan.backend) == expected
    assert plan.world == int(environ.get('WORLD_SIZE', 1)) and plan.rank == int(environ.get('RANK', 0))


@pytest.mark.parametrize('device,amp,environ,machine,message', [
    ('cuda', 'auto', {}, NO_GPU, r'--device cuda: torch finds no CUDA device.*use --device cpu'),
    ('cuda:0', 'auto', {}, NO_GPU, 'no CUDA device'),
    ('cuda:2', 'auto', {}, GPU2, r'cuda:2 needs GPU 2, but this machine shows 2 GPU\(s\)'),
    ('cuda:1', 'auto', TORCHRUN_RANK1, GPU2, 'names one GPU, but torchrun started 2 processes: use --device cuda'),
    ('cuda', 'auto', {'WORLD_SIZE': '4', 'RANK': '3', 'LOCAL_RANK': '3'}, GPU2, 'LOCAL_RANK 3 needs GPU 3'),
    ('tpu', 'auto', {}, NO_GPU, 'choose cpu, cuda or cuda:N'),
    ('cpu', 'fp16', {}, NO_GPU, '--amp fp16 needs a CUDA device'),
    ('cuda', 'bf16', {}, dict(cuda_devices=1, bf16_supported=False), 'does not support bfloat16; use --amp fp16'),
    ('cpu', 'fp8', {}, NO_GPU, 'choose one of auto, off, bf16, fp16'),
])
def test_device_plan_errors(device, amp, environ, machine, message):
    with pytest.raises(DeviceError, match=message):
        plan_device(device, amp, environ=environ, **machine)


def test_cuda_on_this_machine_is_one_clear_cli_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA: the error case is covered by test_device_plan_errors')
    from se_hub_cli import main
    data = make_folders(tmp_path / 'd', n_train=1, n_val=1)
    assert main(['finetune', *CLI_FAST, '--data', str(data), '--epochs', '1', '--output', str(tmp_path / 'o'),
                 '--device', 'cuda']) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('se-hub: error: --device cuda: torch finds no CUDA device') and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------ data order, progress

def test_epoch_sampler_order_is_a_function_of_seed_and_epoch():
    a, b = EpochSampler(10, seed=3, rank=0, world=2), EpochSampler(10, seed=3, rank=1, world=2)
    for s in (a, b):
        s.set_epoch(4)
    torch.manual_seed(0)
    first = list(a)
    torch.manual_seed(99)  # the global RNG plays no part
    assert list(a) == first and len(first) == len(a) == 5
    assert sorted(first + list(b)) == list(range(10))  # the two shares cover the epoch once
    a.set_epoch(5)
    assert list(a) != first
    odd = [list(EpochSampler(7, 0, r, 2)) for r in (0, 1)]
    assert len(odd[0]) == len(odd[1]) == 4 and set(odd[0] + odd[1]) == set(range(7))  # padded as DDP needs
    flips = list(EpochSampler(50, 1, flip=True))
    assert all(isinstance(f, bool) for _, f in flips) and 0 < sum(f for _, f in flips) < 50


class _Pipe:
    def __init__(self):
        self.text = ''

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return False


def test_progress_off_a_terminal_is_plain_lines():
    stream = _Pipe()
    with Progress(10, 'epoch 1/2', every=3, stream=stream) as bar:
        for i in range(10):
            bar.update(loss=f'{i:.1f}')
    assert '\r' not in stream.text
    assert stream.text.splitlines() == ['epoch 1/2  step 3/10  loss 2.0', 'epoch 1/2  step 6/10  loss 5.0',
                                        'epoch 1/2  step 9/10  loss 8.0']


def _env():
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN}
    env.update(OMP_NUM_THREADS='1', PYTHONPATH=str(REPO), HF_HUB_OFFLINE='1', HF_HUB_DISABLE_TELEMETRY='1')
    return env


def test_cli_progress_when_stderr_is_not_a_terminal(tmp_path):
    """Redirected stderr (CI, nohup): plain progress lines, no carriage-return frames; and the
    metrics name their k (3 classes: top-3) and the LR the last epoch trained with."""
    data = make_folders(tmp_path / 'd', n_train=8, n_val=2)
    out = tmp_path / 'out'
    run = subprocess.run([sys.executable, '-m', 'se_hub_cli', 'finetune', *CLI_FAST, '--data', str(data),
                          '--epochs', '2', '--output', str(out), '--log-every', '1', '--warmup-epochs', '0'],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert '\r' not in run.stderr
    assert 'epoch 1/2  step 1/3  loss' in run.stderr and 'epoch 2/2  step 2/3' in run.stderr
    assert 'top-3' in run.stdout and 'top-5' not in run.stdout
    rows = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert all('top3' in r and 'top5' not in r for r in rows)
    assert rows[-1]['lr'] > 0  # the LR of the last step, not the schedule's end value 0
    assert 'lr 0.00e+00' not in run.stdout


def test_curves_name_top_k(tmp_path):
    from se_hub.plots import draw_curves
    history = [{'epoch': 1, 'train_loss': 1.0, 'val_loss': 0.5, 'top1': 50.0, 'top3': 100.0}]
    seen = []
    import se_hub.plots as curves
    original = curves._panel
    curves._panel = lambda draw, box, title, series, font, y_range=None: seen.append([s[0] for s in series])
    try:
        draw_curves(history, tmp_path / 'c.png')
    finally:
        curves._panel = original
    assert seen[1] == ['val top-1', 'val top-3']


# ------------------------------------------------------------------------------ bad input

def test_one_class_is_refused(tmp_path):
    from se_hub.tasks.classification import finetune
    from se_hub.tasks.data import DataError
    data = make_folders(tmp_path / 'd', n_train=2, n_val=1, classes=['red'])
    with pytest.raises(DataError, match=r'has one class \(red\): a classifier needs at least two'):
        finetune(MODEL, data, epochs=1, output=tmp_path / 'out', **FAST)
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('missing', ['train', 'val'])
def test_missing_split_is_named(tmp_path, missing):
    from se_hub.tasks.data import DataError, find_splits
    data = make_folders(tmp_path / 'd', n_train=1, n_val=1)
    shutil.rmtree(data / missing)
    with pytest.raises(DataError, match=f'has {"val" if missing == "train" else "train"}/ but no {missing}/ folder'):
        find_splits(data)


def test_offline_without_weights_names_no_pretrained_and_download(tmp_path, monkeypatch, capsys):
    from se_hub_cli import main
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    data = make_folders(tmp_path / 'd', n_train=1, n_val=1)
    assert main(['finetune', '--model', 'se_resnet50', '--data', str(data), '--epochs', '1', '--output',
                 str(tmp_path / 'o'), '--workers', '0']) == 1
    err = capsys.readouterr().err
    assert '--no-pretrained' in err and 'se-hub download se_resnet50' in err and len(err.strip().splitlines()) == 1


def test_cli_errors_give_cli_advice(tmp_path, capsys):
    from se_hub_cli import main
    data = make_folders(tmp_path / 'd', n_train=1, n_val=1)
    assert main(['finetune', *CLI_FAST, '--data', str(data), '--epochs', '1', '--output', str(tmp_path / 'o'),
                 '--resume']) == 1
    err = capsys.readouterr().err
    assert 'leave out --resume' in err and 'resume=' not in err


# ------------------------------------------------------------------------------ files

def test_one_file_written_by_many_threads_at_once_is_always_whole(tmp_path):
    """Each writer has its own temporary file: concurrent writes of one path never mix their bytes or
    lose a temporary file to another writer (a per-process name did: one writer's rename failed)."""
    import threading
    target = tmp_path / 'shared.bin'
    payloads = [bytes([k]) * (256 << 10) for k in range(8)]
    errors = []

    def writer(data):
        try:
            for _ in range(10):
                files.write_bytes_atomic(target, data)
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ['shared.bin']


# ------------------------------------------------------------------------------ Cutout

def test_cutout_on_a_real_photo():
    """Cutout on scikit-image's cat photo, through the fine-tuning train transform: exactly one
    axis-aligned square (clipped at the borders) of the normalised tensor is zero; the rest is
    the transform without Cutout, pixel for pixel."""
    skimage_data = pytest.importorskip('skimage.data')
    from timm.data import resolve_data_config

    from se_hub.tasks.classification import Cutout, train_transform
    photo = Image.fromarray(skimage_data.chelsea())
    cfg = resolve_data_config({'input_size': (3, 64, 64)})
    plain, cut = train_transform(cfg, augment=False), train_transform(cfg, augment=False, cutout=24)
    reference = plain(photo)
    assert (reference != 0).all()  # a real photo, normalised: no exact zeros to confuse the check
    clipped = 0
    torch.manual_seed(0)
    centres = []
    for _ in range(200):
        x = cut(photo)
        zero = (x == 0).all(dim=0)
        rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
        h, w = rows.numel(), cols.numel()
        assert zero.sum() == h * w and zero[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # one rectangle
        assert torch.equal(x[:, ~zero], reference[:, ~zero])
        assert h <= 24 and w <= 24
        if (h, w) != (24, 24):
            clipped += 1
            assert rows[0] == 0 or rows[-1] == 63 or cols[0] == 0 or cols[-1] == 63  # clipped at a border
        centres.append(((rows[0] + rows[-1]) / 2).item())
    assert 0 < clipped < 200  # centres uniform over the image: some squares cross a border
    assert np.mean(centres) == pytest.approx(31.5, abs=4)
    with pytest.raises(ValueError, match='at least 1'):
        Cutout(0)


def test_cutout_reaches_training(tmp_path):
    from se_hub.tasks.classification import Cutout, finetune
    data = make_folders(tmp_path / 'd', n_train=2, n_val=1)
    seen = []
    original = Cutout.__call__

    def spy(self, image):
        seen.append(self.size)
        return original(self, image)
    Cutout.__call__ = spy
    try:
        finetune(MODEL, data, epochs=1, output=tmp_path / 'out', cutout=8, **FAST)
    finally:
        Cutout.__call__ = original
    assert seen == [8] * 6  # every training image, once (not the val images)
    assert checkpoints.load(tmp_path / 'out' / 'last.pth')['options']['cutout'] == 8


# ------------------------------------------------------------------------------ 2 processes (gloo)

def _torchrun(*args, out=None, check=True, **kwargs):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           '-m', 'se_hub_cli', *args]
    if not check:
        return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, **kwargs)
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, **kwargs)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    return run


def test_two_processes_freeze_bn_and_backbone(tmp_path):
    """torchrun --nproc_per_node 2 with --freeze-bn --freeze-backbone (today: AttributeError on the
    DDP wrapper): only the classifier moves, BatchNorm statistics stay as loaded."""
    from se_hub.tasks.classification import finetune
    data = make_folders(tmp_path / 'd', n_train=4, n_val=2)
    start = finetune(MODEL, data, epochs=1, output=tmp_path / 'start', **FAST)
    out = tmp_path / 'frozen'
    _torchrun('finetune', '--model', f'local-dir:{start.output}', '--pretrained', '--batch-size', '4',
              '--lr', '0.05', '--workers', '0', '--no-progress', '--data', str(data), '--epochs', '1',
              '--output', str(out), '--freeze-bn', '--freeze-backbone')
    before = start.model.state_dict()
    after = checkpoints.load(out / 'last.pth')
    assert len(after['rng']) == 2
    for k, v in before.items():
        if k.startswith('fc.'):
            assert not torch.equal(v, after['model'][k]), k
        else:
            assert torch.equal(v, after['model'][k]), k


def test_two_process_run_killed_and_resumed_ends_with_the_same_weights(tmp_path):
    data = make_folders(tmp_path / 'd', n_train=8, n_val=2)
    common = ['finetune', *CLI_FAST, '--no-progress', '--data', str(data), '--epochs', '3', '--ema',
              '--ema-decay', '0.9']
    straight, killed = tmp_path / 'straight', tmp_path / 'killed'
    _torchrun(*common, '--output', str(straight))
    proc = _torchrun(*common, '--output', str(killed), check=False)
    deadline = time.monotonic() + 300
    try:
        while not (killed / 'last.pth').exists():
            assert proc.poll() is None, proc.stdout.read()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)  # torchrun stops both workers, waits for them, then exits
        try:
            proc.wait(timeout=60)
        finally:
            os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
            proc.stdout.close()
    kept = checkpoints.load(killed / 'last.pth')['epoch']
    assert 1 <= kept < 3
    run = _torchrun(*common, '--output', str(killed), '--resume')
    assert f'resuming {killed} after epoch {kept} of 3' in run.stdout
    a, b = checkpoints.load(straight / 'last.pth'), checkpoints.load(killed / 'last.pth')
    assert a['epoch'] == b['epoch'] == 3 and a['step'] == b['step'] and len(b['rng']) == 2
    for part in ('model', 'ema'):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert (straight / 'model.safetensors').read_bytes() == (killed / 'model.safetensors').read_bytes()


def test_two_processes_finetune_detect(tmp_path):
    pytest.importorskip('pycocotools')
    from test_detection import make_coco_set

    from se_hub.tasks.detection import evaluate_detector, load_detector
    train_json, train_images = make_coco_set(tmp_path / 'train', 5, seed=6, size=64)
    out = tmp_path / 'out'
    run = _torchrun('finetune-detect', '--backbone', 'se_resnet18', '--kind', 'retinanet', '--no-pretrained',
                    '--train-json', str(train_json), '--train-images', str(train_images), '--val-json',
                    str(train_json), '--val-images', str(train_images), '--output', str(out), '--batch-size', '2',
                    '--min-size', '64', '--max-size', '64', '--fpn-channels', '16', '--anchor-sizes', '8', '12',
                    '16', '24', '32', '--workers', '0', '--optimizer', 'adamw', '--lr', '1e-3',
                    '--warmup-iters', '2', '--epochs', '1', '--no-progress')
    assert '2 process(es)' in run.stdout and run.stdout.count('epoch 1/1 ') == 1
    state = checkpoints.load(out / 'last.pth')
    assert len(state['rng']) == 2 and state['step'] == 2  # 5 images: 3 per process, 2 batches of 2
    rows = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    # the mAP the two processes computed together is the one a single process computes on the export
    single = evaluate_detector(load_detector(out), train_json, train_images)
    assert rows[0]['mAP'] == pytest.approx(single['mAP'], abs=1e-6)
    assert (out / 'curves.png').is_file() and (out / 'detector.safetensors').is_file()
