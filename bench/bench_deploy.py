"""SE's inference cost through every deployment path, models measured round-robin in one run.

Paths: eager PyTorch, ``se_hub.deploy.optimize``, ``torch.compile`` (inductor, freezing),
onnxruntime fp32, onnxruntime INT8 (static QDQ, per-channel, SE gate path in fp32 for se_hub;
timm's graphs quantized the same way, their ReduceMean squeeze as exported). Models: se_resnet50b
and its SE-free twin, timm's seresnet50 and resnet50, the same four for SE-ResNeXt-50 (32x4d),
se_efficientnet_b0 and its SE-free twin.
Columns: batch-1 latency (median), batch-16 throughput, SE overhead over the same-layout SE-free
twin through the same path (the median over rounds of the two models' ratio within a round, and its
quartiles), speed-up over timm's eager seresnet50 / seresnext50_32x4d (or se_efficientnet_b0's eager
for the EfficientNets).

    python bench/bench_deploy.py            # full table (bs1 + bs16, all paths)
    python bench/bench_deploy.py --quick    # bs1 only, no torch.compile, fewer repeats

onnxruntime runs with ``session.intra_op.allow_spinning=0``: spinning idle threads would slow
whatever runs next in the round. PyTorch runs with its OpenMP as a deployed process has it (set
``OMP_WAIT_POLICY`` yourself to change that): with ``PASSIVE`` every parallel region wakes sleeping
threads, which on 2 cores made ``optimize``'s SE-ResNet-50 at batch 1 2.3x slower and SE's overhead
+25% instead of +15% (README).
Weights are random (speed does not depend on them); BN statistics are randomised so that nothing is
a no-op.
"""
import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import record  # noqa: E402  # bench/record.py: --results writes the output to bench/results/
import timm  # noqa: E402

import se_hub  # noqa: E402,F401
from se_hub.deploy import optimize  # noqa: E402
from se_hub.deploy.export import export_model, ort_session, sample_images  # noqa: E402
from se_hub.deploy.quantize import quantize_onnx  # noqa: E402

# (row name, timm name, kwargs, SE-free twin row, reference row for speed-up)
MODELS = [
    ('se_resnet50b', 'se_resnet50b', {}, 'se_resnet50b (no SE)', 'timm seresnet50'),
    ('se_resnet50b (no SE)', 'se_resnet50b', dict(se_layer='none'), None, 'timm seresnet50'),
    ('timm seresnet50', 'seresnet50', {}, 'timm resnet50', 'timm seresnet50'),
    ('timm resnet50', 'resnet50', {}, None, 'timm seresnet50'),
    ('se_resnext50b_32x4d', 'se_resnext50b_32x4d', {}, 'se_resnext50b_32x4d (no SE)', 'timm seresnext50_32x4d'),
    ('se_resnext50b_32x4d (no SE)', 'se_resnext50b_32x4d', dict(se_layer='none'), None, 'timm seresnext50_32x4d'),
    ('timm seresnext50_32x4d', 'seresnext50_32x4d', {}, 'timm resnext50_32x4d', 'timm seresnext50_32x4d'),
    ('timm resnext50_32x4d', 'resnext50_32x4d', {}, None, 'timm seresnext50_32x4d'),
    ('se_efficientnet_b0', 'se_efficientnet_b0', {}, 'se_efficientnet_b0 (no SE)', 'se_efficientnet_b0'),
    ('se_efficientnet_b0 (no SE)', 'se_efficientnet_b0', dict(se_layer='none'), None, 'se_efficientnet_b0'),
]

PATHS = ['eager', 'optimize', 'compile', 'onnxruntime fp32', 'onnxruntime int8']


def randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def torch_runner(module):
    def run(x):
        with torch.inference_mode():
            return module(x)
    return run


def ort_runner(paths, threads):
    """``paths``: {1: batch-1 file, None: dynamic-batch file}; a batch runs in the file made for it (a
    batch-1 file is what ``se-hub export`` writes by default, and the only one whose INT8 SE gates scale
    the convolutions' weight scales, ``quantize_onnx(ort_only_gate_folding=True)``)."""
    sessions = {batch: ort_session(path, threads) for batch, path in paths.items()}
    name = next(iter(sessions.values())).get_inputs()[0].name

    def run(x):
        return sessions.get(x.shape[0], sessions.get(None)).run(None, {name: x.numpy()})
    return run


def build(args, work, formats, wanted):
    """Runners of the (row, path) pairs ``wanted`` accepts; only what they need is built."""
    runners = {}  # (row, path) -> callable(batch)
    _, photos = sample_images()
    for row, name, kwargs, _, _ in MODELS:
        if not any(wanted(row, path) for path in PATHS):
            continue
        model = randomize_bn(timm.create_model(name, **kwargs))
        is_se_hub = name.startswith('se_')
        if wanted(row, 'eager'):
            runners[(row, 'eager')] = torch_runner(model)
        if is_se_hub and wanted(row, 'optimize'):
            fast = optimize(model)
            formats[row] = fast.optimized_memory_format
            runners[(row, 'optimize')] = torch_runner(fast)
        if args.compile and wanted(row, 'compile'):
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True
            # channels-last: inductor's layout for CPU convolutions (the SE gate as an activation multiply)
            target = (optimize(model, fold_gate=False, memory_format=torch.channels_last) if is_se_hub
                      else copy.deepcopy(model).to(memory_format=torch.channels_last))  # eager stays NCHW
            runners[(row, 'compile')] = torch_runner(torch.compile(target))
        if wanted(row, 'onnxruntime fp32') or wanted(row, 'onnxruntime int8'):
            fp32, int8 = {}, {}
            for batch in (1,) if args.quick else (1, None):
                path = os.path.join(work, row.replace(' ', '_').replace('(', '').replace(')', '')
                                    + ('_bs1' if batch else '_dynamic') + '.onnx')
                if is_se_hub:
                    export_model(model, 'onnx', path, dynamic_batch=batch is None)
                else:  # timm's own graph as exported by the same exporter, with our metadata for calibration
                    export_model_plain(model, path, dynamic_batch=batch is None)
                fp32[batch], int8[batch] = path, path.replace('.onnx', '_int8.onnx')
                if wanted(row, 'onnxruntime int8'):
                    quantize_onnx(path, int8[batch], photos, ort_only_gate_folding=True)  # onnxruntime only here
            if wanted(row, 'onnxruntime fp32'):
                runners[(row, 'onnxruntime fp32')] = ort_runner(fp32, args.threads)
            if wanted(row, 'onnxruntime int8'):
                runners[(row, 'onnxruntime int8')] = ort_runner(int8, args.threads)
        print(f'built {row}', file=sys.stderr, flush=True)
    return runners


def export_model_plain(model, path, dynamic_batch):
    """timm's model through the same ONNX exporter, unoptimized, with se_hub metadata attached."""
    import json

    import onnx

    from se_hub.deploy.export import METADATA_KEY, metadata
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), path, input_names=['image'], output_names=['logits'],
                      dynamic_axes={'image': {0: 'batch'}, 'logits': {0: 'batch'}} if dynamic_batch else None,
                      opset_version=17, dynamo=False)
    proto = onnx.load(path)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata(model))
    onnx.save(proto, path)


def timings(runners, x, repeats, warmup=3, block=1):
    """Seconds of every timed call per runner. Round-robin over the paths, ``block`` consecutive calls
    each per round: drifting load hits every path alike, and a path is timed as a deployed model runs
    (after its own previous call, not after another model that flushed the caches) when ``block`` > 1."""
    times = {k: [] for k in runners}
    for run in runners.values():
        for _ in range(warmup):
            run(x)
    for _ in range(repeats):
        for key, run in runners.items():
            for _ in range(block):
                t0 = time.perf_counter()
                run(x)
                times[key].append(time.perf_counter() - t0)
    return times


def measure(runners, batch, repeats, warmup=3, block=1, with_times=False):
    """Median seconds per call of each runner on a (batch, 3, 224, 224) input (``timings``); with
    ``with_times`` also every timed call, for ``overhead_quartiles``."""
    times = timings(runners, torch.randn(batch, 3, 224, 224), repeats, warmup, block)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return (medians, times) if with_times else medians


def overhead_quartiles(times, key, base, block):
    """How much slower ``key`` ran than ``base``, in %, per round-robin round (the median of each one's
    ``block`` calls in that round): (median, first quartile, third quartile) over the rounds. Both ran
    within the same round, so load that drifts between rounds cancels, and the quartiles show how far a
    single run's overhead can be trusted on a shared machine."""
    ratios = [statistics.median(times[key][i:i + block]) / statistics.median(times[base][i:i + block])
              for i in range(0, len(times[key]), block)]
    q1, median, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return tuple(100 * (q - 1) for q in (median, q1, q3))


def format_overhead(quartiles):
    median, q1, q3 = quartiles
    return f'{median:+.1f}% ({q1:+.1f} to {q3:+.1f})'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='bs1 only, no torch.compile, 5 repeats')
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--models', default='', help='comma-separated row names to keep (default: all), '
                        "e.g. 'se_resnet50b,se_resnet50b (no SE)'")
    parser.add_argument('--paths', default='', help='comma-separated paths to keep (default: all), e.g. optimize,eager')
    parser.add_argument('--block', type=int, default=3,
                        help='consecutive calls of a path per round-robin round (all timed)')
    parser.add_argument('--threads', type=int, default=2, help='torch and onnxruntime intra-op threads')
    parser.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None,
                        help='include torch.compile (default: yes unless --quick)')
    record.add_option(parser)
    args = parser.parse_args()
    with record.recording(args.results, 'deploy'):
        if args.compile is None:
            args.compile = not args.quick
        repeats = 5 if args.quick else args.repeats
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as work:
            formats = {}  # row -> memory format optimize picked
            keep_rows = {r.strip() for r in args.models.split(',') if r.strip()}
            keep_paths = {p.strip() for p in args.paths.split(',') if p.strip()}
            unknown = (keep_rows - {m[0] for m in MODELS}) | (keep_paths - set(PATHS))
            if unknown:
                parser.error(f'unknown rows / paths {sorted(unknown)}; rows: {[m[0] for m in MODELS]}, paths: {PATHS}')
            runners = build(args, work, formats, lambda row, path: (not keep_rows or row in keep_rows)
                            and (not keep_paths or path in keep_paths))
            bs1, bs1_times = measure(runners, 1, repeats, block=args.block, with_times=True)
            bs16 = {} if args.quick else measure(runners, 16, max(3, repeats // 4), warmup=1, block=args.block)
        header = ['model', 'path', 'bs1 ms', 'bs16 img/s', 'SE overhead bs1 (quartiles over rounds)',
                  'speed-up vs eager ref']
        lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
        for row, _, _, twin, ref in MODELS:
            for path in PATHS:
                key = (row, path)
                if key not in bs1:
                    continue
                t = bs1[key]
                over = (format_overhead(overhead_quartiles(bs1_times, key, (twin, path), args.block))
                        if twin and (twin, path) in bs1 else '')
                thr = f'{16 / bs16[key]:.1f}' if key in bs16 else ''
                speed = f'{bs1[(ref, "eager")] / t:.2f}x' if (ref, 'eager') in bs1 else ''
                label = f'{path} ({formats[row]})' if path == 'optimize' else path
                lines.append(f'| {row} | {label} | {1000 * t:.1f} | {thr} | {over} | {speed} |')
        print(f'torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, '
              f'OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "(unset)")}, '
              f'repeats {repeats} x block {args.block}, reference for speed-up: timm seresnet50 / seresnext50_32x4d '
              f'eager (ResNets / ResNeXts), se_efficientnet_b0 eager (EfficientNets)')
        print('\n'.join(lines))


if __name__ == '__main__':
    main()
