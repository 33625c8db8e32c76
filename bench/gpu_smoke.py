"""GPU smoke test of the fine-tuning engine, for a machine with CUDA (this project's CI has none).

    python bench/gpu_smoke.py [--out /tmp/se_hub_gpu_smoke]

Runs, on tiny synthetic data (a few seconds each):
1. classification, --amp fp16 (autocast float16 + GradScaler) on cuda;
2. classification, --amp bf16 (no scaler) on cuda:0, with --ema;
3. detection (finetune-detect, RetinaNet on se_resnet18) with --amp auto on cuda, then --resume;
4. with 2 or more GPUs: torchrun --nproc_per_node 2 (nccl) for finetune and finetune-detect.
Each step checks the run's outputs (metrics.jsonl rows, last.pth with a scaler state for fp16, the
process count) and prints one PASS / FAIL line; the exit status is the number of failures.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE / 'tests'))


def se_hub(*args, procs=1):
    env = dict(os.environ, PYTHONPATH=str(HERE), HF_HUB_OFFLINE='1')
    head = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(procs)] \
        if procs > 1 else [sys.executable]
    run = subprocess.run([*head, '-m', 'se_hub_cli', *args], env=env, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError((run.stdout + run.stderr)[-3000:])
    return run.stdout


def rows(out):
    return [json.loads(line) for line in (Path(out) / 'metrics.jsonl').read_text().splitlines()]


def main() -> int:
    import torch
    parser = argparse.ArgumentParser()
    parser.add_argument('--out', default='/tmp/se_hub_gpu_smoke')
    root = Path(parser.parse_args().out)
    if not torch.cuda.is_available():
        print('no CUDA device: nothing to test here')
        return 1
    shutil.rmtree(root, ignore_errors=True)
    from test_detection import make_coco_set
    from test_finetune_classification import make_folders

    from se_hub.tasks import checkpoints
    data = make_folders(root / 'shapes', n_train=16, n_val=4)
    ann, images = make_coco_set(root / 'coco', 8, seed=0, size=128)
    clf = ['finetune', '--model', 'se_resnet20_cifar', '--no-pretrained', '--data', str(data), '--epochs', '2',
           '--batch-size', '8', '--workers', '0', '--no-progress']
    det = ['finetune-detect', '--backbone', 'se_resnet18', '--kind', 'retinanet', '--no-pretrained',
           '--train-json', str(ann), '--train-images', str(images), '--val-json', str(ann), '--val-images',
           str(images), '--batch-size', '2', '--min-size', '128', '--max-size', '128', '--workers', '0',
           '--optimizer', 'adamw', '--lr', '1e-3', '--warmup-iters', '2', '--no-progress']

    def fp16():
        se_hub(*clf, '--amp', 'fp16', '--device', 'cuda', '--output', str(root / 'fp16'))
        ckpt = checkpoints.load(root / 'fp16' / 'last.pth')
        assert ckpt['scaler'] is not None and len(rows(root / 'fp16')) == 2

    def bf16():
        se_hub(*clf, '--amp', 'bf16', '--device', 'cuda:0', '--ema', '--output', str(root / 'bf16'))
        ckpt = checkpoints.load(root / 'bf16' / 'last.pth')
        assert ckpt['scaler'] is None and ckpt['ema'] is not None and 'ema_top1' in rows(root / 'bf16')[-1]

    def detect():
        se_hub(*det, '--epochs', '1', '--device', 'cuda', '--output', str(root / 'det'))
        se_hub(*det, '--epochs', '2', '--device', 'cuda', '--resume', '--output', str(root / 'det'))
        assert [r['epoch'] for r in rows(root / 'det')] == [1, 2] and 'mAP' in rows(root / 'det')[-1]
        from se_hub.tasks.detection import load_detector
        load_detector(root / 'det')

    def nccl():
        if torch.cuda.device_count() < 2:
            raise SkipTest('fewer than 2 GPUs')
        text = se_hub(*clf, '--output', str(root / 'ddp'), procs=2)
        assert '2 process(es) on cuda' in text and len(checkpoints.load(root / 'ddp' / 'last.pth')['rng']) == 2
        text = se_hub(*det, '--epochs', '1', '--output', str(root / 'ddp-det'), procs=2)
        assert '2 process(es) on cuda' in text

    failures = 0
    for name, check in (('AMP fp16 + GradScaler', fp16), ('AMP bf16 + EMA', bf16),
                        ('finetune-detect AMP + resume', detect), ('torchrun 2 processes, nccl', nccl)):
        try:
            check()
            print(f'PASS  {name}')
        except SkipTest as e:
            print(f'SKIP  {name}: {e}')
        except Exception as e:  # noqa: BLE001 - report every check
            failures += 1
            print(f'FAIL  {name}: {e}')
    return failures


class SkipTest(Exception):
    pass


if __name__ == '__main__':
    sys.exit(main())
