"""Running an OpenVINO IR (``.xml`` + ``.bin``) on the CPU: the runtime half of the OpenVINO backend, kept apart
from the export half (``openvino_backend``) so that ``export.ExportedModel`` can dispatch here without an
import circle. OpenVINO is an optional dependency, imported only when used."""
import json
from functools import cached_property
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

INSTALL_HINT = "pip install -e '.[openvino]'"
# what OpenVINO calls each precision se_hub offers (its INFERENCE_PRECISION_HINT); an INT8 IR's float layers run f32
INFERENCE_PRECISION = {'f32': 'f32', 'bf16': 'bf16', 'int8': 'f32'}


def require_openvino():
    """The ``openvino`` module, or one clear error saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise ImportError(f'the OpenVINO backend needs the openvino package: {INSTALL_HINT}') from None
    return openvino


_CORE = None


def ov_core():
    """One ``openvino.Core`` per process (creating one loads every device plugin)."""
    global _CORE
    if _CORE is None:
        _CORE = require_openvino().Core()
    return _CORE


def openvino_capabilities() -> list:
    """OpenVINO's view of the CPU (``OPTIMIZATION_CAPABILITIES``: 'FP32', 'BF16', 'INT8', ...), [] without it."""
    try:
        return list(ov_core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))
    except ImportError:
        return []


class OpenVINORunner:
    """An IR (or any file OpenVINO reads: an ONNX file too) compiled for the CPU: ``runner(array) -> array``
    (numpy, NCHW float32 in, logits out).

    ``precision``: 'f32', 'bf16' or 'int8' (the precision the file was exported for); None: the ``precision``
    recorded in the JSON stored under ``metadata_key`` in the IR's runtime info (f32 if none). OpenVINO's CPU
    plugin runs float layers in bf16 by default wherever the CPU has bf16 instructions, so the hint is always set
    explicitly: an f32 file runs in f32. ``threads``: OpenVINO's inference threads (default: all cores).

    A file with a dynamic batch runs each batch shape in a copy compiled for that shape (the last
    ``STATIC_SHAPES`` kept; ``static_shapes`` lists them): OpenVINO's CPU kernels for a dynamic shape are
    slower (docs/deployment.md, "OpenVINO"). The first call at a new shape pays its compilation; the dynamic
    model itself (``compiled``, ``request``) is compiled only if used (a shape the copies cannot take)."""
    STATIC_SHAPES = 4

    def __init__(self, path: str, precision: Optional[str] = None, threads: Optional[int] = None,
                 metadata_key: Optional[str] = None):
        self.path = Path(path)
        if self.path.suffix.lower() == '.xml' and not self.path.with_suffix('.bin').is_file():
            raise ValueError(f'{path}: its weights file {self.path.with_suffix(".bin").name} is missing '
                             '(an OpenVINO IR is the .xml and the .bin beside it)')
        core = ov_core()
        try:
            self.model = core.read_model(str(self.path))
        except RuntimeError as e:
            raise ValueError(f'{path} is not a model OpenVINO can read: {str(e).splitlines()[0]}') from None
        self.metadata = self.rt_info(metadata_key) if metadata_key else None
        if precision is None:
            precision = json.loads(self.metadata).get('precision', 'f32') if self.metadata else 'f32'
        if precision not in INFERENCE_PRECISION:
            raise ValueError(f'unknown OpenVINO precision {precision!r}: use one of {tuple(INFERENCE_PRECISION)}')
        self.precision = precision
        config = {'INFERENCE_PRECISION_HINT': INFERENCE_PRECISION[precision], 'PERFORMANCE_HINT': 'LATENCY'}
        if threads:
            config['INFERENCE_NUM_THREADS'] = int(threads)
        self.config = config
        self._dynamic_batch = self.model.input(0).get_partial_shape()[0].is_dynamic
        self._static: Dict[Tuple[int, ...], Any] = {}  # input shape -> infer request of a copy compiled for it
        if not self._dynamic_batch:
            _ = self.request  # a static file is compiled now: its errors belong to the construction

    @cached_property
    def compiled(self):
        """The file's model compiled as it is (for a dynamic batch: on first use)."""
        return ov_core().compile_model(self.model, 'CPU', self.config)

    @cached_property
    def request(self):
        return self.compiled.create_infer_request()

    def rt_info(self, key: str) -> Optional[str]:
        """The string stored under ``key`` in the IR's runtime info, None if absent."""
        return self.model.get_rt_info([key]).astype(str) if self.model.has_rt_info([key]) else None

    @property
    def dynamic_batch(self) -> bool:
        return self._dynamic_batch

    @property
    def static_shapes(self) -> List[Tuple[int, ...]]:
        """The input shapes a dynamic-batch file has copies compiled for (oldest first)."""
        return list(self._static)

    def _request_for(self, shape: Tuple[int, ...]):
        if not self._dynamic_batch:
            return self.request
        request = self._static.get(shape)
        if request is None:
            model = self.model.clone()
            try:
                model.reshape({model.input(0): list(shape)})
                request = ov_core().compile_model(model, 'CPU', self.config).create_infer_request()
            except RuntimeError:  # a shape the model does not take: the dynamic model says why
                return self.request
            if len(self._static) >= self.STATIC_SHAPES:
                self._static.pop(next(iter(self._static)))
            self._static[shape] = request
        return request

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        request = self._request_for(batch.shape)
        request.infer({0: batch})
        return request.get_output_tensor(0).data.copy()
