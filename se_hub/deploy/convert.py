"""``se-hub export`` as a library call: a model to a file (ONNX, optionally INT8; TorchScript;
torch.export), then verified against eager PyTorch on real photos."""
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from torch import nn

from .export import FORMATS, SUFFIX, export_model, verify_export
from .quantize import calibration_images, load_images, quantize_onnx


def export_verified(model: Union[nn.Module, Callable[[], nn.Module]], fmt: str, output, img_size: Optional[int] = None,
                    dynamic_batch: bool = False, calibration: Optional[str] = None,
                    calibration_count: Optional[int] = 64, int8: bool = False, int8_gate: bool = False,
                    int8_full_range: bool = False, int8_bias_correction: bool = True) -> Dict[str, Any]:
    """Export ``model`` to ``output`` in ``fmt`` (``int8``: ONNX, then static INT8 quantization
    calibrated on the images of the folder ``calibration``), then :func:`verify_export` it against
    eager PyTorch on real photos; returns the verification with ``file`` added. ``model`` may be a
    function that builds it: it is called once the options and the calibration folder are checked."""
    if int8 and fmt != 'onnx':
        raise ValueError('--int8 works with --format onnx only')
    if int8 and not calibration:
        raise ValueError('--int8 needs --calibration DIR (a folder of representative images)')
    if calibration_count is not None and calibration_count < 1:
        raise ValueError('--calibration-count must be at least 1')
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    output = Path(output)
    if output.suffix.lower() != SUFFIX[fmt] and not (fmt == 'torchscript'
                                                     and output.suffix.lower() in ('.ts', '.torchscript')):
        raise ValueError(f'--output {output}: a {fmt} file should end in {SUFFIX[fmt]}')
    if int8:
        paths = calibration_images(calibration, calibration_count)  # fails before the export if it is empty
    if not isinstance(model, nn.Module):
        model = model()
    if int8:
        with tempfile.TemporaryDirectory() as work:
            fp32 = Path(work) / 'fp32.onnx'
            export_model(model, 'onnx', str(fp32), img_size, dynamic_batch)
            quantize_onnx(str(fp32), str(output), load_images(paths), keep_gate_fp32=not int8_gate,
                          reduce_range=not int8_full_range, bias_correction=int8_bias_correction)
    else:
        export_model(model, fmt, str(output), img_size, dynamic_batch)
    try:
        report = verify_export(model, str(output))
    except KeyboardInterrupt:
        # the file is complete (written atomically) and the export took the time: keep it, but say it
        raise KeyboardInterrupt(f'{output} is written but NOT verified against eager PyTorch; run the same '
                                'se-hub export again to export and verify it') from None
    report['file'] = str(output)
    return report
