"""``se-hub export MODEL --format F --output FILE``: export (ONNX, optionally INT8; TorchScript; torch.export;
an OpenVINO IR in f32, bf16 or INT8), verified against eager PyTorch on real photos (se_hub/deploy/)."""
from ..parsers import EXPORT_FORMATS, INT8_METHODS, OPENVINO_PRECISIONS


def add_parser(sub) -> None:
    p = sub.add_parser(
        'export', help='export a model to ONNX (optionally INT8), TorchScript, torch.export (.pt2) or OpenVINO '
                       '(.xml + .bin; f32, bf16 or INT8), verified against eager PyTorch on real photos')
    p.add_argument('model', help='MODEL[.TAG] (pretrained weights), or local-dir:OUT (a fine-tuned export)')
    p.add_argument('--format', required=True, choices=EXPORT_FORMATS, help='onnx, torchscript, pt2 or openvino')
    p.add_argument('--output', required=True, metavar='FILE',
                   help='the file to write (.onnx / .pt / .pt2 / .xml, whose weights go to the .bin beside it)')
    p.add_argument('--img-size', type=int, help="input size (default: the model's pretrained input size)")
    p.add_argument('--dynamic-batch', action='store_true',
                   help="any batch size (default: batch 1; with --int8 --int8-ort-only-gate-folding only a batch-1 "
                        "file puts each bottleneck's SE gate into its convolution's weight scale)")
    p.add_argument('--precision', choices=OPENVINO_PRECISIONS,
                   help='openvino only: f32 (default), bf16 (float16 weights in the file, run in bf16 where the CPU '
                        'has it) or int8 (needs --calibration; the same as --int8)')
    p.add_argument('--int8', action='store_true',
                   help='static INT8 quantization (needs --calibration): an ONNX file that onnxruntime and OpenVINO '
                        'both run; with --format openvino the same as --precision int8')
    p.add_argument('--calibration', metavar='DIR', help='a folder of representative images for INT8 calibration')
    p.add_argument('--calibration-count', type=int, default=64, metavar='N',
                   help='use N images of the calibration folder (default 64)')
    p.add_argument('--int8-gate', action='store_true',
                   help='quantize the SE gate path (FCs + gate) too (default: keep it float32)')
    p.add_argument('--int8-method', choices=INT8_METHODS,
                   help="openvino --precision int8 only: qdq (default: se_hub's INT8 ONNX file, read by OpenVINO) "
                        "or nncf (OpenVINO's own quantizer; less accurate on the Lite weights, docs/deployment.md)")
    p.add_argument('--int8-ort-only-gate-folding', dest='ort_only_gate_folding', action='store_true',
                   help="onnx --int8 only: in a batch-1 file, each bottleneck's SE gate scales its quantized "
                        'convolution through the weight scale: faster in onnxruntime, but a file OpenVINO cannot '
                        'read')
    p.add_argument('--int8-full-range', action='store_true',
                   help='onnx --int8 only: 8-bit weights in every convolution, for CPUs with VNNI or ARM (default: '
                        "7-bit weights in the dense convolutions, whose onnxruntime kernels saturate on x86 CPUs "
                        'without VNNI)')
    p.add_argument('--int8-no-bias-correction', dest='int8_bias_correction', action='store_false',
                   help="onnx --int8 only: keep the quantized biases as rounded (default: move each convolution's "
                        'bias by the mean error it leaves on the calibration images)')
    p.add_argument('--no-pretrained', dest='pretrained', action='store_false',
                   help='random weights (to test an export path); the default loads pretrained weights')
    p.add_argument('--json', action='store_true', help='print the verification as JSON')


def run(args) -> int:
    import json
    import os

    import se_hub  # noqa: F401  (registers the models)
    from se_hub.deploy.convert import export_verified

    from ..specs import create
    report = export_verified(lambda: create(args.model, args.pretrained).eval(), args.format, args.output,
                             args.img_size, args.dynamic_batch, calibration=args.calibration,
                             calibration_count=args.calibration_count, int8=args.int8, int8_gate=args.int8_gate,
                             int8_full_range=args.int8_full_range, int8_bias_correction=args.int8_bias_correction,
                             precision=args.precision, int8_method=args.int8_method,
                             ort_only_gate_folding=args.ort_only_gate_folding)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    if args.format == 'openvino':
        xml = report['file']
        print(f"wrote {xml} and {os.path.splitext(xml)[0]}.bin (OpenVINO {report['precision']})")
        kind = f"{report['precision']} "
    else:
        print(f"wrote {report['file']}")
        kind = 'INT8 ' if args.int8 else ''
    print(f"verification against eager PyTorch ({args.model}) on {len(report['images'])} real photos: "
          f"max abs logit difference {report['max_abs_diff']:.3g}, cosine >= {min(report['cosine']):.5f}, "
          f"same top-1: {'yes' if report['same_top1'] else 'NO'}")
    for image, eager, exported in zip(report['images'], report['top5_eager'], report['top5_exported']):
        print(image)
        print('  eager   : ' + '; '.join(f'{n} {p:.1%}' for n, p in eager))
        print(f'  {kind}export: ' + '; '.join(f'{n} {p:.1%}' for n, p in exported))
    return 0
