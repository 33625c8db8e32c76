"""OpenVINO as an export format: se_hub's ONNX export (``export_model``) converted to an OpenVINO IR (``.xml`` +
``.bin``) with the same metadata in the IR's runtime info, in f32, bf16 or INT8.

* f32: float32 weights, run with OpenVINO's f32 inference precision.
* bf16: weights stored as float16 (half the file), run with the bf16 inference-precision hint: OpenVINO's CPU
  plugin runs the float layers in bf16 (AMX or AVX-512 BF16); where the CPU has neither, in f32.
The precision is recorded in the metadata, and ``openvino_runner`` compiles with the hint it names: OpenVINO 2026.4
does not take the hint from an IR's ``runtime_options`` (measured), and left to itself runs f32 files in bf16
wherever the CPU has bf16. Outside se_hub: ``core.compile_model(xml, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})``.
* int8, two quantizers (``int8_method``), each calibrated on a folder of images (or a list of PIL images):
  'qdq' (default): se_hub's own INT8 ONNX file (``quantize.quantize_onnx``: SE gate path, stem resolution and
  classifier float32, 7-bit dense weights, bias correction), which OpenVINO reads as is; 'nncf': OpenVINO's own
  post-training quantizer (``nncf.quantize``) on the IR, the same layers left float (``gate_nodes``,
  ``float_ends``). Measured on the real EfficientNet-Lite0 weights (AMD EPYC, AVX-512 VNNI; the six calibration
  photos of the tests, the four ``verify_export`` photos): 'qdq' keeps every top-1 with logit cosine >= 0.99;
  NNCF 3.4 falls to cosine 0.67..0.90 with top-1s lost (presets PERFORMANCE / MIXED, fast bias correction on or
  off, overflow fix on or off alike), and reaches 0.996 only with every depthwise convolution left float.

Running an IR: ``export.ExportedModel('model.xml')`` (through ``openvino_runner``), as for the other formats.
"""
import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from torch import nn

from .export import METADATA_KEY, export_model, photo_batch
from .openvino_runner import INSTALL_HINT, require_openvino

PRECISIONS = ('f32', 'bf16', 'int8')
INT8_METHODS = ('qdq', 'nncf')  # see the module docstring
GATE_TYPES = ('Sigmoid', 'HSigmoid', 'Clamp', 'Tanh', 'Relu')  # OpenVINO op types an SE gate ends with
_GATE_PATH_TYPES = ('MatMul', 'Convolution', 'Add', 'Multiply', 'Relu', 'Swish', 'HSwish', 'Clamp', 'Reshape',
                    'Squeeze', 'Unsqueeze', 'Sigmoid', 'HSigmoid', 'Divide')


def require_nncf():
    try:
        import nncf
    except ImportError:
        raise ImportError(f'INT8 through OpenVINO needs the nncf package: {INSTALL_HINT}') from None
    return nncf


def gate_nodes(ov_model) -> List[str]:
    """The friendly names of the ops on each SE gate path of an OpenVINO model: from a global average pool
    (``ReduceMean``) through the two FCs (``MatMul`` / 1x1 ``Convolution`` with their bias ``Add``) to the gate
    activation, where the path is a single chain. A pool whose chain does not reach a gate after two FCs (the
    classifier's pool) gives nothing."""
    found = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != 'ReduceMean':
            continue
        chain, current, fcs = [], op, 0
        while len(chain) <= 16:
            users = list(current.output(0).get_target_inputs())
            if len(users) != 1:
                break
            current = users[0].get_node()
            kind = current.get_type_name()
            if kind not in _GATE_PATH_TYPES:
                break
            chain.append(current.get_friendly_name())
            fcs += kind in ('MatMul', 'Convolution')
            if fcs == 2 and kind in GATE_TYPES:
                found += chain
                break
    return found


def _calibration_batch(meta: Dict[str, Any], calibration) -> list:
    from .quantize import calibration_images, load_images
    images = load_images(calibration_images(calibration)) if isinstance(calibration, (str, Path)) else calibration
    batch = photo_batch(meta, images).numpy()
    return [batch[i:i + 1] for i in range(len(batch))]


def float_ends(onnx_path: str, ov_model) -> List[str]:
    """The friendly names of the OpenVINO ops made from the layers ``quantize_onnx`` keeps float32 by default: the
    stem and what runs at its resolution before the first residual add (``quantize.high_resolution_nodes``) and
    the classifier (the last ``Gemm`` / ``MatMul``). OpenVINO names an ONNX node's ops after it (a Conv becomes
    ``NAME/WithoutBiases`` and its bias ``Add`` ``NAME``)."""
    import onnx

    from .quantize import high_resolution_nodes
    proto = onnx.shape_inference.infer_shapes(onnx.load(onnx_path))
    onnx_names = high_resolution_nodes(proto)
    onnx_names += [n.name for n in proto.graph.node if n.op_type in ('Gemm', 'MatMul')][-1:]
    ops = [op.get_friendly_name() for op in ov_model.get_ordered_ops()]
    return [op for op in ops if any(op == n or op.startswith(n + '/') for n in onnx_names)]


def quantize_ir(ov_model, onnx_path: str, meta: Dict[str, Any], calibration, keep_gate_float: bool = True,
                keep_ends_float: bool = True):
    """``ov_model`` (converted from ``onnx_path``) quantized to INT8 by NNCF on ``calibration`` (a folder of images
    or a list of PIL images, each through the model's own preprocessing), the SE gate paths (``gate_nodes``) and the
    stem's resolution and classifier (``float_ends``) left in float; returns (the quantized model, what was done)."""
    nncf = require_nncf()
    items = _calibration_batch(meta, calibration)
    ignored = (gate_nodes(ov_model) if keep_gate_float else []) + \
        (float_ends(onnx_path, ov_model) if keep_ends_float else [])
    # NNCF logs every op it leaves alone and draws progress bars: stdout is kept for results (`--json`)
    logger, level = logging.getLogger('nncf'), logging.getLogger('nncf').level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            quantized = nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items),
                                      ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))
    finally:
        logger.setLevel(level)
    return quantized, dict(method=f'NNCF {nncf.__version__} post-training quantization', calibration_images=len(items),
                           gate_float=keep_gate_float, ends_float=keep_ends_float, float_ops=len(ignored))


def export_openvino(model: nn.Module, output: str, precision: str = 'f32',
                    calibration: Optional[Union[str, Sequence]] = None, img_size: Optional[int] = None,
                    dynamic_batch: bool = False, keep_gate_float: bool = True,
                    keep_ends_float: bool = True, int8_method: str = 'qdq') -> Dict[str, Any]:
    """Write ``model`` as an OpenVINO IR: ``output`` (``.xml``) and the ``.bin`` beside it; returns the stored
    metadata (``export.metadata`` plus ``precision`` and, for INT8, ``int8``). ``calibration``: a folder of
    images or a list of PIL images, needed for ``precision='int8'``; ``int8_method``: 'qdq' or 'nncf' (module
    docstring); ``keep_gate_float`` / ``keep_ends_float``: INT8 leaves the SE gate path / the stem-resolution
    layers and classifier in float (as ``quantize_onnx`` does). Both files appear only when complete."""
    ov = require_openvino()
    output = Path(output)
    if output.suffix.lower() != '.xml':
        raise ValueError(f'an OpenVINO IR is written as NAME.xml (with NAME.bin beside it), not {output.name}')
    if precision not in PRECISIONS:
        raise ValueError(f'unknown OpenVINO precision {precision!r}: use one of {PRECISIONS}')
    if int8_method not in INT8_METHODS:
        raise ValueError(f'unknown INT8 method {int8_method!r}: use one of {INT8_METHODS}')
    if precision == 'int8' and calibration is None:
        raise ValueError('INT8 needs calibration images: give a folder of representative images (--calibration DIR)')
    output.parent.mkdir(parents=True, exist_ok=True)
    # the work folder sits beside the output, so that the final renames stay on one file system
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f'.{output.stem}.') as work:
        onnx_path = os.path.join(work, 'model.onnx')
        meta = export_model(model, 'onnx', onnx_path, img_size=img_size, dynamic_batch=dynamic_batch)
        if precision == 'int8' and int8_method == 'qdq':
            from .quantize import quantize_onnx
            quantized = os.path.join(work, 'int8.onnx')
            meta = quantize_onnx(onnx_path, quantized, calibration, keep_gate_fp32=keep_gate_float,
                                 keep_ends_fp32=keep_ends_float)
            meta['int8']['method'] += ', read by OpenVINO'
            ov_model = ov.convert_model(quantized)
        else:
            ov_model = ov.convert_model(onnx_path)
        meta = dict(meta, format='openvino', precision=precision)
        if precision == 'int8' and int8_method == 'nncf':
            ov_model, meta['int8'] = quantize_ir(ov_model, onnx_path, meta, calibration, keep_gate_float,
                                                 keep_ends_float)
        ov_model.set_rt_info(json.dumps(meta), [METADATA_KEY])
        staged = Path(work) / output.name
        try:
            ov.save_model(ov_model, str(staged), compress_to_fp16=precision == 'bf16')
        except RuntimeError as e:
            raise OSError(f'could not write {output}: {str(e).splitlines()[0]}') from None
        # weights first: a new .xml appears only once its weights are in place
        os.replace(staged.with_suffix('.bin'), output.with_suffix('.bin'))
        os.replace(staged, output)
    return meta
