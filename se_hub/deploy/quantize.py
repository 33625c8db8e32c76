"""INT8: static post-training quantization of an exported ONNX model with onnxruntime's
quantization tools (QDQ format, per-channel int8 weights, uint8 activations, percentile calibration on
real images), with the layers that carry the most error kept in float32 (mixed precision).

Kept float32 by default (measured on the real EfficientNet-Lite0/1/2 weights, see README "Deployment"):
the stem and what runs at its resolution before the first residual add (``high_resolution_nodes``:
in MBConv networks the first block's depthwise conv and projection, which alone carried two thirds of
the INT8 logit error of Lite0 and Lite1, a quarter of Lite2's), the classifier, and the SE gate path.
The SE squeeze is exported as ``GlobalAveragePool`` (see ``export.py``), which onnxruntime runs as an int8
kernel; the two FCs, their activation and the gate (a few thousand multiply-adds per block) can stay
float32 (``keep_gate_fp32``): ``gate_error`` measures what that keeps. Each quantized convolution's bias
then absorbs the mean error it leaves on the calibration images (``correct_biases``).

onnxruntime (1.32 here) quantizes, when it loads a model, the float weights of any Conv/Gemm fed by a
DequantizeLinear (graph optimizer ``WeightBiasQuantization``: per-tensor int8), which would undo the
float32 kept above; ``export.ort_session`` turns that optimizer off, and the one that would move a float32
stem's quantization above its max pool (``export.DISABLED_OPTIMIZERS``).
"""
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from .export import METADATA_KEY, photo_batch, write_file

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.ppm')
GATE_OPS = ('Sigmoid', 'HardSigmoid', 'Tanh', 'Relu', 'Clip')
ACTIVATION_OPS = ('Relu', 'Clip', 'HardSwish', 'Sigmoid', 'LeakyRelu')


def calibration_images(directory: str, count: Optional[int] = None) -> List[Path]:
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f'calibration directory not found: {directory}')
    files = sorted(p for p in root.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f'no images ({", ".join(IMAGE_SUFFIXES)}) under {directory}: give a folder of '
                         'representative images with --calibration')
    if count:
        # spread over the sorted list (class folders come in order)
        step = max(1, len(files) // count)
        files = files[::step][:count]
    return files


def load_images(paths: Iterable[Path]) -> list:
    """Calibration photos as RGB PIL images; a file that is not an image is an error naming it."""
    from ..images import read_rgb
    images = []
    for p in paths:
        try:
            images.append(read_rgb(p))
        except OSError as e:
            raise ValueError(f'cannot read calibration image {p}: {e}') from None
    return images


def _consumers(nodes) -> Dict[str, List[Any]]:
    """tensor name -> the nodes that read it"""
    consumers: Dict[str, List[Any]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def gate_paths(proto) -> List[Dict[str, Any]]:
    """The SE gate subgraphs of an exported model: global pool -> [Flatten] -> Gemm -> act -> Gemm
    -> gate op. Each: the node names after the pool and the gate's output tensor."""
    consumers = _consumers(proto.graph.node)
    found = []
    for node in proto.graph.node:
        if node.op_type not in ('GlobalAveragePool', 'GlobalMaxPool'):
            continue
        chain, current, gemms = [], node, 0
        while True:
            nxt = consumers.get(current.output[0], [])
            if len(nxt) != 1:
                break
            current = nxt[0]
            chain.append(current)
            if current.op_type in ('Gemm', 'MatMul', 'Conv'):
                gemms += 1
            elif gemms == 2 and current.op_type in GATE_OPS:
                found.append(dict(pool=node.name, nodes=[n.name for n in chain], gate_output=current.output[0]))
                break
            elif current.op_type not in ('Flatten', 'Reshape', 'Relu', 'Sigmoid', 'Mul', 'Clip', 'HardSigmoid',
                                         'HardSwish', 'Add', 'Div', 'Squeeze', 'Unsqueeze'):
                break
            if gemms > 2 or len(chain) > 12:
                break
    return found


def high_resolution_nodes(proto) -> List[str]:
    """The first convolution and the convolutions (with the activation right after each) that keep its
    output resolution and are no wider, up to the first residual ``Add``: EfficientNet's stem, first
    depthwise conv and first projection (the next, 6x wider expansion would cost the most in float32); a
    ResNet's 7x7 stem only (a max pool follows); a CIFAR net's stem and first block; Inception's first
    convolution. ``proto``: a model with shapes inferred (``quant_pre_process`` output)."""
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.value_info}
    producers = {o: n for n in proto.graph.node for o in n.output}
    stem, names = None, []
    for node in proto.graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == 'Add' and all(i in producers and producers[i].op_type != 'Constant' for i in node.input):
            break  # a residual add: the network's blocks start here
        if node.op_type == 'Conv':
            shape = shapes.get(node.output[0], [])
            if len(shape) != 4:
                break
            stem = shape if stem is None else stem
            if shape[2:] == stem[2:] and shape[1] <= stem[1]:
                names.append(node.name)
            elif shape[2] * shape[3] > 1:  # (an SE gate's 1x1 convs are passed over)
                break
        elif node.op_type in ACTIVATION_OPS and node.input[0] in producers and producers[node.input[0]].name in names:
            names.append(node.name)
    return names


def fold_gate_scales(proto) -> int:
    """Move each SE gate of a batch-1 QDQ graph into the quantized 1x1 convolution whose output it scales:
    ``QLinearConv``'s per-channel weight scale becomes ``weight_scale * gate`` (a run-time input), so the
    convolution writes ``conv(h) * gate`` quantized at the scale calibrated for the product, and the
    separate ``Mul`` (onnxruntime's ``QLinearMul``, the largest INT8 cost of SE) and the gate's own
    quantization go. The bias needs no change: ``(acc + bias) * x_scale * w_scale * gate`` is the
    gated output of the biased convolution.

    Applies where the gate is not computed from the convolution's output (the bottleneck's squeeze read
    from that convolution's *input*, see ``optimize``) and is a ``Sigmoid`` or ``HardSigmoid`` (in (0, 1));
    only at batch 1, since the weight scale holds one gate per channel, not per sample. Returns how many
    gates were folded; ``proto`` is changed in place."""
    from onnx import NodeProto, helper, numpy_helper

    graph = proto.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    if not dims or dims[0].dim_value != 1:
        return 0
    nodes = list(graph.node)  # one set of node objects: removals below are by their id()
    producers = {o: n for n in nodes for o in n.output}
    consumers = _consumers(nodes)
    inits = {i.name: i for i in graph.initializer}

    def only_consumer(name, op_type):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def produced(name, op_type):
        node = producers.get(name)
        return node if node is not None and node.op_type == op_type else None

    def gate_source(name):
        """The QuantizeLinear of a DQ(Q(gate)) input, if the gate is a sigmoid or hard sigmoid (through Reshape)."""
        dq = produced(name, 'DequantizeLinear')
        q = dq is not None and produced(dq.input[0], 'QuantizeLinear')
        if not q or len(consumers.get(q.output[0], [])) != 1:
            return None
        op = producers.get(q.input[0])
        while op is not None and op.op_type in ('Reshape', 'Flatten', 'Unsqueeze'):
            op = producers.get(op.input[0])
        return q if op is not None and op.op_type in ('Sigmoid', 'HardSigmoid') else None

    def upstream(name):
        """The tensor names ``name`` is computed from."""
        seen, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in producers:
                todo.extend(producers[n].input)
        return seen

    removed, added, folded = set(), [], 0
    for mul in [n for n in nodes if n.op_type == 'Mul']:
        out_q = only_consumer(mul.output[0], 'QuantizeLinear')
        for conv_side, gate_side in ((0, 1), (1, 0)):
            gate_q = gate_source(mul.input[gate_side])
            conv_dq = produced(mul.input[conv_side], 'DequantizeLinear')
            conv_q = conv_dq is not None and produced(conv_dq.input[0], 'QuantizeLinear')
            conv = conv_q and produced(conv_q.input[0], 'Conv')
            if out_q is None or gate_q is None or not conv or len(conv.input) != 3:
                continue
            if len(consumers[conv.output[0]]) != 1 or len(consumers[conv_q.output[0]]) != 1 \
                    or len(consumers[conv_dq.output[0]]) != 1:
                continue
            x_dq, w_dq, b_dq = (produced(conv.input[i], 'DequantizeLinear') for i in range(3))
            if x_dq is None or w_dq is None or b_dq is None or not all(i in inits for i in w_dq.input[:3]) \
                    or b_dq.input[0] not in inits:
                continue
            if conv.output[0] in upstream(gate_q.input[0]):
                continue  # the gate reads this convolution's output: it cannot scale the convolution itself
            x_scale = numpy_helper.to_array(inits[x_dq.input[1]]).astype(np.float64)
            w_scale = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float64)
            b_scale = numpy_helper.to_array(inits[b_dq.input[1]]).astype(np.float64)
            if x_scale.size != 1 or not np.allclose(b_scale, x_scale * w_scale, rtol=1e-5, atol=0):
                continue  # QLinearConv's bias must be at scale x_scale * w_scale
            prefix = conv.name + '_gated'
            flat = numpy_helper.from_array(np.array([-1], np.int64), prefix + '_shape')
            graph.initializer.append(flat)
            added.append((mul, [
                helper.make_node('Reshape', [gate_q.input[0], flat.name], [prefix + '_gate'], name=prefix + '_gate'),
                helper.make_node('Mul', [w_dq.input[1], prefix + '_gate'], [prefix + '_w_scale'],
                                 name=prefix + '_w_scale'),
                helper.make_node('QLinearConv', [x_dq.input[0], x_dq.input[1], x_dq.input[2], w_dq.input[0],
                                                 prefix + '_w_scale', w_dq.input[2], out_q.input[1], out_q.input[2],
                                                 b_dq.input[0]],
                                 [out_q.output[0]], name=prefix, **{a.name: helper.get_attribute_value(a)
                                                                    for a in conv.attribute}),
            ]))
            gate_dq = producers[mul.input[gate_side]]
            removed.update(id(n) for n in (conv, conv_q, conv_dq, mul, out_q, gate_q, gate_dq))
            for dq in (w_dq, b_dq):
                if len(consumers[dq.output[0]]) == 1:
                    removed.add(id(dq))
            folded += 1
            break
    if folded:
        insert = {id(mul): nodes for mul, nodes in added}
        kept = []
        for node in nodes:
            kept.extend(insert.get(id(node), []))
            if id(node) not in removed:
                kept.append(NodeProto())
                kept[-1].CopyFrom(node)
        del graph.node[:]
        graph.node.extend(kept)
        used = {name for node in graph.node for name in node.input}
        unused = [i for i in graph.initializer if i.name not in used]
        for init in unused:
            graph.initializer.remove(init)
    return folded


BIAS_CORRECTION_IMAGES = 16  # calibration images bias correction runs, once per corrected layer


def correct_biases(quantized, reference, batch: np.ndarray) -> int:
    """Empirical bias correction of a QDQ graph, in place: returns how many biases moved.

    Rounding weights and activations to 8 bits leaves errors whose per-channel mean is not zero, and
    every later layer inherits that shift. For each quantized convolution with an int32 bias, in graph
    order, the bias moves by the per-channel mean difference between what the next layer reads in
    ``reference`` (the float32 graph the quantizer started from: same tensor names) and in the INT8 graph
    (after the output's quantize-dequantize, so clipped to its calibrated range, with the earlier layers
    already corrected), over the first ``BIAS_CORRECTION_IMAGES`` images of ``batch`` (one image per
    run: batch-1 files). The method of Finkelstein et al. 2019 and Nagel et al. 2019 (section 4.2).
    On the real Lite0/1/2 weights it raised the minimum logit cosine to float32 on the four photos
    ``verify_export`` classifies from 0.9931 / 0.9928 / 0.9914 to 0.9970 / 0.9968 / 0.9974 (README)."""
    from onnx import numpy_helper
    producers = {o: n for n in quantized.graph.node for o in n.output}
    consumers: Dict[str, list] = {}
    for node in quantized.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {i.name: i for i in quantized.graph.initializer}
    reference_names = {o for n in reference.graph.node for o in n.output}
    layers = []  # (float32 name, name of what the next layer reads in the INT8 graph, int32 bias, its scale)
    for node in quantized.graph.node:
        bias = producers.get(node.input[2]) if node.op_type == 'Conv' and len(node.input) > 2 else None
        if bias is None or bias.op_type != 'DequantizeLinear' or bias.input[0] not in initializers:
            continue
        output = node.output[0]
        if output not in reference_names:
            continue
        read = output
        quantize = [c for c in consumers.get(output, []) if c.op_type == 'QuantizeLinear']
        dequantize = [c for c in consumers.get(quantize[0].output[0], []) if c.op_type == 'DequantizeLinear'] \
            if quantize else []
        if dequantize:
            read = dequantize[0].output[0]
        layers.append((output, read, initializers[bias.input[0]],
                       numpy_helper.to_array(initializers[bias.input[1]]).astype(np.float64)))
    if not layers:
        return 0
    images = batch[:BIAS_CORRECTION_IMAGES]
    expected = _channel_means(reference, [layer[0] for layer in layers], images)
    int32 = np.iinfo(np.int32)
    for (_, read, bias, scale), want in zip(layers, expected):
        (got,) = _channel_means(quantized, [read], images)
        moved = numpy_helper.to_array(bias).astype(np.int64) + np.round((want - got) / scale).astype(np.int64)
        bias.CopyFrom(numpy_helper.from_array(np.clip(moved, int32.min, int32.max).astype(np.int32), bias.name))
    return len(layers)


def _runs(proto, names: List[str], images: np.ndarray):
    """Per image of ``images`` (run one at a time in an ``ort_session``: batch-1 files), the values of the
    tensors ``names`` of ``proto``, made graph outputs."""
    import onnx

    from .export import ort_session
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    outputs = {o.name for o in proto.graph.output}
    for name in names:
        if name not in outputs:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, 'model.onnx')
        onnx.save(proto, path)
        session = ort_session(path)
    feed = session.get_inputs()[0].name
    for i in range(len(images)):
        yield session.run(names, {feed: images[i:i + 1]})


def tensor_values(proto, names: List[str], images: np.ndarray) -> List[np.ndarray]:
    """The values of the tensors ``names`` of ``proto`` on ``images``, concatenated along the batch axis."""
    runs = list(_runs(proto, names, images))
    return [np.concatenate([r[k] for r in runs]) for k in range(len(names))]


def _channel_means(proto, names: List[str], images: np.ndarray) -> List[np.ndarray]:
    """Per-channel means of the tensors ``names`` over ``images``, accumulated image by image (all of a
    network's activations for every image at once would not fit in memory)."""
    sums = None
    for run in _runs(proto, names, images):
        means = [v.mean(axis=tuple(a for a in range(v.ndim) if a != 1)) for v in run]
        sums = means if sums is None else [s + m for s, m in zip(sums, means)]
    return [s / len(images) for s in sums]


class _Reader:
    """onnxruntime CalibrationDataReader over a preprocessed image batch, one image at a time."""

    def __init__(self, input_name: str, batch: np.ndarray):
        self.input_name = input_name
        self.items = iter([batch[i:i + 1] for i in range(len(batch))])

    def get_next(self):
        item = next(self.items, None)
        return None if item is None else {self.input_name: item}

    def rewind(self):  # not needed by MinMax
        pass


def quantize_onnx(fp32_path: str, output: str, calibration: Sequence, keep_gate_fp32: bool = True,
                  keep_ends_fp32: bool = True, method: str = 'percentile', per_channel: bool = True,
                  keep_fp32: Sequence[str] = (), ort_only_gate_folding: bool = False, reduce_range: bool = True,
                  bias_correction: bool = True) -> Dict[str, Any]:
    """Quantize ``fp32_path`` (an ``export_model`` ONNX file) to ``output``; ``calibration``: a
    directory of images or a list of PIL images. Returns the metadata stored in the INT8 file.

    ``keep_ends_fp32``: the layers at the stem's resolution (``high_resolution_nodes``) and the
    classifier stay float32; ``method``: 'percentile' (99.999%, clips rare outliers) or 'minmax'
    (measured: no consistent difference on the Lite weights, README "Deployment"); ``keep_fp32``: more
    node names of the exported graph to keep float32; ``ort_only_gate_folding``: in a batch-1 graph, each
    bottleneck's SE gate scales its quantized 1x1 convolution's output through the weight scale
    (``fold_gate_scales``): faster in onnxruntime, but a run-time weight scale is a graph only onnxruntime
    runs (OpenVINO: "Model wasn't fully converted"), so off by default: the default file loads in both;
    ``reduce_range``: 7-bit weights for the dense (``group=1``) convolutions, which onnxruntime runs as uint8 x
    int8 GEMMs: on x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) those add pairs of products in
    int16, which saturates with 8-bit weights (Lite0 min logit cosine 0.983 and a flipped top-1 on an AVX2 CPU,
    0.993 and none with 7 bits); depthwise convolutions run in another kernel and keep 8 bits. False: 8 bits
    everywhere, for files that will only run on CPUs with VNNI or on ARM. ``bias_correction``: move each
    quantized convolution's bias by the mean error it leaves on the calibration images
    (``correct_biases``; one onnxruntime run per layer and image, up to ``BIAS_CORRECTION_IMAGES``)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = onnx.load(fp32_path)
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f'{fp32_path} has no se_hub metadata (export it with `se-hub export`)')
    meta = json.loads(props[METADATA_KEY])
    images = load_images(calibration_images(calibration)) if isinstance(calibration, (str, Path)) else calibration
    batch = photo_batch(meta, images).numpy()
    input_name = proto.graph.input[0].name
    with tempfile.TemporaryDirectory() as work:
        pre, quantized_path = os.path.join(work, 'pre.onnx'), os.path.join(work, 'int8.onnx')
        quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
        pre_proto = onnx.load(pre)
        gates = gate_paths(pre_proto)
        exclude = [name for g in gates for name in g['nodes']] if keep_gate_fp32 else []
        high_res = high_resolution_nodes(pre_proto) if keep_ends_fp32 else []
        if keep_ends_fp32:
            gemms = [n.name for n in pre_proto.graph.node if n.op_type in ('Gemm', 'MatMul')]
            exclude += high_res + gemms[-1:]
        unknown = sorted(set(keep_fp32) - {n.name for n in pre_proto.graph.node})
        if unknown:
            raise ValueError(f'keep_fp32: no node named {", ".join(unknown)} in {fp32_path}')
        exclude += list(keep_fp32)
        if method not in ('percentile', 'minmax'):
            raise ValueError(f"calibration method {method!r} is not 'percentile' or 'minmax'")
        calibrate = CalibrationMethod.Percentile if method == 'percentile' else CalibrationMethod.MinMax
        excluded = set(exclude)
        seven_bit = {node.input[1]: [{'axis': 0, 'reduce_range': True}] for node in pre_proto.graph.node
                     if reduce_range and node.op_type == 'Conv' and node.name not in excluded
                     and all(a.i == 1 for a in node.attribute if a.name == 'group')}
        # onnxruntime prints its calibration progress: keep stdout for results (`se-hub export --json`)
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(
                pre, quantized_path, _Reader(input_name, batch), quant_format=QuantFormat.QDQ,
                per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude, calibrate_method=calibrate,
                extra_options=dict(ActivationSymmetric=False, TensorQuantOverrides=seven_bit))
        quantized = onnx.load(quantized_path)
    corrected = correct_biases(quantized, pre_proto, batch) if bias_correction else 0
    folded = fold_gate_scales(quantized) if ort_only_gate_folding else 0
    meta = dict(meta, int8=dict(method='onnxruntime static QDQ' + (', per-channel' if per_channel else ''),
                                calibration=method, calibration_images=len(batch), gate_fp32=keep_gate_fp32,
                                ends_fp32=keep_ends_fp32, fp32_nodes=len(exclude), se_gates=len(gates),
                                gates_in_conv_scale=folded, dense_weights_7bit=len(seven_bit),
                                biases_corrected=corrected))
    del quantized.metadata_props[:]
    entry = quantized.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    write_file(Path(output), quantized.SerializeToString())
    return meta


def gate_error(fp32_path: str, int8_path: str, images: Sequence) -> List[Dict[str, float]]:
    """Per SE block: max and mean abs difference of the gate values, INT8 against float32, on
    ``images`` (each block's gate output is made a graph output of both models)."""
    import onnx
    proto = onnx.load(fp32_path)
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    names = [g['gate_output'] for g in gate_paths(proto)]
    batch = photo_batch(meta, images).numpy()
    fp32, int8 = tensor_values(proto, names, batch), tensor_values(onnx.load(int8_path), names, batch)
    results = []
    for name, a, b in zip(names, fp32, int8):
        d = np.abs(a.reshape(len(batch), -1) - b.reshape(len(batch), -1))
        results.append(dict(gate=name, max_abs=float(d.max()), mean_abs=float(d.mean())))
    return results
