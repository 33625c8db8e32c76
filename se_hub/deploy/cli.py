"""``se-hub export`` and ``se-hub predict`` on exported files. torch / onnx are imported in the
handlers only (the CLI starts fast)."""
import argparse
import json
from pathlib import Path
from typing import Any, Dict

EXPORTED_SUFFIXES = ('.onnx', '.pt2', '.pt', '.ts', '.torchscript')
_SUFFIX = {'onnx': '.onnx', 'torchscript': '.pt', 'pt2': '.pt2'}


def is_exported_file(spec: str) -> bool:
    return spec.lower().endswith(EXPORTED_SUFFIXES) and not spec.startswith(('hf-hub:', 'local-dir:'))


def _load(spec: str, pretrained: bool):
    import se_hub  # noqa: F401  (registers the models)
    from se_hub._compat import create_model
    from se_hub.models.catalog import split_model_name
    if not spec.startswith(('hf-hub:', 'local-dir:')):
        if Path(spec).is_dir():
            spec = f'local-dir:{spec}'
        else:
            split_model_name(spec)
    model = create_model(spec, pretrained=pretrained)
    return model.eval()


def export_command(args: argparse.Namespace) -> int:
    from .export import export_model, verify_export
    if args.int8 and args.format != 'onnx':
        raise ValueError('--int8 works with --format onnx only')
    if args.int8 and not args.calibration:
        raise ValueError('--int8 needs --calibration DIR (a folder of representative images)')
    if args.calibration_count is not None and args.calibration_count < 1:
        raise ValueError('--calibration-count must be at least 1')
    output = Path(args.output)
    if output.suffix.lower() != _SUFFIX[args.format] and not (args.format == 'torchscript'
                                                                and output.suffix.lower() in ('.ts', '.torchscript')):
        raise ValueError(f'--output {output}: a {args.format} file should end in {_SUFFIX[args.format]}')
    if args.int8:
        from .quantize import calibration_images
        calibration_images(args.calibration, args.calibration_count)  # fail before the export if it is empty
    model = _load(args.model, args.pretrained)
    if args.int8:
        import tempfile

        from .quantize import load_images, quantize_onnx
        with tempfile.TemporaryDirectory() as work:
            fp32 = Path(work) / 'fp32.onnx'
            export_model(model, 'onnx', str(fp32), args.img_size, args.dynamic_batch)
            images = load_images(calibration_images(args.calibration, args.calibration_count))
            quantize_onnx(str(fp32), str(output), images, keep_gate_fp32=not args.int8_gate,
                          reduce_range=not args.int8_full_range, bias_correction=args.int8_bias_correction)
    else:
        export_model(model, args.format, str(output), args.img_size, args.dynamic_batch)
    report = verify_export(model, str(output))
    report['file'] = str(output)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    _print_verification(args.model, report, int8=args.int8)
    return 0


def _print_verification(spec: str, report: Dict[str, Any], int8: bool) -> None:
    print(f"wrote {report['file']}")
    kind = 'INT8 ' if int8 else ''
    print(f"verification against eager PyTorch ({spec}) on {len(report['images'])} real photos: "
          f"max abs logit difference {report['max_abs_diff']:.3g}, cosine >= {min(report['cosine']):.5f}, "
          f"same top-1: {'yes' if report['same_top1'] else 'NO'}")
    for image, eager, exported in zip(report['images'], report['top5_eager'], report['top5_exported']):
        print(image)
        print('  eager   : ' + '; '.join(f'{n} {p:.1%}' for n, p in eager))
        print(f'  {kind}export: ' + '; '.join(f'{n} {p:.1%}' for n, p in exported))


def predict_exported(path: str, images):
    """Class probabilities of ``images`` (PIL) from an exported ``.onnx`` / ``.pt`` / ``.pt2`` file, with the
    preprocessing and labels stored alongside it: ``(probabilities, label names, header line)``."""
    import torch

    from .export import ExportedModel, transform_from
    exported = ExportedModel(path)
    transform = transform_from(exported.meta)
    probs = exported(torch.stack([transform(img) for img in images])).float().softmax(-1)
    meta = exported.meta
    header = (f"{path} ({exported.kind}{', INT8' if 'int8' in meta else ''}: {meta['model']}"
              f"{'.' + meta['tag'] if meta.get('tag') else ''})")
    return probs, exported.labels, header
