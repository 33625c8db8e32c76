"""Which deployment path is fastest on this CPU, and what it costs in accuracy.

``benchmark(model)`` finds the CPU's features (``cpu_features``), plans the paths this machine can run
(``plan``: eager, ``optimize``, ``torch.compile`` when asked, onnxruntime fp32 / INT8, OpenVINO f32 / bf16 /
INT8; each path it cannot run is listed with the reason), builds them, times them round-robin (one call of
each path in turn, per round: load changes on a shared machine hit every path alike) at batch 1 and a chosen
batch, measures each path's logits against float32 eager PyTorch on real photos (max abs difference, cosine,
top-1 agreement), and recommends the fastest path whose accuracy holds (``COSINE_FLOOR`` and every top-1 kept).
"""
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

PATHS = ('eager', 'optimize', 'torch.compile', 'onnxruntime fp32', 'onnxruntime int8', 'openvino f32',
         'openvino bf16', 'openvino int8')
COSINE_FLOOR = 0.99  # a path's accuracy holds: min logit cosine to fp32 eager >= this and every top-1 kept
# INT8 calibration when none is given: scikit-image's other colour photos, none of the ones accuracy is judged on
# (export.SAMPLE_PHOTOS)
CALIBRATION_PHOTOS = ('immunohistochemistry', 'hubble_deep_field', 'colorwheel', 'retina', 'stereo_motorcycle')
_MODULES = ('onnx', 'onnxruntime', 'openvino', 'nncf')


def cpu_features(cpuinfo: Optional[str] = None, openvino_caps: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The CPU features that decide which paths are fast: from ``cpuinfo`` (the text of /proc/cpuinfo: x86
    ``flags``, ARM ``Features``; read from the machine if None) and OpenVINO's ``OPTIMIZATION_CAPABILITIES``
    (asked of OpenVINO, where installed, if None). ``bf16``: bf16 arithmetic (AMX, AVX-512 BF16, ARM BF16, or
    OpenVINO says so)."""
    if cpuinfo is None:
        try:
            with open('/proc/cpuinfo') as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ''
    flags, name = set(), ''
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(':')
        if key.strip() in ('flags', 'Features'):
            flags.update(value.split())
        elif key.strip() == 'model name' and not name:
            name = value.strip()
    if openvino_caps is None:
        openvino_caps = []
        if importlib.util.find_spec('openvino') is not None:
            from .openvino_runner import openvino_capabilities
            openvino_caps = openvino_capabilities()
    caps = [str(c) for c in openvino_caps]
    return dict(cpu=name or platform.processor() or platform.machine(), avx2='avx2' in flags,
                avx512='avx512f' in flags, vnni=bool(flags & {'avx512_vnni', 'avx_vnni'}),
                amx=bool(flags & {'amx_tile', 'amx_bf16', 'amx_int8'}),
                bf16=bool(flags & {'avx512_bf16', 'amx_bf16', 'bf16'}) or 'BF16' in caps,
                arm_dot_product=bool(flags & {'asimddp', 'i8mm'}), openvino=caps)


def installed_modules() -> List[str]:
    """The optional runtimes' modules that can be imported here."""
    return [m for m in _MODULES if importlib.util.find_spec(m) is not None]


def plan(features: Dict[str, Any], modules: Sequence[str], compile: bool = False,
         int8: bool = True) -> List[Dict[str, Optional[str]]]:
    """Every path of ``PATHS`` with ``skipped``: None where this machine will run it, else why not.
    ``features``: ``cpu_features()``; ``modules``: ``installed_modules()``."""
    def missing(*names, hint):
        absent = [n for n in names if n not in modules]
        return f'{" and ".join(absent)} not installed ({hint})' if absent else None

    ort = missing('onnx', 'onnxruntime', hint="pip install -e '.[deploy]'")
    ov = missing('onnx', 'openvino', hint="pip install -e '.[openvino]'")
    not_int8 = None if int8 else 'INT8 not asked for'
    reasons = {
        'eager': None,
        'optimize': None,
        'torch.compile': None if compile else 'not asked for (compile=True; it compiles for minutes)',
        'onnxruntime fp32': ort,
        'onnxruntime int8': ort or not_int8,
        'openvino f32': ov,
        'openvino bf16': ov or (None if features.get('bf16') else 'no bf16 on this CPU (needs AMX or AVX-512 BF16)'),
        # quantized by se_hub's QDQ quantizer (openvino_backend's default INT8 method), which is onnxruntime's
        'openvino int8': ov or missing('onnxruntime', hint="pip install -e '.[deploy]'; it quantizes for OpenVINO too")
        or not_int8,
    }
    return [dict(path=p, skipped=reasons[p]) for p in PATHS]


def default_calibration() -> list:
    import skimage.data
    from PIL import Image
    images = []
    for name in CALIBRATION_PHOTOS:
        data = getattr(skimage.data, name)()
        images += [Image.fromarray(a).convert('RGB') for a in (data[:2] if isinstance(data, tuple) else [data])]
    return images


def _torch_runner(module: nn.Module) -> Callable:
    def run(x):
        with torch.inference_mode():
            return module(x)
    return run


def _build(path: str, model: nn.Module, work: str, img_size: Optional[int], calibration,
           threads: Optional[int]) -> Callable:
    """A callable(batch tensor) -> logits tensor for ``path``; exported files have a dynamic batch."""
    from .optimize import optimize
    if path == 'eager':
        return _torch_runner(model)
    if path == 'optimize':
        return _torch_runner(optimize(model))
    if path == 'torch.compile':
        return _torch_runner(torch.compile(optimize(model)))
    from .export import export_model
    fp32 = os.path.join(work, 'fp32.onnx')
    if path.startswith('onnxruntime'):
        from .export import ort_session
        if not os.path.exists(fp32):
            export_model(model, 'onnx', fp32, img_size=img_size, dynamic_batch=True)
        file = fp32
        if path.endswith('int8'):
            from .quantize import quantize_onnx
            file = os.path.join(work, 'int8.onnx')
            quantize_onnx(fp32, file, calibration)
        session = ort_session(file, threads)
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    from .openvino_backend import export_openvino
    from .openvino_runner import OpenVINORunner
    precision = path.split()[-1]
    file = os.path.join(work, f'openvino_{precision}.xml')
    if precision == 'int8' and os.path.exists(os.path.join(work, 'int8.onnx')):
        file = os.path.join(work, 'int8.onnx')  # what export_openvino's INT8 converts: onnxruntime's INT8 file
    else:
        export_openvino(model, file, precision, calibration=calibration if precision == 'int8' else None,
                        img_size=img_size, dynamic_batch=True)
    runner = OpenVINORunner(file, precision, threads)
    return lambda x: torch.from_numpy(runner(x.numpy()))


def _accuracy(out: torch.Tensor, ref: torch.Tensor) -> Dict[str, Any]:
    out = out.float()
    cosine = torch.nn.functional.cosine_similarity(out, ref, dim=-1)
    agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
    return dict(max_abs_diff=float((out - ref).abs().max()), cosine=float(cosine.min()), top1_agreement=agree,
                accuracy_holds=bool(cosine.min() >= COSINE_FLOOR and agree == 1.0))


def _time_round_robin(runners: Dict[str, Callable], inputs: Dict[int, torch.Tensor], rounds: int,
                      progress: Callable[[str], None]) -> Dict[str, Dict[int, float]]:
    """Median ms per call of every runner at every batch size, one call of each in turn per round."""
    times: Dict[str, Dict[int, List[float]]] = {p: {b: [] for b in inputs} for p in runners}
    for x in inputs.values():  # warm-up: first calls allocate and pick kernels
        for run in runners.values():
            run(x)
    for r in range(rounds):
        progress(f'timing: round {r + 1}/{rounds}')
        for batch, x in inputs.items():
            for path, run in runners.items():
                start = time.perf_counter()
                run(x)
                times[path][batch].append((time.perf_counter() - start) * 1e3)
    return {p: {b: statistics.median(t) for b, t in per.items()} for p, per in times.items()}


def benchmark(model: nn.Module, batch_size: int = 16, rounds: int = 15, img_size: Optional[int] = None,
              compile: bool = False, int8: bool = True, calibration=None, threads: Optional[int] = None,
              paths: Optional[Sequence[str]] = None, features: Optional[Dict[str, Any]] = None,
              progress: Optional[Callable[[str], None]] = None, photos: Optional[Sequence] = None) -> Dict[str, Any]:
    """Time every path this machine can run on ``model`` (float32, eval) and measure its accuracy.

    ``batch_size``: timed besides batch 1; ``rounds``: timing rounds (medians reported); ``calibration``: INT8
    calibration images (a folder or PIL images; default ``CALIBRATION_PHOTOS``); ``threads``: for onnxruntime
    and OpenVINO (default: theirs); ``paths``: only these of ``PATHS``; ``features``: ``cpu_features()`` if None;
    ``progress``: called with a line of text as each step starts (``print_progress`` prints them); ``photos``: the
    PIL images accuracy is judged on and timed with (default: ``export.SAMPLE_PHOTOS``).
    Returns features, the plan (with skip reasons), one row per path run and the recommended path."""
    from .export import metadata, photo_batch
    progress = progress or (lambda line: None)
    unknown = sorted(set(paths or ()) - set(PATHS))
    if unknown:
        raise ValueError(f'unknown benchmark path {", ".join(unknown)}: choose from {", ".join(PATHS)}')
    if batch_size < 1 or rounds < 1:
        raise ValueError(f'batch_size and rounds must be >= 1 (got {batch_size} and {rounds})')
    features = cpu_features() if features is None else features
    steps = plan(features, installed_modules(), compile=compile, int8=int8)
    if paths:
        for step in steps:
            if step['path'] not in paths and step['path'] != 'eager':
                step['skipped'] = step['skipped'] or 'not asked for'
    model = model.eval()
    meta = metadata(model, img_size)
    photos = photo_batch(meta, photos)  # the photos accuracy is judged on
    if int8 and calibration is None:
        calibration = default_calibration()
    with torch.inference_mode():
        reference = model(photos).float()
    runners = {}
    with tempfile.TemporaryDirectory(prefix='se_hub_bench_') as work:
        for step in steps:
            if step['skipped']:
                continue
            progress(f'building {step["path"]}')
            try:
                runners[step['path']] = _build(step['path'], model, work, img_size, calibration, threads)
            except Exception as e:  # a path this model cannot take is reported, the others still run
                step['skipped'] = f'failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
        accuracy = {}
        for path, run in runners.items():
            progress(f'accuracy: {path}')
            accuracy[path] = _accuracy(run(photos), reference)
        inputs = {b: photos.repeat((b + len(photos) - 1) // len(photos), 1, 1, 1)[:b] for b in sorted({1, batch_size})}
        ms = _time_round_robin(runners, inputs, rounds, progress)
    rows = []
    for path in runners:
        rows.append(dict(path=path, ms=ms[path], images_per_s={b: b * 1e3 / t for b, t in ms[path].items()},
                         speedup={b: ms['eager'][b] / t for b, t in ms[path].items()}, **accuracy[path]))
    holds = [r for r in rows if r['accuracy_holds']]
    recommended = {b: min(holds, key=lambda r: r['ms'][b])['path'] for b in inputs}
    return dict(features=features, input_size=meta['preprocessing']['input_size'], batch_sizes=list(inputs),
                rounds=rounds, plan=steps, rows=rows, recommended=recommended[1], recommended_by_batch=recommended)


def print_progress(line: str) -> None:
    print(f'[bench] {line}', file=sys.stderr, flush=True)


def format_report(result: Dict[str, Any]) -> str:
    """The benchmark as text: CPU features, one table row per path, the skipped paths and the recommendation."""
    f = result['features']
    found = [k for k in ('avx2', 'avx512', 'vnni', 'amx', 'bf16', 'arm_dot_product') if f.get(k)]
    batches = result['batch_sizes']
    lines = [f"CPU: {f.get('cpu', '?')}; features: {', '.join(found) or 'none of avx2/avx512/vnni/amx/bf16'}",
             f"input {'x'.join(map(str, result['input_size']))}, medians of {result['rounds']} rounds, round-robin",
             '| path | ' + ' | '.join(f'ms bs{b} | img/s bs{b} | speed-up bs{b}' for b in batches)
             + ' | max logit diff | min cosine | top-1 agree |',
             '|---|' + '--:|' * (3 * len(batches) + 3)]
    for r in result['rows']:
        timing = ' | '.join(f"{r['ms'][b]:.2f} | {r['images_per_s'][b]:.1f} | {r['speedup'][b]:.2f}x" for b in batches)
        lines.append(f"| {r['path']} | {timing} | {r['max_abs_diff']:.3g} | {r['cosine']:.4f} | "
                     f"{r['top1_agreement']:.0%} |")
    for step in result['plan']:
        if step['skipped']:
            lines.append(f"skipped {step['path']}: {step['skipped']}")
    lines.append(f"recommended: {result['recommended']} (fastest at batch 1 with cosine >= {COSINE_FLOOR} and "
                 'every top-1 kept'
                 + ''.join(f"; at batch {b}: {p}" for b, p in result['recommended_by_batch'].items() if b != 1) + ')')
    return '\n'.join(lines)
