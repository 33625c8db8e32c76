"""Images/s of a fine-tuning step on the CPU, before and after the engine restructuring, next to
a plain train step written as timm's train.py does it (forward, loss, backward, optimizer step;
no data loading) for the same model.

    python bench/bench_finetune_step.py [--before /work/main] [--steps 4] [--threads 2]

- classification: ``se_hub.tasks.finetune`` of se_resnet50b (random weights, 224x224, batch 8)
  on a folder of synthetic images, one epoch of ``--steps`` steps; images/s is the run's own
  ``train_images_per_s`` (data loading in the main process included);
- detection: Faster R-CNN on se_resnet50b (random weights, images 320x320, batch 8), one epoch
  of ``--steps`` steps through ``train_detector``; images/s = images / epoch time;
- timm step: timm's train.py inner loop (``create_optimizer_v2``, cross-entropy, backward, step)
  on one in-memory batch, for the classification case only (timm has no detection trainer).

"before" runs the same code paths of another checkout (PYTHONPATH=that tree) in a subprocess.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import record  # bench/record.py: --results writes the output to bench/results/

HERE = Path(__file__).resolve().parents[1]
BATCH, SIZE, DET_SIZE = 8, 224, 320


def _folders(root: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, count in (('train', n), ('val', 2)):
        for c in ('a', 'b'):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(count // 2):
                pixels = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f'{i}.png')
    return root


def classification(steps: int) -> float:
    import torch

    from se_hub.tasks.classification import finetune
    with tempfile.TemporaryDirectory() as tmp:
        data = _folders(Path(tmp) / 'd', BATCH * steps)
        torch.manual_seed(0)
        finetune('se_resnet50b', data, epochs=1, output=Path(tmp) / 'out', pretrained=False, batch_size=BATCH,
                 num_workers=0, progress=False, augment=False, img_size=SIZE, check_images=False)
        row = json.loads((Path(tmp) / 'out' / 'metrics.jsonl').read_text().splitlines()[-1])
        return row['train_images_per_s']


def detection(steps: int) -> float:
    import torch
    sys.path.insert(0, str(HERE / 'tests'))
    from test_detection import SMALL_RCNN, make_coco_set

    from se_hub.tasks.detection import create_detector, train_detector
    with tempfile.TemporaryDirectory() as tmp:
        ann, images = make_coco_set(Path(tmp) / 'c', BATCH * steps, seed=0, size=DET_SIZE)
        torch.manual_seed(0)
        det = create_detector('fasterrcnn', 'se_resnet50b', 3, pretrained_backbone=False, min_size=DET_SIZE,
                              max_size=DET_SIZE, **SMALL_RCNN)
        t0 = time.perf_counter()
        kwargs = dict(epochs=1, output=Path(tmp) / 'out', batch_size=BATCH, lr=1e-3, optimizer='adamw')
        try:
            train_detector(det, ann, images, warmup_steps=1, num_workers=0, progress=False, **kwargs)
        except TypeError:  # the code before issue #29 (warmup_iters), or before the engine (a log callback)
            try:
                train_detector(det, ann, images, warmup_iters=1, progress=False, **kwargs)
            except TypeError:
                train_detector(det, ann, images, warmup_iters=1, log=None, **kwargs)
        return BATCH * steps / (time.perf_counter() - t0)


def timm_step(steps: int) -> float:
    import timm
    import torch
    from timm.optim import create_optimizer_v2

    import se_hub  # noqa: F401
    torch.manual_seed(0)
    model = timm.create_model('se_resnet50b', num_classes=2).train()
    opt = create_optimizer_v2(model, opt='adamw', lr=1e-3, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    x, y = torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, 2, (BATCH,))
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return BATCH * steps / (time.perf_counter() - t0)


def _measure_in(tree: Path, what: str, steps: int, threads: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE='1')
    code = (f'import sys, torch; torch.set_num_threads({threads}); sys.path.insert(0, {str(HERE / "bench")!r}); '
            f'import bench_finetune_step as b; print("RESULT", b.{what}({steps}))')
    run = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, cwd=tree)
    if run.returncode:
        raise RuntimeError(f'{what} in {tree}: {run.stderr[-1500:]}')
    return float(run.stdout.split('RESULT')[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--before', default='/work/main', help='checkout of the code before the engine')
    parser.add_argument('--steps', type=int, default=4)
    parser.add_argument('--threads', type=int, default=2)
    record.add_option(parser)
    args = parser.parse_args()
    with record.recording(args.results, 'finetune_step'):
        before, after = Path(args.before), HERE
        rows = [('classification fine-tune step', _measure_in(before, 'classification', args.steps, args.threads),
                 _measure_in(after, 'classification', args.steps, args.threads),
                 _measure_in(after, 'timm_step', args.steps, args.threads)),
                ('detection step (Faster R-CNN)', _measure_in(before, 'detection', args.steps, args.threads),
                 _measure_in(after, 'detection', args.steps, args.threads), None)]
        print(f'se_resnet50b, CPU ({args.threads} threads), batch {BATCH}, {args.steps} steps; images/s')
        print(f"{'step':32s}{'before':>10s}{'after':>10s}{'timm step':>12s}")
        for name, b, a, t in rows:
            print(f"{name:32s}{b:10.2f}{a:10.2f}{(f'{t:.2f}' if t else 'n/a'):>12s}")


if __name__ == '__main__':
    main()
