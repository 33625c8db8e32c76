"""Where SE's remaining inference cost goes, for an SE-ResNet-50 (timm layout; ``--model``) at batch 1.

Two measurements, each against the same-layout SE-free twin:

* ``optimize`` (eager), gate variants timed round-robin in one process: the real gate; the gate
  put into the next 1x1 convolution's weights (``fold_gate=True``); the gate as
  it was computed before (its FCs and activations as submodules, five module calls); a constant
  gate (the scale still applied, nothing computed); the squeeze only (``spatial_mean``, constant
  gate; also as global pooling and as a matrix-vector product); the FCs only (on a constant
  squeeze); the FC weights only read (summed: what any exact float32 gate pays to fetch them from
  memory at batch 1). What the scale costs, and what pooling and FCs cost in the model.
* onnxruntime fp32 and INT8 (``--ort``): kernel time per operator type from onnxruntime's profiler,
  so the ops the SE graph adds (and the layout reorders they cause) show by name; INT8 also with the
  gates left as ``QLinearMul`` (``quantize_onnx``'s default), and the INT8 latencies of SE-free,
  SE and SE with ``QLinearMul`` timed round-robin (batch-1 files).
* OpenVINO bf16 and INT8 (``--openvino``; bf16 only where the CPU has it): time per executed layer from
  OpenVINO's own performance counters (``PERF_COUNT``), by layer type and kernel, the SE units' layers
  (squeeze, FCs, gate) summed apart, for SE and the SE-free twin, and their latencies timed round-robin.

    python bench/bench_se_cost.py [--model se_resnet50b] [--rounds 20] [--ort] [--openvino] [--no-eager]
    python bench/bench_se_cost.py --model se_efficientnet_b0 --openvino --no-eager   # MBConv in OpenVINO
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import record  # noqa: E402  # bench/record.py: --results writes the output to bench/results/
import timm  # noqa: E402
from bench_deploy import format_overhead, measure, overhead_quartiles, randomize_bn, torch_runner  # noqa: E402

import se_hub  # noqa: E402,F401
from se_hub.deploy import optimize  # noqa: E402
from se_hub.deploy.fused import ExcitationGate, spatial_mean  # noqa: E402


class GateVariant(torch.nn.Module):
    """Stands in for one ``ExcitationGate``: returns the gate it recorded on the first call and
    computes only the part named by ``keep`` ('nothing', 'fc', 'fc weights read': the FC weights summed,
    no product, 'pool': ``spatial_mean``, or 'pool as ...': the squeeze another way, for comparison);
    or, with 'modules', computes the whole gate as ``optimize`` did before, through four submodule
    calls (Linear, ReLU, Linear, Sigmoid) instead of tensor ops on the gate's own weights."""

    def __init__(self, gate: ExcitationGate, keep: str):
        super().__init__()
        self.real, self.keep = gate, keep
        self.recorded = None
        self.squeezed = None
        if keep == 'modules':
            self.fc1 = torch.nn.Linear(gate.fc1_weight.shape[1], gate.fc1_weight.shape[0])
            self.fc2 = torch.nn.Linear(gate.fc2_weight.shape[1], gate.fc2_weight.shape[0])
            with torch.no_grad():
                for fc, w, b in ((self.fc1, gate.fc1_weight, gate.fc1_bias),
                                 (self.fc2, gate.fc2_weight, gate.fc2_bias)):
                    fc.weight.copy_(w)
                    fc.bias.copy_(b)
            self.act, self.gate = torch.nn.ReLU(inplace=True), torch.nn.Sigmoid()

    def forward(self, x):
        if self.keep == 'modules':
            s = self.gate(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1).flatten(1)))))
            return s.reshape(-1, self.real.channels, 1, 1)
        if self.recorded is None:
            self.squeezed = F.adaptive_avg_pool2d(x, 1).flatten(1)
            self.recorded = self.real(x)
        if self.keep == 'pool':
            spatial_mean(x)
        elif self.keep == 'pool as global pooling':
            F.adaptive_avg_pool2d(x, 1)
        elif self.keep == 'pool as matrix-vector product':
            n, c, h, w = x.shape
            average = torch.full((h * w, 1), 1.0 / (h * w))
            if x.is_contiguous(memory_format=torch.channels_last):
                torch.matmul(average.t(), x.permute(0, 2, 3, 1).reshape(n, h * w, c))
            else:
                torch.matmul(x.reshape(n, c, h * w), average)
        elif self.keep == 'fc':
            s = F.linear(self.squeezed, self.real.fc1_weight, self.real.fc1_bias).relu_()
            F.linear(s, self.real.fc2_weight, self.real.fc2_bias).sigmoid_()
        elif self.keep == 'fc weights read':
            # what any exact fp32 gate must pay at batch 1: its FC weights fetched from memory (the
            # convolutions stream ~90 MiB of weights through the caches between two reads)
            self.real.fc1_weight.sum()
            self.real.fc2_weight.sum()
        return self.recorded


def with_gates(model, keep):
    for name, module in list(model.named_modules()):
        if isinstance(module, ExcitationGate):
            parent, _, child = name.rpartition('.')
            setattr(model.get_submodule(parent), child, GateVariant(module, keep))
    return model


def eager_table(arch, rounds, block, memory_format, format_name):
    se = randomize_bn(timm.create_model(arch))
    plain = randomize_bn(timm.create_model(arch, se_layer='none'))
    make = lambda m, **kw: optimize(m, memory_format=memory_format, **kw)  # noqa: E731
    models = {'SE-free twin': make(plain),
              'SE (real gate)': make(se),
              "SE, gate into the 1x1 convolution's weights at batch 1 (fold_gate=True)": make(se, fold_gate=True),
              'SE, gate through five module calls (before)': with_gates(make(se), 'modules'),
              'constant gate (scale only)': with_gates(make(se), 'nothing'),
              'squeeze only (spatial_mean: a mean)': with_gates(make(se), 'pool'),
              'squeeze only, as global pooling': with_gates(make(se), 'pool as global pooling'),
              'squeeze only, as a matrix-vector product': with_gates(make(se), 'pool as matrix-vector product'),
              'FCs only': with_gates(make(se), 'fc'),
              'FC weights read only (a sum each: the memory floor)': with_gates(make(se), 'fc weights read')}
    medians, times = measure({key: torch_runner(m) for key, m in models.items()}, 1, rounds, warmup=2, block=block,
                             with_times=True)
    gates = [m for m in models['SE (real gate)'].modules() if isinstance(m, ExcitationGate)]
    fc = sum(g.fc1_weight.numel() + g.fc2_weight.numel() for g in gates)
    conv = sum(m.weight.numel() for m in plain.modules() if isinstance(m, torch.nn.Conv2d))  # what streams past
    print(f'{arch}, optimize ({format_name}), batch 1, {rounds} rounds x {block} calls, '
          f'{torch.get_num_threads()} threads; '
          f'gate FC weights {fc / 1e6:.2f} M ({4 * fc / 2**20:.1f} MiB fp32) in {2 * len(gates)} matrices, '
          f'convolution weights {4 * conv / 2**20:.0f} MiB')
    print('| variant | ms | over SE-free (quartiles over rounds) |\n|---|---|---|')
    for key, t in medians.items():
        print(f"| {key} | {1000 * t:.1f} | {format_overhead(overhead_quartiles(times, key, 'SE-free twin', block))} |")


def ort_profile(path, threads, runs=30):
    import numpy as np
    import onnxruntime as ort

    from se_hub.deploy.export import DISABLED_OPTIMIZERS
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = path[:-5]
    opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    session = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'],
                                   disabled_optimizers=DISABLED_OPTIMIZERS)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    name = session.get_inputs()[0].name
    for _ in range(runs):
        session.run(None, {name: x})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    per_op, calls = defaultdict(float), Counter()
    for e in events:
        if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time'):
            per_op[e['args']['op_name']] += e['dur'] / runs / 1000
            calls[e['args']['op_name']] += 1
    return per_op, {op: n // runs for op, n in calls.items()}


def ort_table(threads, rounds, block):
    from bench_deploy import ort_runner

    from se_hub.deploy.export import export_model, sample_images
    from se_hub.deploy.quantize import quantize_onnx
    _, photos = sample_images()
    with tempfile.TemporaryDirectory() as work:
        profiles, files = {}, {}
        for label, kwargs in (('SE', {}), ('SE-free', dict(se_layer='none'))):
            fp32 = os.path.join(work, f'{label}.onnx')
            export_model(randomize_bn(timm.create_model('se_resnet50b', **kwargs)), 'onnx', fp32)
            files[(label, 'int8')] = int8 = fp32.replace('.onnx', '_int8.onnx')
            quantize_onnx(fp32, int8, photos, ort_only_gate_folding=True)
            profiles[(label, 'fp32')] = ort_profile(fp32, threads)
            profiles[(label, 'int8')] = ort_profile(int8, threads)
        # the same SE calibration with its gates left as QLinearMul (quantize.fold_gate_scales off)
        files[('SE, gates as QLinearMul', 'int8')] = multiply = os.path.join(work, 'SE_int8_mul.onnx')
        quantize_onnx(os.path.join(work, 'SE.onnx'), multiply, photos)
        profiles[('SE, gates as QLinearMul', 'int8')] = ort_profile(multiply, threads)
        medians, times = measure({label: ort_runner({1: path}, threads) for (label, _), path in files.items()}, 1,
                                 rounds, block=block, with_times=True)
    print(f'\nonnxruntime INT8 latency, bs1, {rounds} rounds x {block} calls round-robin')
    print('| graph | ms | SE overhead (quartiles over rounds) |\n|---|---|---|')
    for label, t in medians.items():
        print(f"| {label} | {1000 * t:.2f} | {format_overhead(overhead_quartiles(times, label, 'SE-free', block))} |")
    profiles[('SE', 'int8 (gates as QLinearMul)')] = profiles.pop(('SE, gates as QLinearMul', 'int8'))
    profiles[('SE-free', 'int8 (gates as QLinearMul)')] = profiles[('SE-free', 'int8')]
    for precision in ('fp32', 'int8', 'int8 (gates as QLinearMul)'):
        (se, se_calls), (plain, plain_calls) = profiles[('SE', precision)], profiles[('SE-free', precision)]
        print(f'\nonnxruntime {precision}, kernel ms per run by operator (calls per run), {threads} threads')
        print(f'total: SE {sum(se.values()):.2f} ms, SE-free {sum(plain.values()):.2f} ms')
        print('| operator | SE ms (calls) | SE-free ms (calls) |\n|---|---|---|')
        for op in sorted(set(se) | set(plain), key=lambda o: -(se.get(o, 0) - plain.get(o, 0))):
            print(f'| {op} | {se.get(op, 0):.2f} ({se_calls.get(op, 0)}) | {plain.get(op, 0):.2f} '
                  f'({plain_calls.get(op, 0)}) |')


def openvino_profiles(paths, precision, threads, size, runs=30):
    """{label: {(part, '<layer type> (<kernel>)'): median ms per run}} of each IR in ``paths`` ({label: xml}),
    from OpenVINO's performance counters, the IRs run alternately; part is 'SE gate' for the layers of
    ``optimize``'s gate modules (``gate_from_input``; MBConv's ``gate``: squeeze, FCs, gate) or SE modules, else
    'rest' (the SE scale, which OpenVINO cannot fuse into a convolution as the SE-free twin's shortcut addition,
    runs as a ``Subgraph``)."""
    import numpy as np

    from se_hub.deploy.openvino_runner import INFERENCE_PRECISION, ov_core
    config = {'INFERENCE_PRECISION_HINT': INFERENCE_PRECISION[precision], 'PERFORMANCE_HINT': 'LATENCY',
              'INFERENCE_NUM_THREADS': threads, 'PERF_COUNT': True}
    requests = {label: ov_core().compile_model(xml, 'CPU', config).create_infer_request()
                for label, xml in paths.items()}
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    samples = {label: defaultdict(list) for label in paths}
    for i in range(runs + 3):
        for label, request in requests.items():
            request.infer({0: x})
            if i < 3:
                continue
            per_kind = defaultdict(float)
            for info in request.profiling_info:
                gate = any(f'/{name}/' in info.node_name for name in ('gate_from_input', 'gate', 'se'))
                part = 'SE gate' if gate else 'rest'
                per_kind[(part, f'{info.node_type} ({info.exec_type})')] += info.real_time.total_seconds() * 1000
            for key, ms in per_kind.items():
                samples[label][key].append(ms)
    return {label: {key: statistics.median(v) for key, v in kinds.items()} for label, kinds in samples.items()}


def openvino_table(model_name, threads, rounds, block):
    from bench_deploy import measure as timed_rounds

    from se_hub.deploy.benchmark import cpu_features, default_calibration
    from se_hub.deploy.openvino_backend import export_openvino
    from se_hub.deploy.openvino_runner import OpenVINORunner
    precisions = ['int8'] + (['bf16'] if cpu_features()['bf16'] else [])
    calibration = default_calibration()
    with tempfile.TemporaryDirectory() as work:
        files = {}
        for label, kwargs in (('SE', {}), ('SE-free', dict(se_layer='none'))):
            model = randomize_bn(timm.create_model(model_name, **kwargs))
            for precision in precisions:
                files[label, precision] = path = os.path.join(work, f'{label}-{precision}.xml')
                export_openvino(model, path, precision, calibration=calibration if precision == 'int8' else None)
        def runner(path, precision):
            run = OpenVINORunner(path, precision, threads=threads)
            return lambda x: run(x.numpy())

        runners = {f'{label} {precision}': runner(path, precision) for (label, precision), path in files.items()}
        medians, times = timed_rounds(runners, 1, rounds, block=block, with_times=True)
        size = model.pretrained_cfg['input_size'][-1]
        print(f'\nOpenVINO latency, {model_name} and its SE-free twin, bs1 {size}x{size}, {rounds} rounds x {block} '
              f'calls round-robin, {threads} threads')
        print('| IR | ms | SE overhead (quartiles over rounds) |\n|---|---|---|')
        for label, t in medians.items():
            twin = label.replace('SE ', 'SE-free ', 1) if label.startswith('SE ') else label
            overhead = format_overhead(overhead_quartiles(times, label, twin, block)) if twin != label else ''
            print(f'| {label} | {1000 * t:.2f} | {overhead} |')
        for precision in precisions:
            profiles = openvino_profiles({label: files[label, precision] for label in ('SE', 'SE-free')}, precision,
                                         threads, size)
            se, plain = profiles['SE'], profiles['SE-free']
            print(f'\nOpenVINO {precision}, ms per run by layer type (kernel), from PERF_COUNT (medians, the two IRs '
                  f'alternately), {threads} threads')
            for part in ('SE gate', 'rest'):
                print(f'{part}: SE {sum(v for k, v in se.items() if k[0] == part):.2f} ms, SE-free '
                      f'{sum(v for k, v in plain.items() if k[0] == part):.2f} ms')
            print('| part | layer (kernel) | SE ms | SE-free ms |\n|---|---|---|---|')
            for key in sorted(set(se) | set(plain), key=lambda k: -(se.get(k, 0) - plain.get(k, 0))):
                if max(se.get(key, 0), plain.get(key, 0)) >= 0.01:
                    print(f'| {key[0]} | {key[1]} | {se.get(key, 0):.2f} | {plain.get(key, 0):.2f} |')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='se_resnet50b',
                        help='an se_hub model with an se_layer=none twin, for the eager and OpenVINO tables '
                             '(e.g. se_efficientnet_b0; results files of other models than the default are '
                             'named after them)')
    parser.add_argument('--rounds', type=int, default=20)
    parser.add_argument('--block', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--memory-format', choices=['channels_last', 'contiguous'], default='channels_last')
    parser.add_argument('--ort', action='store_true', help='also profile onnxruntime fp32 and INT8 by operator')
    parser.add_argument('--openvino', action='store_true',
                        help='also profile OpenVINO bf16 and INT8 by layer (performance counters)')
    parser.add_argument('--no-eager', dest='eager', action='store_false', help='skip the eager gate variants')
    record.add_option(parser)
    args = parser.parse_args()
    if args.ort and args.model != 'se_resnet50b':
        parser.error('--ort profiles se_resnet50b only (its gate-folding variants are the bottleneck\'s)')
    what = 'se_cost' if args.model == 'se_resnet50b' else f'se_cost-{args.model}'
    with record.recording(args.results, what):
        torch.set_num_threads(args.threads)
        fmt = torch.channels_last if args.memory_format == 'channels_last' else torch.contiguous_format
        if args.eager:
            eager_table(args.model, args.rounds, args.block, fmt, args.memory_format)
        if args.ort:
            ort_table(args.threads, args.rounds, args.block)
        if args.openvino:
            openvino_table(args.model, args.threads, args.rounds, args.block)


if __name__ == '__main__':
    main()
