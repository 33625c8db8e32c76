"""SE's inference cost through every deployment path, models measured round-robin in one run.

Paths: eager PyTorch, ``se_hub.deploy.optimize``, ``torch.compile`` (inductor, freezing),
onnxruntime fp32, onnxruntime INT8 (static QDQ, per-channel, SE gate path in fp32 for se_hub;
timm's graphs quantized the same way, their ReduceMean squeeze as exported; the onnxruntime-only gate
folding on), OpenVINO f32, bf16 (where the CPU has bf16) and INT8 (the ONNX files as exported, run with
OpenVINO's inference-precision hint; INT8: the QDQ file both runtimes load; se_hub's runner compiles the
dynamic-batch IR once per batch shape, as it does for users). Models: se_resnet50b
and its SE-free twin, timm's seresnet50 and resnet50, the same four for SE-ResNeXt-50 (32x4d),
se_efficientnet_b0 and its SE-free twin.
Columns: batch-1 latency (median), batch-16 throughput, each with the weight bytes the path reads per
image (the weights as the runtime holds them, divided by the batch: bf16 counts 2 bytes a float weight,
INT8 the quantized file's tensors) and the multiply-adds it achieves per second (the model's conv +
linear multiply-adds at 224x224, ``se_hub.complexity.count_macs``, times the batch over the median
time), which show each path's distance to the machine's limits; SE overhead over the same-layout SE-free
twin through the same path (the median over rounds of the two models' ratio within a round, and its
quartiles), speed-up over timm's eager seresnet50 / seresnext50_32x4d (or se_efficientnet_b0's eager
for the EfficientNets).

    python bench/bench_deploy.py            # full table (bs1 + bs16, all paths)
    python bench/bench_deploy.py --quick    # bs1 only, no torch.compile, fewer repeats
    python bench/bench_deploy.py --models se_resnet50b --paths 'eager,openvino f32' --repeats 1 --block 1  # a smoke run

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
from se_hub.complexity import count_macs  # noqa: E402
from se_hub.deploy import optimize  # noqa: E402
from se_hub.deploy.benchmark import cpu_features, installed_modules  # noqa: E402
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

PATHS = ['eager', 'optimize', 'compile', 'onnxruntime fp32', 'onnxruntime int8', 'openvino f32', 'openvino bf16',
         'openvino int8']
OPENVINO = [p for p in PATHS if p.startswith('openvino')]


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


def module_weight_bytes(module):
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def onnx_weight_bytes(path, float_bytes=4):
    """Bytes of an ONNX file's initializers, float32 ones counted ``float_bytes`` each (2: run in bf16)."""
    import onnx
    from onnx import numpy_helper
    total = 0
    for tensor in onnx.load(path).graph.initializer:
        array = numpy_helper.to_array(tensor)
        total += array.size * (float_bytes if array.dtype.name == 'float32' else array.itemsize)
    return total


def onnx_file(model, stem, batch):
    """``model``'s ONNX file for ``batch`` (1, or None: any batch), at ``stem`` + a suffix, exported once."""
    path = stem + ('_bs1' if batch else '_dynamic') + '.onnx'
    if not os.path.exists(path):
        if type(model).__module__.startswith('se_hub'):
            export_model(model, 'onnx', path, dynamic_batch=batch is None)
        else:  # timm's own graph as exported by the same exporter, with our metadata for calibration
            export_model_plain(model, path, dynamic_batch=batch is None)
    return path


def openvino_runner(path, precision, threads):
    from se_hub.deploy.openvino_runner import OpenVINORunner
    runner = OpenVINORunner(path, precision, threads)
    return lambda x: runner(x.numpy())


def build(args, work, formats, weights, macs, wanted):
    """Runners of the (row, path) pairs ``wanted`` accepts; only what they need is built. Fills ``weights``
    ((row, path) -> weight bytes it runs with) and ``macs`` (row -> multiply-adds of one image)."""
    runners = {}  # (row, path) -> callable(batch)
    _, photos = sample_images()
    for row, name, kwargs, _, _ in MODELS:
        if not any(wanted(row, path) for path in PATHS):
            continue
        model = randomize_bn(timm.create_model(name, **kwargs))
        macs[row] = count_macs(model, (3, 224, 224))
        is_se_hub = name.startswith('se_')
        if wanted(row, 'eager'):
            runners[(row, 'eager')] = torch_runner(model)
            weights[(row, 'eager')] = module_weight_bytes(model)
        if is_se_hub and wanted(row, 'optimize'):
            fast = optimize(model)
            formats[row] = fast.optimized_memory_format
            runners[(row, 'optimize')] = torch_runner(fast)
            weights[(row, 'optimize')] = module_weight_bytes(fast)
        if args.compile and wanted(row, 'compile'):
            import torch._dynamo.config as dynamo_config
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True
            # se_hub's models share one forward (StagedNet's), whose compiled entries (one per model and batch
            # shape) pass dynamo's limit of 8 in this table: past it a model would run eager, under its name
            for limit in ('recompile_limit', 'cache_size_limit'):  # (the older name)
                if hasattr(dynamo_config, limit):
                    setattr(dynamo_config, limit, 64)
            # channels-last: inductor's layout for CPU convolutions (the SE gate as an activation multiply)
            target = (optimize(model, fold_gate=False, memory_format=torch.channels_last) if is_se_hub
                      else copy.deepcopy(model).to(memory_format=torch.channels_last))  # eager stays NCHW
            runners[(row, 'compile')] = torch_runner(torch.compile(target))
            weights[(row, 'compile')] = module_weight_bytes(target)
        stem = os.path.join(work, row.replace(' ', '_').replace('(', '').replace(')', ''))
        if wanted(row, 'onnxruntime fp32') or wanted(row, 'onnxruntime int8'):
            fp32, int8 = {}, {}
            for batch in (1,) if args.quick else (1, None):
                fp32[batch] = onnx_file(model, stem, batch)
                int8[batch] = fp32[batch].replace('.onnx', '_ort_int8.onnx')
                if wanted(row, 'onnxruntime int8'):
                    quantize_onnx(fp32[batch], int8[batch], photos, ort_only_gate_folding=True)  # onnxruntime only
            if wanted(row, 'onnxruntime fp32'):
                runners[(row, 'onnxruntime fp32')] = ort_runner(fp32, args.threads)
                weights[(row, 'onnxruntime fp32')] = onnx_weight_bytes(fp32[1])
            if wanted(row, 'onnxruntime int8'):
                runners[(row, 'onnxruntime int8')] = ort_runner(int8, args.threads)
                weights[(row, 'onnxruntime int8')] = onnx_weight_bytes(int8[1])
        for path in OPENVINO:
            if not wanted(row, path):
                continue
            precision, file = path.split()[-1], onnx_file(model, stem, None)
            if precision == 'int8':  # the default QDQ file, which OpenVINO reads (no onnxruntime-only folding)
                file = file.replace('.onnx', '_int8.onnx')
                if not os.path.exists(file):
                    quantize_onnx(onnx_file(model, stem, None), file, photos)
            runners[(row, path)] = openvino_runner(file, precision, args.threads)
            weights[(row, path)] = onnx_weight_bytes(file, 2 if precision == 'bf16' else 4)
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


def unavailable():
    """Paths this machine cannot run -> why (an OpenVINO bf16 row on a CPU without bf16 would time f32)."""
    reasons = {}
    if 'openvino' not in installed_modules():
        reasons.update({p: "openvino not installed (pip install -e '.[openvino]')" for p in OPENVINO})
    elif not cpu_features()['bf16']:
        reasons['openvino bf16'] = 'no bf16 on this CPU (needs AMX or AVX-512 BF16)'
    return reasons


def cost_columns(key, batch, seconds, weights, macs):
    """Weight MB per image and achieved G multiply-adds per second of ``key`` at ``batch``."""
    if key not in seconds:
        return ['', '']
    row, path = key
    mb = f'{weights[key] / batch / 1e6:.1f}' if key in weights else ''
    return [mb, f'{macs[row] * batch / seconds[key] / 1e9:.1f}']


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='bs1 only, no torch.compile, 5 repeats')
    parser.add_argument('--repeats', type=int, help='bs1 round-robin rounds (default 20, --quick 5); bs16: a quarter')
    parser.add_argument('--models', default='', help='comma-separated row names to keep (default: all), '
                        "e.g. 'se_resnet50b,se_resnet50b (no SE)'")
    parser.add_argument('--paths', default='', help='comma-separated paths to keep (default: all), e.g. optimize,eager')
    parser.add_argument('--block', type=int, default=3,
                        help='consecutive calls of a path per round-robin round (all timed)')
    parser.add_argument('--threads', type=int, default=2, help='torch, onnxruntime and OpenVINO threads')
    parser.add_argument('--compile', action=argparse.BooleanOptionalAction, default=None,
                        help='include torch.compile (default: yes unless --quick)')
    record.add_option(parser)
    args = parser.parse_args()
    with record.recording(args.results, 'deploy'):
        if args.compile is None:
            args.compile = not args.quick
        repeats = args.repeats or (5 if args.quick else 20)
        torch.set_num_threads(args.threads)
        skipped = unavailable()
        with tempfile.TemporaryDirectory() as work:
            formats, weights, macs = {}, {}, {}  # row -> memory format optimize picked; weight bytes; multiply-adds
            keep_rows = {r.strip() for r in args.models.split(',') if r.strip()}
            keep_paths = {p.strip() for p in args.paths.split(',') if p.strip()}
            unknown = (keep_rows - {m[0] for m in MODELS}) | (keep_paths - set(PATHS))
            if unknown:
                parser.error(f'unknown rows / paths {sorted(unknown)}; rows: {[m[0] for m in MODELS]}, paths: {PATHS}')
            runners = build(args, work, formats, weights, macs, lambda row, path: (not keep_rows or row in keep_rows)
                            and (not keep_paths or path in keep_paths) and path not in skipped)
            bs1, bs1_times = measure(runners, 1, repeats, block=args.block, with_times=True)
            bs16 = {} if args.quick else measure(runners, 16, max(min(3, repeats), repeats // 4), warmup=1,
                                                 block=args.block)
        header = ['model', 'path', 'bs1 ms', 'bs1 weight MB/img', 'bs1 GMAC/s', 'bs16 img/s', 'bs16 weight MB/img',
                  'bs16 GMAC/s', 'SE overhead bs1 (quartiles over rounds)', 'speed-up vs eager ref']
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
                cells = [row, label, f'{1000 * t:.1f}', *cost_columns(key, 1, bs1, weights, macs), thr,
                         *cost_columns(key, 16, bs16, weights, macs), over, speed]
                lines.append('| ' + ' | '.join(cells) + ' |')
        print(f'torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, '
              f'OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "(unset)")}, '
              f'repeats {repeats} x block {args.block}, reference for speed-up: timm seresnet50 / seresnext50_32x4d '
              f'eager (ResNets / ResNeXts), se_efficientnet_b0 eager (EfficientNets)')
        print('\n'.join(lines))
        for path, why in skipped.items():
            print(f'skipped {path}: {why}')


if __name__ == '__main__':
    main()
