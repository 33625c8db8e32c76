"""``se-hub export`` as a library call: a model to a file (ONNX, optionally INT8; TorchScript;
torch.export; an OpenVINO IR in f32, bf16 or INT8), then verified against eager PyTorch on real photos."""
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from torch import nn

from .export import FORMATS, SUFFIX, export_model, verify_export
from .openvino_backend import INT8_METHODS, export_openvino
from .openvino_backend import PRECISIONS as OPENVINO_PRECISIONS
from .quantize import calibration_images, load_images, quantize_onnx

EXPORT_FORMATS = FORMATS + ('openvino',)  # what ``se-hub export --format`` takes (openvino is imported when used)


def _check_options(fmt: str, output: Path, precision: Optional[str], int8: bool, calibration: Optional[str],
                   calibration_count: Optional[int], int8_method: Optional[str], ort_only_gate_folding: bool,
                   int8_full_range: bool, int8_bias_correction: bool) -> Optional[str]:
    """One clear error for each combination of options that means nothing; returns the OpenVINO precision
    (None for the other formats). ``--int8`` with ``--format openvino`` is ``--precision int8``."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}")
    if fmt == 'openvino':
        if precision is not None and precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(OPENVINO_PRECISIONS)}, not {precision!r}")
        if int8 and precision not in (None, 'int8'):
            raise ValueError(f'--int8 asks for --precision int8, not {precision}: give one of them')
        precision = 'int8' if int8 else precision or 'f32'
        int8 = precision == 'int8'
        if ort_only_gate_folding:
            raise ValueError('--int8-ort-only-gate-folding makes a file only onnxruntime runs (OpenVINO cannot read '
                             'it): it works with --format onnx --int8 only')
        if int8_full_range or not int8_bias_correction:
            raise ValueError('--int8-full-range and --int8-no-bias-correction work with --format onnx --int8 only')
        if int8_method is not None and not int8:
            raise ValueError('--int8-method chooses the INT8 quantizer: it needs --precision int8')
        if int8_method is not None and int8_method not in INT8_METHODS:
            raise ValueError(f"--int8-method must be one of {', '.join(INT8_METHODS)}, not {int8_method!r}")
        suffix = '.xml'
    else:
        if precision is not None:
            raise ValueError(f'--precision is for --format openvino (an ONNX file is float32, or INT8 with --int8), '
                             f'not --format {fmt}')
        if int8_method is not None:
            raise ValueError('--int8-method is for --format openvino --precision int8')
        if int8 and fmt != 'onnx':
            raise ValueError('--int8 works with --format onnx only (and openvino: --precision int8)')
        if ort_only_gate_folding and not int8:
            raise ValueError('--int8-ort-only-gate-folding needs --int8')
        suffix = SUFFIX[fmt]
    if int8 and not calibration:
        raise ValueError('INT8 needs --calibration DIR (a folder of representative images)')
    if calibration_count is not None and calibration_count < 1:
        raise ValueError('--calibration-count must be at least 1')
    ends = output.suffix.lower()
    if ends != suffix and not (fmt == 'torchscript' and ends in ('.ts', '.torchscript')):
        hint = ' (with NAME.bin beside it)' if fmt == 'openvino' else ''
        raise ValueError(f'--output {output}: a {fmt} file should end in {suffix}{hint}')
    return precision


def export_verified(model: Union[nn.Module, Callable[[], nn.Module]], fmt: str, output, img_size: Optional[int] = None,
                    dynamic_batch: bool = False, calibration: Optional[str] = None,
                    calibration_count: Optional[int] = 64, int8: bool = False, int8_gate: bool = False,
                    int8_full_range: bool = False, int8_bias_correction: bool = True,
                    precision: Optional[str] = None, int8_method: Optional[str] = None,
                    ort_only_gate_folding: bool = False) -> Dict[str, Any]:
    """Export ``model`` to ``output`` in ``fmt`` (one of ``EXPORT_FORMATS``), then :func:`verify_export` it against
    eager PyTorch on real photos; returns the verification with ``file`` added (and ``precision`` for OpenVINO).

    ``int8``: ONNX, then static INT8 quantization calibrated on the images of the folder ``calibration``
    (``ort_only_gate_folding``: ``quantize_onnx``'s onnxruntime-only graph); for ``fmt='openvino'`` it is
    ``precision='int8'``. ``precision``: OpenVINO only, 'f32' (default), 'bf16' or 'int8' (``int8_method``: 'qdq'
    or 'nncf', ``openvino_backend``). ``model`` may be a function that builds it: it is called once the options
    and the calibration folder are checked."""
    output = Path(output)
    precision = _check_options(fmt, output, precision, int8, calibration, calibration_count, int8_method,
                               ort_only_gate_folding, int8_full_range, int8_bias_correction)
    int8 = int8 or precision == 'int8'
    if int8:
        paths = calibration_images(calibration, calibration_count)  # fails before the export if it is empty
    if fmt == 'openvino':
        from .openvino_runner import require_openvino
        require_openvino()  # before building the model: one line saying how to install it
    if not isinstance(model, nn.Module):
        model = model()
    if fmt == 'openvino':
        export_openvino(model, str(output), precision, calibration=load_images(paths) if int8 else None,
                        img_size=img_size, dynamic_batch=dynamic_batch, keep_gate_float=not int8_gate,
                        int8_method=int8_method or 'qdq')
    elif int8:
        with tempfile.TemporaryDirectory() as work:
            fp32 = Path(work) / 'fp32.onnx'
            export_model(model, 'onnx', str(fp32), img_size, dynamic_batch)
            quantize_onnx(str(fp32), str(output), load_images(paths), keep_gate_fp32=not int8_gate,
                          reduce_range=not int8_full_range, bias_correction=int8_bias_correction,
                          ort_only_gate_folding=ort_only_gate_folding)
    else:
        export_model(model, fmt, str(output), img_size, dynamic_batch)
    report = verify_export(model, str(output))
    report['file'] = str(output)
    if precision:
        report['precision'] = precision
    return report
