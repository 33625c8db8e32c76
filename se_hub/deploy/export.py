"""Exports to ONNX, TorchScript and torch.export (``.pt2``), each file carrying its preprocessing and
label names, verified against eager PyTorch on real photos; running exported files.

The exported network is ``optimize(model, fold_gate=False)``: BN folded, the SE squeeze of a
bottleneck read from the last 1x1 convolution's input, the squeeze as a global pool (ONNX
``GlobalAveragePool``, which onnxruntime runs as an int8 kernel once quantized; ``ReduceMean``
would stay fp32 on dequantized tensors), and static weights (no gate folded into them).
"""
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

FORMATS = ('onnx', 'torchscript', 'pt2')
SUFFIX = {'onnx': '.onnx', 'torchscript': '.pt', 'pt2': '.pt2'}  # the file name each format is written to
EXPORTED_SUFFIXES = ('.onnx', '.xml', '.pt2', '.pt', '.ts', '.torchscript')  # .xml: an OpenVINO IR
METADATA_KEY = 'se_hub'  # ONNX metadata_props key / TorchScript and pt2 extra file name (JSON)
SAMPLE_PHOTOS = ('chelsea', 'coffee', 'astronaut', 'rocket')  # scikit-image's bundled photos
_DATA_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')


def label_names(model: nn.Module) -> List[str]:
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    num_classes = getattr(model, 'num_classes', 0)
    if names and len(names) == num_classes:
        return list(names)
    if num_classes == 1000:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    return [str(i) for i in range(num_classes)]


def data_config(model: nn.Module, img_size: Optional[int] = None) -> Dict[str, Any]:
    """The model's own preprocessing (timm's resolved data config), at ``img_size`` if given."""
    from timm.data import resolve_data_config
    cfg = resolve_data_config({}, model=model)
    if img_size:
        cfg['input_size'] = (cfg['input_size'][0], img_size, img_size)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in _DATA_KEYS}


def metadata(model: nn.Module, img_size: Optional[int] = None, **extra) -> Dict[str, Any]:
    name = getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__
    tag = getattr(model, 'pretrained_cfg', {}).get('tag') or ''
    return dict(model=name, tag=tag, weights=getattr(model, 'loaded_weights', None) or '',
                preprocessing=data_config(model, img_size), label_names=label_names(model), **extra)


def transform_from(meta: Dict[str, Any]):
    from timm.data import create_transform
    pre = dict(meta['preprocessing'])
    pre['input_size'] = tuple(pre['input_size'])
    pre['mean'], pre['std'] = tuple(pre['mean']), tuple(pre['std'])
    return create_transform(**pre)


def sample_images() -> Tuple[List[str], list]:
    """scikit-image's bundled real photos as PIL images."""
    import skimage.data
    from PIL import Image
    return [f'skimage:{n}' for n in SAMPLE_PHOTOS], [
        Image.fromarray(getattr(skimage.data, n)()).convert('RGB') for n in SAMPLE_PHOTOS]


def photo_batch(meta: Dict[str, Any], images: Optional[Sequence] = None) -> torch.Tensor:
    if images is None:
        images = sample_images()[1]
    transform = transform_from(meta)
    return torch.stack([transform(img) for img in images])


def write_file(output: Path, data: bytes) -> None:
    """Write a finished file: it appears only when complete, and a full disk is a clear error that leaves
    what was at ``output`` intact. Files are serialised in memory first: torch.jit.save and
    torch.export.save abort the whole process when a write to a path fails."""
    from ..files import write_bytes_atomic
    output.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(output, data)


def export_model(model: nn.Module, fmt: str, output: str, img_size: Optional[int] = None,
                 dynamic_batch: bool = False, opset: int = 17) -> Dict[str, Any]:
    """Write ``model`` (optimized, eval) to ``output`` in ``fmt``; returns the stored metadata.
    The file appears only when complete (written beside it, then renamed)."""
    from .optimize import optimize
    if fmt not in FORMATS:
        raise ValueError(f'unknown export format {fmt!r}: use one of {FORMATS}')
    meta = metadata(model, img_size, format=fmt, dynamic_batch=dynamic_batch)
    size = meta['preprocessing']['input_size']
    example = torch.randn(2 if dynamic_batch else 1, *size)
    fused = optimize(model, memory_format=None, fold_gate=False)
    buffer = io.BytesIO()
    if fmt == 'onnx':
        import onnx
        torch.onnx.export(
            fused, (example,), buffer, input_names=['image'], output_names=['logits'], opset_version=opset,
            dynamic_axes={'image': {0: 'batch'}, 'logits': {0: 'batch'}} if dynamic_batch else None,
            dynamo=False)
        proto = onnx.load_from_string(buffer.getvalue())
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(meta)
        data = proto.SerializeToString()
    elif fmt == 'torchscript':
        torch.jit.save(torch.jit.script(fused), buffer, _extra_files={METADATA_KEY: json.dumps(meta)})
        data = buffer.getvalue()
    else:
        dynamic = {'x': {0: torch.export.Dim('batch', min=1, max=1024)}} if dynamic_batch else None
        program = torch.export.export(fused, (example,), dynamic_shapes=dynamic)
        torch.export.save(program, buffer, extra_files={METADATA_KEY: json.dumps(meta)})
        data = buffer.getvalue()
    write_file(Path(output), data)
    return meta


# ---------------------------------------------------------------------------------------------
# Running exported files

# onnxruntime graph optimizers our sessions turn off, both measured on INT8 files (quantize.py):
# * WeightBiasQuantization gives float Conv/Gemm weights fed by a DequantizeLinear per-tensor int8 weights
#   at load time, undoing the float32 layers an INT8 export keeps;
# * QDQPropagationTransformer moves a QuantizeLinear up across a max pool, so a ResNet's float32 stem pool
#   ran on uint8 in plain NCHW (2.0 ms) instead of float32 in onnxruntime's blocked layout (0.1 ms): an INT8
#   SE-ResNet-50 runs 12% faster without it, with identical logits (EfficientNets, ResNeXt: no change).
DISABLED_OPTIMIZERS = ['WeightBiasQuantization', 'QDQPropagationTransformer']


def ort_session(path: str, threads: Optional[int] = None, save_optimized: Optional[str] = None):
    """An onnxruntime CPU session; idle worker threads do not spin (they would slow whatever shares the
    cores), the float32 layers of an INT8 file stay float32 (``DISABLED_OPTIMIZERS``).
    ``save_optimized``: also write the graph onnxruntime runs (after its optimizers) to this path."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    if threads:
        opts.intra_op_num_threads = threads
    if save_optimized:
        opts.optimized_model_filepath = str(save_optimized)
    return ort.InferenceSession(str(path), sess_options=opts, providers=['CPUExecutionProvider'],
                                disabled_optimizers=DISABLED_OPTIMIZERS)


class ExportedModel:
    """An exported file with its metadata: ``model(batch) -> logits`` (a torch tensor)."""

    def __init__(self, path: str):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f'exported model not found: {path}')
        suffix = self.path.suffix.lower()
        if suffix == '.onnx':
            import onnx
            proto = onnx.load(str(self.path), load_external_data=False)
            props = {p.key: p.value for p in proto.metadata_props}
            if METADATA_KEY not in props:
                raise ValueError(f'{path} has no se_hub metadata (export it with `se-hub export`)')
            self.meta = json.loads(props[METADATA_KEY])
            self.session = ort_session(str(self.path))
            self.kind = 'onnx'
        elif suffix == '.xml':  # an OpenVINO IR (openvino_backend.export_openvino)
            from .openvino_runner import OpenVINORunner
            self.session = OpenVINORunner(str(self.path), metadata_key=METADATA_KEY)
            self.meta = self._parse(self.session.metadata)
            self.kind = 'openvino'
        elif suffix == '.pt2':
            from .pt2 import load_pt2
            self.program, extra = load_pt2(self.path, extra_files=(METADATA_KEY,))
            self.module = self.program.module()
            self.meta = self._parse(extra[METADATA_KEY])
            self.kind = 'pt2'
        elif suffix in ('.pt', '.ts', '.torchscript'):
            extra = {METADATA_KEY: ''}
            self.module = torch.jit.load(str(self.path), _extra_files=extra, map_location='cpu')
            self.meta = self._parse(extra[METADATA_KEY])
            self.kind = 'torchscript'
        else:
            raise ValueError(f'{path}: unknown exported file type (expected .onnx, .xml for OpenVINO, .pt2 or '
                             '.pt/.ts for TorchScript)')

    def _parse(self, text) -> Dict[str, Any]:
        if not text:
            raise ValueError(f'{self.path} has no se_hub metadata (export it with `se-hub export`)')
        return json.loads(text if isinstance(text, str) else text.decode())

    @property
    def labels(self) -> List[str]:
        return self.meta['label_names']

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.kind in ('onnx', 'openvino'):
            if not self.meta.get('dynamic_batch') and batch.shape[0] != 1:
                return torch.cat([self(b[None]) for b in batch])
            if self.kind == 'openvino':
                return torch.from_numpy(self.session(batch.numpy()))
            (out,) = self.session.run(None, {self.session.get_inputs()[0].name: batch.numpy()})
            return torch.from_numpy(out)
        with torch.inference_mode():
            if self.kind == 'pt2' and not self.meta.get('dynamic_batch') and batch.shape[0] != 1:
                return torch.cat([self.module(b[None]) for b in batch])
            return self.module(batch)


def top5(logits: torch.Tensor, names: Sequence[str]) -> List[List[Tuple[str, float]]]:
    probs = logits.float().softmax(-1)
    top = probs.topk(min(5, probs.shape[-1]), dim=-1)
    return [[(names[i], round(float(p), 4)) for p, i in zip(ps.tolist(), ix.tolist())]
            for ps, ix in zip(top.values, top.indices)]


def verify_export(model: nn.Module, path: str) -> Dict[str, Any]:
    """Max abs logit difference of the exported file against eager PyTorch, and both top-5s, on
    scikit-image's real photos through the model's own preprocessing."""
    exported = ExportedModel(path)
    specs, images = sample_images()
    batch = photo_batch(exported.meta, images)
    with torch.inference_mode():
        ref = model.eval()(batch)
    out = exported(batch)
    names = exported.labels
    return dict(images=specs, max_abs_diff=float((out - ref).abs().max()),
                cosine=[float(c) for c in torch.nn.functional.cosine_similarity(out, ref, dim=-1)],
                top5_eager=top5(ref, names), top5_exported=top5(out, names),
                same_top1=bool((out.argmax(-1) == ref.argmax(-1)).all()))


def is_exported_file(spec: str) -> bool:
    """Whether a model spec names an exported file (``.onnx`` / ``.xml`` / ``.pt`` / ``.pt2`` ...) rather than a
    model."""
    return spec.lower().endswith(EXPORTED_SUFFIXES) and not spec.startswith(('hf-hub:', 'local-dir:'))


def predict_exported(path: str, images):
    """Class probabilities of ``images`` (PIL) from an exported ``.onnx`` / ``.xml`` / ``.pt`` / ``.pt2`` file, with the
    preprocessing and labels stored alongside it: ``(probabilities, label names, header line)``."""
    exported = ExportedModel(path)
    transform = transform_from(exported.meta)
    probs = exported(torch.stack([transform(img) for img in images])).float().softmax(-1)
    meta = exported.meta
    kind = (f"openvino {meta.get('precision', 'f32')}" if exported.kind == 'openvino'
            else exported.kind + (', INT8' if 'int8' in meta else ''))
    header = (f"{path} ({kind}: {meta['model']}"
              f"{'.' + meta['tag'] if meta.get('tag') else ''})")
    return probs, exported.labels, header
