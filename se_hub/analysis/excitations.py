"""Excitation analysis: what the SE gates of a trained network do, per class and per depth (the
paper's "role of excitation" study), on any data directory ``se-hub finetune`` reads.

Python::

    from se_hub.analysis import collect_excitations
    stats = collect_excitations('local-dir:runs/digits', 'digits/', max_images=50)
    print(stats.summary())            # class selectivity of each SE block
    stats.save('runs/digits-excitations')

Shell: ``se-hub excitations --model local-dir:runs/digits --data digits/ --output OUT``.

**What is recorded.** A forward hook on every channel gate of the model sees the gate of every
image; the gate is reduced to one value per channel (its spatial mean when the unit gates each
position, as the "NoSqueeze" ablation does) and folded into float64 running statistics per
(block, class, channel): image count, mean and population standard deviation (ddof=0), merged
batch by batch with Chan et al.'s pairwise update. Memory is bounded by blocks x classes x
channels, whatever the number of images: no gate is kept.

Gates read (``find_gates``):

- se_hub's ``SqueezeExcite`` (every SE family: residual, ResNeXt, Inception, MBConv, CIFAR,
  MobileNet / ShuffleNet, VGG, shake-shake): its forward returns the gate, hooked on the unit.
- timm's ``SEModule``, ``EffectiveSEModule``, EfficientNet ``SqueezeExcite``, ``EcaModule`` and
  ``CecaModule`` (``se_layer='eca'``) return ``x * gate``: their ``gate`` submodule is hooked.
- timm's ``CbamModule`` (``se_layer='cbam'``): the gate of its channel attention
  (``channel.gate``); its spatial attention map is not a channel excitation and is not recorded.
- anything else (timm's ``LightCbamModule``, whose channel gate is a function call, or a user's
  callable ``se_layer``) has no gate a hook can see: it is skipped with a warning, and a model
  with no readable gate at all is refused.

``features_only`` models (timm's feature wrappers) work: the gates of the kept stages are read.

**Which images.** The ``split`` (``val`` by default) of ``data``, in the data set's order, with the
model's own evaluation preprocessing (timm's ``resolve_data_config`` + ``create_transform``, as
``se-hub evaluate``). ``classes`` keeps only the named classes; ``max_images`` caps the images
*per class* (the first N of each class), so that every class weighs the same, as in the paper
(50 images per class).

**Class selectivity** of a block, with K classes (those with images), C channels, class-mean
gate vectors mu_k (length C) and per-channel within-class standard deviations sigma_k:

    between = mean over the K(K-1)/2 pairs k < l of  sqrt( mean_c (mu_k[c] - mu_l[c])^2 )
    within  = mean over the K classes of             sqrt( mean_c sigma_k[c]^2 )
    selectivity = between / within

``between`` is the root-mean-square (over channels) distance between two classes' mean gates,
``within`` the root-mean-square spread of one class's gates around its mean: both are in gate
units and do not grow with C. Selectivity near 0: every class gets the same gates (the paper's
early blocks); large: a class's gates sit far from other classes' compared with their own spread
(the paper's late, class-specific blocks). It is NaN with fewer than two classes, and infinite
when no class has any spread (one image per class).

What :meth:`ExcitationStats.save` writes: ``excitations.safetensors`` (per block ``mean/<block>``
and ``std/<block>``: (classes, channels) float32; ``counts``: images per class; JSON metadata),
``excitations.csv`` (one row per block and class), ``selectivity.csv`` (one row per block),
``excitations_by_depth.png`` and ``excitations_last_blocks.png``.
"""
import csv
import io
import json
import math
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..files import write_bytes_atomic

FORMAT = 'se_hub.excitations/1'


class NoGatesError(ValueError):
    """The model has no channel gate the analysis can read."""


# --------------------------------------------------------------------------- where the gates are

def _per_channel(gate: torch.Tensor) -> torch.Tensor:
    """(N, C, 1, 1) / (N, C, H, W) / (N, 1, C) gate -> (N, C): one value per image and channel."""
    if gate.dim() == 4:
        return gate.mean((2, 3)) if gate.shape[-2:] != (1, 1) else gate.flatten(1)
    return gate.reshape(gate.shape[0], -1)


def _gate_readers() -> List[Tuple[type, Callable[[nn.Module], nn.Module]]]:
    """(unit class, the submodule whose output is the gate), most specific first."""
    from timm.layers.cbam import CbamModule
    from timm.layers.eca import CecaModule, EcaModule
    from timm.layers.squeeze_excite import EffectiveSEModule, SEModule

    from .._compat import efficientnet_blocks
    from ..layers import SqueezeExcite
    return [
        (SqueezeExcite, lambda m: m),  # se_hub's unit returns the gate
        (SEModule, lambda m: m.gate),
        (EffectiveSEModule, lambda m: m.gate),
        (efficientnet_blocks.SqueezeExcite, lambda m: m.gate),
        (EcaModule, lambda m: m.gate),
        (CecaModule, lambda m: m.gate),
        (CbamModule, lambda m: m.channel.gate),
    ]


@dataclass
class Gate:
    name: str  # the attention unit's name in the model
    unit: nn.Module
    hooked: nn.Module  # the module whose output is the gate
    kind: str  # the unit's class name


def find_gates(model: nn.Module) -> List[Gate]:
    """Every channel gate of ``model`` that a forward hook can read, in module order. Attention
    units se_hub cannot read (see the module docstring) are skipped with a warning."""
    readers = _gate_readers()
    gates, skipped, inside = [], [], set()
    for name, module in model.named_modules():
        if any(name.startswith(p + '.') for p in inside):
            continue  # a unit's own submodules
        reader = next((r for cls, r in readers if isinstance(module, cls)), None)
        if reader is not None:
            gates.append(Gate(name, module, reader(module), type(module).__name__))
            inside.add(name)
        elif name.rpartition('.')[2] == 'se' and not isinstance(module, nn.Identity) and \
                sum(1 for _ in module.parameters()) > 0:
            skipped.append(f'{name} ({type(module).__name__})')  # an attention slot holding something else
            inside.add(name)
    if skipped:
        warnings.warn(f"{len(skipped)} attention unit(s) expose no gate module a hook can read and are left out: "
                      f"{', '.join(skipped[:4])}{', ...' if len(skipped) > 4 else ''}", stacklevel=2)
    return gates


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    return cfg.get('architecture') or type(model).__name__


def _no_gates_message(model: nn.Module) -> str:
    return (f'{_model_name(model)} has no SE gate to record (no SqueezeExcite, ECA or CBAM unit with a gate '
            'module): an SE-free network (se_layer=none, a *_none ablation) or an attention unit se_hub cannot '
            "read; analyse a model with SE blocks, e.g. se_layer='se'")


# --------------------------------------------------------------------------- running statistics

class _RunningGates:
    """Per class: image count, mean and sum of squared deviations of one block's gates (float64,
    CPU), merged batch by batch (Chan, Golub & LeVeque's pairwise update)."""

    def __init__(self, num_classes: int):
        self.k = num_classes
        self.count = torch.zeros(num_classes, dtype=torch.float64)
        self.mean: Optional[torch.Tensor] = None
        self.m2: Optional[torch.Tensor] = None

    def add(self, gates: torch.Tensor, labels: torch.Tensor) -> None:
        g = gates.detach().to('cpu', torch.float64)
        if self.mean is None:
            self.mean = torch.zeros(self.k, g.shape[1], dtype=torch.float64)
            self.m2 = torch.zeros_like(self.mean)
        n_b = torch.bincount(labels, minlength=self.k).to(torch.float64)
        mean_b = torch.zeros_like(self.mean).index_add_(0, labels, g) / n_b.clamp(min=1)[:, None]
        dev = g - mean_b[labels]
        m2_b = torch.zeros_like(self.m2).index_add_(0, labels, dev * dev)
        total = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / total.clamp(min=1))[:, None]
        self.m2 += m2_b + delta * delta * (self.count * n_b / total.clamp(min=1))[:, None]
        self.count = total


class _Recorder:
    """Forward hooks on every gate: each batch, every gate must fire exactly once."""

    def __init__(self, gates: List[Gate], num_classes: int):
        self.gates = gates
        self.running = [_RunningGates(num_classes) for _ in gates]
        self.calls = [0] * len(gates)
        self.labels: Optional[torch.Tensor] = None
        self.handles = [g.hooked.register_forward_hook(self._hook(i)) for i, g in enumerate(gates)]

    def _hook(self, i: int):
        def record(module, inputs, output):
            gate = _per_channel(output)
            if gate.shape[0] != self.labels.shape[0]:
                raise RuntimeError(f'the gate of {self.gates[i].name} has {gate.shape[0]} rows for a batch of '
                                   f'{self.labels.shape[0]} images')
            self.calls[i] += 1
            self.running[i].add(gate, self.labels)
        return record

    def check_batch(self) -> None:
        for gate, calls in zip(self.gates, self.calls):
            if calls != 1:
                what = ('never ran (its unit computes the gate without calling this module)' if calls == 0 else
                        f'ran {calls} times in one forward pass (a shared unit: its statistics would mix inputs)')
                raise RuntimeError(f'the gate of {gate.name} ({gate.kind}) {what}')
        self.calls = [0] * len(self.gates)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------- the statistics

@dataclass
class ExcitationStats:
    """Per-class gate statistics of each SE block: ``means[b]`` / ``stds[b]`` are (classes,
    channels) float64 arrays for block ``blocks[b]`` (in module order, which for se_hub's models is the
    order the forward pass runs them),
    ``counts[k]`` the images of class ``classes[k]``; ``std`` is the population std (ddof=0)."""
    blocks: List[str]
    classes: List[str]
    counts: np.ndarray
    means: List[np.ndarray]
    stds: List[np.ndarray]
    kinds: List[str] = field(default_factory=list)
    model: str = ''  # as given (a name, local-dir:PATH, ...)
    data: str = ''
    split: str = 'val'
    architecture: str = ''

    @property
    def channels(self) -> List[int]:
        return [m.shape[1] for m in self.means]

    def block_index(self, block: Union[int, str]) -> int:
        if isinstance(block, str):
            if block not in self.blocks:
                raise KeyError(f'no SE block named {block!r}; blocks: {", ".join(self.blocks)}')
            return self.blocks.index(block)
        return range(len(self.blocks))[block]

    def pooled(self, block: Union[int, str]) -> Tuple[np.ndarray, np.ndarray]:
        """Mean and std (ddof=0) of each channel's gate over all images of all classes."""
        b = self.block_index(block)
        w = self.counts.astype(np.float64)[:, None]
        n = max(1.0, float(w.sum()))
        mean = (w * self.means[b]).sum(0) / n
        second = (w * (self.stds[b] ** 2 + self.means[b] ** 2)).sum(0) / n
        return mean, np.sqrt(np.maximum(second - mean ** 2, 0.0))

    def selectivity(self) -> List[Dict[str, Any]]:
        """Per block: ``between``, ``within`` and ``selectivity = between / within`` (module docstring)."""
        present = self.counts > 0
        rows = []
        for b, name in enumerate(self.blocks):
            mu, sd = self.means[b][present], self.stds[b][present]
            k = len(mu)
            if k >= 2:
                diff = mu[:, None, :] - mu[None, :, :]
                rms = np.sqrt((diff ** 2).mean(-1))
                between = float(rms[np.triu_indices(k, 1)].mean())
            else:
                between = math.nan
            within = float(np.sqrt((sd ** 2).mean(-1)).mean()) if k else math.nan
            if math.isnan(between) or math.isnan(within):
                ratio = math.nan
            else:
                ratio = between / within if within > 0 else (math.inf if between > 0 else math.nan)
            rows.append({'block_index': b, 'block': name, 'channels': self.channels[b], 'between': between,
                         'within': within, 'selectivity': ratio})
        return rows

    def summary(self) -> str:
        """The selectivity of each block as a text table."""
        rows = self.selectivity()
        width = max([len(r['block']) for r in rows] + [5])
        lines = [f"{'#':>3}  {'block':<{width}}  {'channels':>8}  {'between':>8}  {'within':>8}  {'selectivity':>11}"]
        for r in rows:
            lines.append(f"{r['block_index']:>3}  {r['block']:<{width}}  {r['channels']:>8}  {r['between']:>8.4f}  "
                         f"{r['within']:>8.4f}  {r['selectivity']:>11.3f}")
        return '\n'.join(lines)

    def rows(self) -> List[Dict[str, Any]]:
        """One summary row per (block, class): the rows of ``excitations.csv``."""
        out = []
        for b, name in enumerate(self.blocks):
            all_mean, _ = self.pooled(b)
            for k, cls in enumerate(self.classes):
                mu, sd = self.means[b][k], self.stds[b][k]
                out.append({
                    'block_index': b, 'block': name, 'channels': mu.shape[0], 'class': cls,
                    'images': int(self.counts[k]),
                    'gate_mean': float(mu.mean()),  # mean over channels of the class-mean gate
                    'gate_spread': float(np.sqrt((sd ** 2).mean())),  # RMS over channels of the within-class std
                    'channel_mean_min': float(mu.min()), 'channel_mean_max': float(mu.max()),
                    'saturated_fraction': float((mu > 0.9).mean()),  # channels whose class-mean gate exceeds 0.9
                    'distance_to_all': float(np.sqrt(((mu - all_mean) ** 2).mean())),  # RMS, vs all classes
                })
        return out

    # ------------------------------------------------------------------------ files

    def save(self, output, figure_classes: Optional[Sequence[str]] = None) -> Dict[str, Path]:
        """Write the files listed in the module docstring into ``output`` (created; each file
        replaced atomically). ``figure_classes``: the classes drawn (default: up to four, spread
        over the class list). Returns the paths by kind."""
        from safetensors.numpy import save as safetensors_bytes
        out = writable_dir(output)
        tensors = {'counts': self.counts.astype(np.int64)}
        for name, mean, std in zip(self.blocks, self.means, self.stds):
            tensors[f'mean/{name}'] = np.ascontiguousarray(mean, dtype=np.float32)
            tensors[f'std/{name}'] = np.ascontiguousarray(std, dtype=np.float32)
        meta = {'format': FORMAT, 'model': self.model, 'architecture': self.architecture, 'data': self.data,
                'split': self.split,
                'blocks': self.blocks, 'kinds': self.kinds, 'classes': self.classes,
                'selectivity': [{k: r[k] for k in ('block', 'between', 'within', 'selectivity')}
                                for r in self.selectivity()]}
        paths = {'arrays': out / 'excitations.safetensors', 'csv': out / 'excitations.csv',
                 'selectivity': out / 'selectivity.csv', 'by_depth': out / 'excitations_by_depth.png',
                 'last_blocks': out / 'excitations_last_blocks.png'}
        write_bytes_atomic(paths['arrays'], safetensors_bytes(tensors, metadata={'se_hub': json.dumps(meta)}))
        write_bytes_atomic(paths['csv'], _csv_bytes(self.rows()))
        write_bytes_atomic(paths['selectivity'], _csv_bytes(self.selectivity()))
        chosen = self._figure_classes(figure_classes)
        write_bytes_atomic(paths['by_depth'], _png_bytes(lambda f: self._draw_by_depth(f, chosen)))
        write_bytes_atomic(paths['last_blocks'], _png_bytes(lambda f: self._draw_last_blocks(f, chosen)))
        return paths

    @classmethod
    def load(cls, path) -> 'ExcitationStats':
        """Statistics written by :meth:`save` (``path``: the file or its directory); float32 as stored."""
        from safetensors import safe_open
        path = Path(path)
        if path.is_dir():
            path = path / 'excitations.safetensors'
        with safe_open(str(path), framework='numpy') as f:
            meta = json.loads((f.metadata() or {}).get('se_hub', '{}'))
            if meta.get('format') != FORMAT:
                raise ValueError(f'{path} is not an excitation file written by se_hub ({FORMAT})')
            means = [f.get_tensor(f'mean/{b}').astype(np.float64) for b in meta['blocks']]
            stds = [f.get_tensor(f'std/{b}').astype(np.float64) for b in meta['blocks']]
            counts = f.get_tensor('counts')
        return cls(meta['blocks'], meta['classes'], counts, means, stds, meta.get('kinds', []), meta.get('model', ''),
                   meta.get('data', ''), meta.get('split', 'val'), meta.get('architecture', ''))

    # ------------------------------------------------------------------------ figures

    def _figure_classes(self, names: Optional[Sequence[str]]) -> List[int]:
        present = [k for k in range(len(self.classes)) if self.counts[k] > 0]
        if names:
            unknown = [n for n in names if n not in self.classes]
            if unknown:
                raise ValueError(f"figure class(es) {', '.join(unknown)} are not among the analysed classes "
                                 f"({', '.join(self.classes[:8])}{', ...' if len(self.classes) > 8 else ''})")
            return [self.classes.index(n) for n in names]
        if len(present) <= 4:
            return present
        return [present[round(i * (len(present) - 1) / 3)] for i in range(4)]

    def _depth_blocks(self, count: int = 4) -> List[int]:
        n = len(self.blocks)
        if n <= count:
            return list(range(n))
        return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})

    def _y_range(self) -> Optional[Tuple[float, float]]:
        """[0, 1] for every panel when the mean gates lie there (sigmoid-like gates), so that depths
        compare at a glance; else each panel its own range."""
        lo = min(float(m.min()) for m in self.means)
        hi = max(float(m.max()) for m in self.means)
        return (0.0, 1.0) if lo >= 0 and hi <= 1 else None

    def _title(self) -> str:
        return f'{self.architecture or self.model} on {Path(self.data).name or self.data} ({self.split})'

    def _draw_by_depth(self, f, chosen: List[int]) -> None:
        from ..plots import draw_channel_panels
        blocks = self._depth_blocks()
        labels = [self.classes[k] for k in chosen] + ['all']
        panels = []
        for b in blocks:
            xs = list(range(self.channels[b]))
            series = [(self.classes[k], xs, self.means[b][k].tolist()) for k in chosen]
            series.append(('all', xs, self.pooled(b)[0].tolist()))
            panels.append((f'{self.blocks[b]} (block {b + 1}/{len(self.blocks)})', series, []))
        draw_channel_panels(panels, f, title=f'mean excitation per channel, by depth: {self._title()}',
                            legend=labels, columns=min(2, len(panels)), grey_last=True,
                            y_range=self._y_range())

    def _draw_last_blocks(self, f, chosen: List[int]) -> None:
        from ..plots import draw_channel_panels
        blocks = list(range(len(self.blocks)))[-3:]
        y_range = self._y_range()
        panels = []
        for k in chosen:
            for b in blocks:
                xs = list(range(self.channels[b]))
                mu, sd = self.means[b][k], self.stds[b][k]
                series = [(self.classes[k], xs, mu.tolist()), ('all', xs, self.pooled(b)[0].tolist())]
                lo, hi = mu - sd, mu + sd
                if y_range is not None:  # gates in [0, 1]: so is any image's gate, whatever mean + std says
                    lo, hi = np.clip(lo, *y_range), np.clip(hi, *y_range)
                band = [(0, xs, lo.tolist(), hi.tolist())]
                panels.append((f'class {self.classes[k]}, {self.blocks[b]}', series, band))
        draw_channel_panels(panels, f, title=f'excitation per channel (mean, band: +/- 1 std) in the last blocks: '
                            f'{self._title()}', legend=['class mean', 'all classes'], columns=len(blocks),
                            grey_last=True, single_colour=True, y_range=y_range)


# --------------------------------------------------------------------------- files, atomically

def writable_dir(output) -> Path:
    """``output``, created, or one clear error when it cannot be written (checked before a long run)."""
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix='.write-test-'):
            pass
    except OSError as e:
        raise OSError(f'cannot write to the output directory {out}: {e.strerror or e}; choose another --output') \
            from None
    return out


def _csv_bytes(rows: List[Dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator='\n')
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue().encode('utf-8')


def _png_bytes(draw: Callable[[io.BytesIO], None]) -> bytes:
    buf = io.BytesIO()
    draw(buf)
    return buf.getvalue()


# --------------------------------------------------------------------------- the run

def _select(dataset, classes: List[str], wanted: Optional[Sequence[str]], max_images: Optional[int],
            where: str) -> Tuple[List[int], List[int], List[str]]:
    """(indices into ``dataset``, their labels among the kept classes, the kept class names)."""
    if wanted is not None:
        wanted = [c.strip() for c in wanted if c.strip()]
        if not wanted:
            raise ValueError('no class names given: list them as a,b,c (or leave the option out for all classes)')
        unknown = [c for c in wanted if c not in classes]
        if unknown:
            raise ValueError(f"class(es) {', '.join(unknown)} are not in {where}; its classes are "
                             f"{', '.join(classes[:20])}{', ...' if len(classes) > 20 else ''}")
        kept = list(dict.fromkeys(wanted))
    else:
        kept = list(classes)
    position = {classes.index(c): i for i, c in enumerate(kept)}
    taken = [0] * len(kept)
    indices, labels = [], []
    for i, target in enumerate(dataset.targets):
        j = position.get(int(target))
        if j is None or (max_images is not None and taken[j] >= max_images):
            continue
        taken[j] += 1
        indices.append(i)
        labels.append(j)
    if not indices:
        raise ValueError(f'{where} has no images of the chosen class(es) ({", ".join(kept[:10])})')
    empty = [c for c, n in zip(kept, taken) if n == 0]
    if empty and wanted is not None:
        raise ValueError(f"{where} has no images of class(es) {', '.join(empty)}")
    if empty:
        print(f"note: {where} has no images of class(es) {', '.join(empty[:10])}; they are left out", file=sys.stderr)
        keep = [j for j, n in enumerate(taken) if n]
        remap = {old: new for new, old in enumerate(keep)}
        labels = [remap[j] for j in labels]
        kept = [kept[j] for j in keep]
    return indices, labels, kept


def collect_excitations(model: Union[str, nn.Module], data, classes: Optional[Sequence[str]] = None,
                        max_images: Optional[int] = None, batch_size: int = 64, img_size: Optional[int] = None,
                        device: Optional[str] = None, progress: bool = True, split: str = 'val',
                        num_workers: int = 2, pretrained: bool = True) -> ExcitationStats:
    """Run ``model`` over the ``split`` of ``data`` and return the per-class statistics of every
    SE gate (see the module docstring for what is recorded and how images are chosen).

    ``model``: ``MODEL[.TAG]`` (``pretrained=False``: random weights), ``local-dir:OUT`` / a
    directory written by ``se-hub finetune``, ``hf-hub:REPO``, or a module (run in eval mode on
    ``device``, then put back in its former mode). ``data``: a directory in any layout
    ``se-hub finetune`` reads. ``classes``: class names to keep (default all); ``max_images``:
    at most this many images per class. ``device``: ``cpu``, ``cuda``, ``cuda:N`` (default: CUDA
    when there is one)."""
    from timm.data import create_transform
    from torch.utils.data import DataLoader, Subset

    from .. import factory
    from ..tasks.data import find_splits, worker_errors_named
    from ..tasks.distributed import plan_device
    from ..tasks.engine import Progress
    if split not in ('train', 'val'):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    if max_images is not None and max_images < 1:
        raise ValueError(f'max_images must be at least 1 (images per class), got {max_images}')
    if batch_size < 1:
        raise ValueError(f'batch_size must be at least 1, got {batch_size}')
    if isinstance(classes, str):
        classes = classes.split(',')
    dev = torch.device(plan_device(device, 'off', environ={}).device)
    splits = find_splits(data, check_images=False)  # unreadable images fail when read, naming the file
    dataset = getattr(splits, split)
    indices, labels, kept = _select(dataset, list(splits.classes), classes, max_images,
                                    f'the {split} split of {splits.root}')
    spec = model if isinstance(model, str) else None
    if spec is not None:
        model = factory.create_model(factory.model_spec(spec), pretrained=pretrained)
    gates = find_gates(model)
    if not gates:
        raise NoGatesError(_no_gates_message(model))
    dataset.transform = create_transform(**factory.data_config(model, img_size), is_training=False)
    loader = DataLoader(_Labelled(Subset(dataset, indices), labels), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=dev.type == 'cuda')
    was_training = model.training
    model.eval().to(dev)
    recorder = _Recorder(gates, len(kept))
    try:
        with worker_errors_named(), torch.no_grad(), Progress(len(loader), 'excitations', progress) as bar:
            for images, targets in loader:
                recorder.labels = targets
                model(images.to(dev, non_blocking=True))
                recorder.check_batch()
                bar.update()
    finally:
        recorder.remove()
        model.train(was_training)
    counts = recorder.running[0].count.numpy().astype(np.int64)
    means = [r.mean.numpy() for r in recorder.running]
    stds = [np.sqrt(np.maximum(r.m2.numpy() / np.maximum(r.count.numpy(), 1)[:, None], 0.0)) for r in recorder.running]
    return ExcitationStats(blocks=[g.name for g in gates], classes=kept, counts=counts, means=means, stds=stds,
                           kinds=[g.kind for g in gates], model=spec or _model_name(model), data=str(data),
                           split=split, architecture=_model_name(model))


class _Labelled(torch.utils.data.Dataset):
    """The images of ``subset`` with labels among the kept classes."""

    def __init__(self, subset, labels: List[int]):
        self.subset, self.labels = subset, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.subset[i][0], self.labels[i]
