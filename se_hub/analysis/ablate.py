"""Design-space sweeps on your data: fine-tune SE variants of one network with the same budget and
seeds, then compare them (``se-hub ablate``).

Python::

    from se_hub.analysis.ablate import ablate, collect
    result = ablate('se_resnet50.in1k', 'flowers/', ['r4', 'r16', 'gmp', 'none', 'late=se_stages:(2,3)'],
                    epochs=10, output='sweeps/flowers', seeds=3, batch_size=64)
    result.rows            # one dict per variant: val top-1 mean / std over seeds, params, MACs, time, memory

Shell: ``se-hub ablate --base MODEL --data DIR --variants LIST --epochs N --seeds K --output OUT
[finetune options]``; ``--print-commands`` prints one ``se-hub finetune`` command per (variant,
seed) for a scheduler instead of running them, ``se-hub ablate --collect OUT`` builds the tables
and plots from the finished runs.

Variants (``--variants``, comma-separated; commas inside brackets do not separate)::

    VARIANT := [LABEL=]TERM[+TERM...]
    TERM    := NAME | KEY:VALUE

``NAME`` is a named variant: the paper's SE-ResNet-50 ablation rows, read from the registered
``se_resnet50_<row>`` configurations (``r2`` ... ``r32``, ``gmp``, ``nosqueeze``, ``tanh``,
``relu``, ``pre``, ``post``, ``identity``, ``3x3``, ``none``, ``stage2`` ... ``stage4``), the
attention layers (``se``, ``eca``, ``cbam``), ``base`` (the base network unchanged), ``r<N>``
(SE reduction ratio 1/N) and ``stage<N>`` (SE in the paper's stage N only, N = 2-5). ``KEY:VALUE``
sets ``se_layer``, ``se_args``, ``se_ratio``, ``se_placement``, ``se_stages`` or one option of
se_hub's SE unit (``rd_ratio``, ``squeeze``, ``gate``, ... go into ``se_args``); VALUE is a
Python literal or a plain string, as for ``--model-arg``. Terms combine left to right; two
terms that set one key to different values are an error. ``LABEL`` names the variant's run
directory (default: the variant's text when that is a valid name). Each variant is checked
against the base before anything trains: an option the base's family does not have (e.g.
``se_placement`` outside the residual family) is an error.

Runs: ``OUT/<label>/seed<k>/`` is a ``finetune`` output directory (metrics.jsonl, last.pth, the
export) of the base with the variant's architecture arguments (``--model-arg`` arguments shared
by every variant come first, e.g. ``layers=(1,1,1)``), seed ``k``. With pretrained weights every
variant starts from them with its SE units fresh (``finetune(fresh_se=True)``: every other
tensor is loaded; the variant's SE shapes may differ from the weights'), the unchanged ``base``
included, so that every design starts from the same point. A run that finished (all epochs and
its export) is skipped, one with a ``last.pth`` resumes, the rest start.

Outputs in OUT: ``sweep.json`` (the plan), ``ablation.csv`` and ``ablation.md`` (per variant:
final-epoch val top-1 mean and sample std over seeds, best-epoch top-1, parameters,
multiply-adds at the run's input size (:mod:`se_hub.complexity`), train time, peak memory),
``accuracy_vs_cost.png`` and ``curves.png`` (train loss and val top-1 of every variant per epoch,
means over seeds). Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during the run; on
the CPU the growth of this process's peak resident set (VmHWM, reset per run) over its size at
the start, data-loader workers not counted (the first run of a process also counts one-off
allocations: caches, the data set's file list). Runs made by printed commands have no memory
figure.
"""
import ast
import csv
import difflib
import inspect
import io
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..factory import SE_DESIGN_KEYS, describe_change

SWEEP, RUN_INFO = 'sweep.json', 'ablate_run.json'
CSV, MARKDOWN, COST_PLOT, CURVES_PLOT = 'ablation.csv', 'ablation.md', 'accuracy_vs_cost.png', 'curves.png'
# what the sweep sets itself in each run: not finetune options a user passes
_SWEEP_OWNED = ('seed', 'resume', 'fresh_se', 'model_kwargs', 'push')
_LABEL = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.+-]*$')


class AblationError(ValueError):
    """A sweep that cannot run as asked: unknown variant, one that does not apply to the base, ..."""


# ------------------------------------------------------------------------------------ variants

@dataclass(frozen=True)
class NamedVariant:
    change: Dict[str, Any]
    description: str


def _config_change(base: Mapping[str, Any], row: Mapping[str, Any]) -> Dict[str, Any]:
    """What ``row``'s configuration sets differently from ``base``'s (se_args key by key)."""
    change = {}
    for key, value in row.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            sub = {k: v for k, v in value.items() if base[key].get(k, object()) != v}
            if sub:
                change[key] = sub
        elif key not in base or base[key] != value:
            change[key] = 'none' if key == 'se_layer' and value is None else value
    return change


def named_variants() -> Dict[str, NamedVariant]:
    """Every variant with a name: ``base``, the paper's SE-ResNet-50 ablation rows (each registered
    ``se_resnet50_<row>`` model's configuration minus ``se_resnet50``'s) and the attention layers."""
    from ..layers.factory import ATTENTION_LAYERS
    from ..models.se_residual import ARCHS
    named = {'base': NamedVariant({}, 'the base network as it is')}
    reference = ARCHS['se_resnet50']['args']
    for name, spec in ARCHS.items():
        if name.startswith('se_resnet50_'):
            named[name[len('se_resnet50_'):]] = NamedVariant(
                _config_change(reference, spec['args']), spec['description'].replace('SE-ResNet-50 ablation: ', ''))
    for layer in ATTENTION_LAYERS:
        named.setdefault(layer, NamedVariant({'se_layer': layer}, f'attention layer {layer!r} in place of the SE unit'
                                             if layer != 'se' else "se_hub's SE unit (adds SE to an SE-free base)"))
    return named


# names made of a number: reduction ratio 1/N, SE in the paper's stage N only (conv2_x = index 0)
_PATTERNS: Sequence[Tuple[str, Callable[[int], Dict[str, Any]], str]] = (
    (r'r(\d+)', lambda n: {'se_args': {'rd_ratio': 1 / n}} if n >= 1 else None, 'r<N>: SE reduction ratio 1/N'),
    (r'stage([2-5])', lambda n: {'se_stages': (n - 2,)}, "stage<N>: SE in the paper's stage N (conv<N>_x) only, 2-5"),
)


def _lookup(name: str) -> Optional[Dict[str, Any]]:
    named = named_variants()
    if name in named:
        return dict(named[name].change)
    for pattern, make, _ in _PATTERNS:
        m = re.fullmatch(pattern, name)
        if m:
            return make(int(m.group(1)))
    return None


def _split_top_level(text: str, sep: str) -> List[str]:
    """``text`` split at each ``sep`` outside brackets and quotes."""
    parts, depth, quote, start = [], 0, '', 0
    for i, ch in enumerate(text):
        if quote:
            quote = '' if ch == quote else quote
        elif ch in '\'"':
            quote = ch
        elif ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _merge(change: Dict[str, Any], key: str, value: Any, what: str) -> None:
    """Set ``key`` (se_args: per option) in ``change``; a different value already there is an error."""
    if key == 'se_args':
        if not isinstance(value, dict):
            raise AblationError(f'{what}: se_args must be a dict, e.g. se_args:{{"rd_ratio":0.25}}, not {value!r}')
        for k, v in value.items():
            old = change.setdefault('se_args', {}).get(k, v)
            if old != v:
                raise AblationError(f'{what}: two terms set se_args {k!r} to {old!r} and {v!r}; keep one')
            change['se_args'][k] = v
        return
    if key == 'se_layer' and value is None:
        value = 'none'  # timm.create_model drops None-valued kwargs
    if key in change and change[key] != value:
        raise AblationError(f'{what}: two terms set {key} to {change[key]!r} and {value!r}; keep one')
    change[key] = value


def _literal(text: str) -> Any:
    """A term's VALUE: a Python literal, or else the plain string (as ``--model-arg`` reads it)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _term(term: str, what: str) -> Dict[str, Any]:
    from ..layers.factory import SE_ARGS
    key, sep, value = term.partition(':')
    if not sep:
        found = _lookup(term)
        if found is None:
            known = sorted(named_variants())
            close = difflib.get_close_matches(term, known, n=3)
            raise AblationError(
                f'{what}: unknown name {term!r}' + (f" (did you mean {', '.join(close)}?)" if close else '')
                + f"; named variants: {', '.join(known)}, r<N>, stage<N>; or KEY:VALUE terms (se_layer:eca, "
                "se_args:{'rd_ratio':0.25}, gate:tanh, se_stages:(2,3)); see `se-hub ablate --list-variants`")
        return found
    key = key.strip()
    if key not in SE_DESIGN_KEYS and key not in SE_ARGS:
        raise AblationError(
            f'{what}: {key!r} is not an SE design option; a term sets one of {", ".join(SE_DESIGN_KEYS)} or an option '
            f'of the SE unit ({", ".join(sorted(SE_ARGS))}); architecture arguments every variant shares go in '
            '--model-arg / model_kwargs')
    parsed = _literal(value.strip())
    return {'se_args': {key: parsed}} if key in SE_ARGS else {key: parsed}


@dataclass(frozen=True)
class Variant:
    label: str  # the run directory's name
    text: str  # as given
    change: Dict[str, Any]  # architecture arguments it sets on top of the base's

    def describe(self) -> str:
        return describe_change(self.change)


def parse_variant(text: str) -> Variant:
    """One variant from its text: ``r8``, ``r8+tanh``, ``late=se_stages:(2,3)+gate:tanh``."""
    text = text.strip()
    if not text:
        raise AblationError('an empty variant (two commas in a row?)')
    label, sep, spec = text.partition('=')
    if not (sep and _LABEL.match(label.strip())):
        label, spec = '', text
    label, spec = label.strip(), spec.strip()
    what = f'variant {text!r}'
    change: Dict[str, Any] = {}
    for term in _split_top_level(spec, '+'):
        if not term:
            raise AblationError(f"{what}: an empty term (a '+' too many?)")
        for key, value in _term(term, what).items():
            _merge(change, key, value, what)
    if not label:
        if not _LABEL.match(spec):
            raise AblationError(f'{what}: name it for its run directory, e.g. mine={spec} (letters, digits, _ . + -)')
        label = spec
    return Variant(label, text, change)


def parse_variants(variants: Union[str, Sequence[str], Mapping[str, Any]]) -> List[Variant]:
    """Variants from a comma-separated string, a list of variant texts, or a mapping of label to
    architecture arguments (a dict) or variant text."""
    if isinstance(variants, str):
        items = [parse_variant(t) for t in _split_top_level(variants, ',')]
    elif isinstance(variants, Mapping):
        items = []
        for label, spec in variants.items():
            if not _LABEL.match(str(label)):
                raise AblationError(f'variant label {label!r}: use letters, digits, _ . + - (it names a directory)')
            if isinstance(spec, str):
                items.append(Variant(label, spec, parse_variant(spec).change))
            else:
                change: Dict[str, Any] = {}
                for key, value in dict(spec).items():
                    if key not in SE_DESIGN_KEYS:
                        raise AblationError(f'variant {label!r}: {key!r} is not one of {", ".join(SE_DESIGN_KEYS)}')
                    _merge(change, key, value, f'variant {label!r}')
                items.append(Variant(label, describe_change(change), change))
    else:
        items = [parse_variant(t) for t in variants]
    if not items:
        raise AblationError('no variants: name at least one (e.g. --variants base,none,r4)')
    seen = set()
    for v in items:
        if v.label in seen:
            raise AblationError(f'two variants are labelled {v.label!r}; give one another name (LABEL=...)')
        seen.add(v.label)
    return items


def variant_model_kwargs(base_kwargs: Mapping[str, Any], change: Mapping[str, Any]) -> Dict[str, Any]:
    """The architecture arguments of one run: the base's, then the variant's (se_args merged).
    A variant that swaps in another attention layer drops the base's SE-unit options."""
    kwargs = dict(base_kwargs)
    if 'se_layer' in change and change['se_layer'] != 'se':
        kwargs.pop('se_args', None)
    for key, value in change.items():
        if key == 'se_args' and isinstance(kwargs.get('se_args'), dict):
            kwargs['se_args'] = dict(kwargs['se_args'], **value)
        else:
            kwargs[key] = value
    if kwargs.get('se_layer', '') is None:
        kwargs['se_layer'] = 'none'
    return kwargs


def _family_config(name: str) -> Dict[str, Any]:
    from ..models.catalog import MODELS
    module = sys.modules.get(f'se_hub.models.{MODELS[name].family}')
    return dict(getattr(module, 'ARCHS', {}).get(name, {}).get('args', {}))


def check_variants(base: str, variants: Sequence[Variant], base_kwargs: Mapping[str, Any], num_classes: int) -> None:
    """Build every variant of ``base`` on the meta device; a clear error for an option the base's
    family does not take, an SE option on a network left without SE, or a value the model refuses."""
    from .._compat import create_model
    from ..layers.factory import NO_SE
    from ..models.catalog import split_model_name
    name, _ = split_model_name(base)
    build_kwargs = {k: v for k, v in base_kwargs.items() if k != 'pretrained_cfg_overlay'}
    try:
        with torch.device('meta'):
            reference = create_model(name, num_classes=num_classes, **build_kwargs)
    except (TypeError, ValueError) as e:
        raise AblationError(f'the base {name} with {describe_change(build_kwargs)}: {e}') from None
    cls = type(reference)
    config = _family_config(name)
    params = inspect.signature(cls).parameters
    unsupported = set(getattr(cls, 'unsupported_kwargs', lambda c: ())(config))
    takes = [k for k in SE_DESIGN_KEYS if k in params and k not in unsupported]
    for v in variants:
        bad = [k for k in v.change if k not in takes]
        if bad:
            hint = (' (the integration points and stages are options of the residual family: se_resnet*, se_resnext*)'
                    if {'se_placement', 'se_stages'} & set(bad) else '')
            raise AblationError(f'variant {v.label!r} ({v.describe()}) does not apply to {name}: {cls.__name__} takes '
                                f"no {', '.join(bad)}; its SE options are {', '.join(takes)}{hint}")
        kwargs = {k: val for k, val in variant_model_kwargs(build_kwargs, v.change).items()}
        se_layer = kwargs.get('se_layer', config.get('se_layer', params['se_layer'].default))
        no_se = any(se_layer is x or (isinstance(x, str) and se_layer == x) for x in NO_SE)
        se_only = [k for k in v.change if k in ('se_args', 'se_ratio', 'se_placement', 'se_stages')]
        if no_se and se_only:
            raise AblationError(f"variant {v.label!r} ({v.describe()}) sets {', '.join(se_only)} on {name}, which has "
                                f"no SE unit: add one, e.g. {v.label}=se+{v.text.split('=', 1)[-1]}")
        try:
            with torch.device('meta'):
                create_model(name, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError) as e:
            raise AblationError(f'variant {v.label!r} ({v.describe()}) on {name}: {e}') from None


# ----------------------------------------------------------------------------------------- runs

class PeakMemory:
    """Peak memory of the work inside the ``with``: CUDA: ``torch.cuda.max_memory_allocated``
    (tensors); CPU: the growth of this process's peak resident set (VmHWM, reset on entry through
    /proc/self/clear_refs) over its resident size on entry. Data-loader worker processes are not
    counted. ``mb`` stays None where it cannot be measured (no /proc)."""

    def __init__(self, cuda: bool):
        self.cuda, self.mb, self.start = cuda, None, None
        self.what = ('peak CUDA memory allocated (torch.cuda.max_memory_allocated)' if cuda else
                     'growth of the peak resident set of the sweep process (VmHWM), data-loader workers excluded')

    @staticmethod
    def _status(field_name: str) -> Optional[int]:
        try:
            for line in Path('/proc/self/status').read_text().splitlines():
                if line.startswith(field_name + ':'):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return self
        try:
            Path('/proc/self/clear_refs').write_text('5')  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.start = self._status('VmRSS')
        except OSError:
            self.start = None
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.mb = torch.cuda.max_memory_allocated() / 2 ** 20
        elif self.start is not None:
            peak = self._status('VmHWM')
            self.mb = None if peak is None else max(0, peak - self.start) / 2 ** 20
        return False


def parse_seeds(seeds: Union[int, str, Sequence[int]]) -> List[int]:
    """``3`` -> [0, 1, 2]; ``'0,5,7'`` or [0, 5, 7] as given."""
    if isinstance(seeds, str):
        text = seeds.strip()
        try:
            seeds = int(text) if ',' not in text else [int(s) for s in text.split(',') if s.strip()]
        except ValueError:
            raise AblationError(f'seeds: a count (3) or a comma list of seeds (0,5,7), not {text!r}') from None
    if isinstance(seeds, int):
        if seeds < 1:
            raise AblationError(f'seeds: at least 1, got {seeds}')
        return list(range(seeds))
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise AblationError(f'seeds: at least one, each once; got {out}')
    return out


def run_dir(output, label: str, seed: int) -> Path:
    return Path(output) / label / f'seed{seed}'


def _metrics(run: Path) -> List[Dict[str, Any]]:
    path = run / 'metrics.jsonl'
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]


def _exported(run: Path) -> bool:
    return (run / 'config.json').is_file() and (run / 'model.safetensors').is_file()


def run_state(run: Path, epochs: Optional[int]) -> str:
    """'done' (every epoch and the export written), 'resume' (a last.pth to continue from) or 'new'.
    ``epochs`` None: done when exported."""
    rows = _metrics(run)
    if _exported(run) and rows and (epochs is None or rows[-1]['epoch'] >= epochs):
        if epochs is not None and rows[-1]['epoch'] > epochs:
            raise AblationError(f'{run} holds a run of {rows[-1]["epoch"]} epochs, the sweep asks {epochs}: the same '
                                f'budget for every run needs another --output (or --epochs {rows[-1]["epoch"]})')
        return 'done'
    return 'resume' if (run / 'last.pth').is_file() else 'new'


def _json_value(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _check_same_design(run: Path, model_kwargs: Mapping[str, Any]) -> None:
    """A finished run must have been built with this variant's architecture arguments."""
    from ..models.catalog import NOT_MODEL_ARGS
    recorded = json.loads((run / 'config.json').read_text(encoding='utf-8')).get('model_args', {})
    wanted = {k: v for k, v in model_kwargs.items() if k not in NOT_MODEL_ARGS}
    differ = [k for k, v in wanted.items() if _json_value(v) != recorded.get(k)]
    if differ:
        raise AblationError(f"{run} holds a finished run with other {', '.join(differ)} "
                            f"({', '.join(f'{k}={recorded.get(k)!r}' for k in differ)}) than this variant's; remove it "
                            'or sweep into another --output')


@dataclass
class Run:
    variant: Variant
    seed: int
    path: Path
    state: str  # 'done', 'resume', 'new'
    model_kwargs: Dict[str, Any]


@dataclass
class AblationResult:
    output: Path
    rows: List[Dict[str, Any]]  # one per variant (the CSV's rows)
    runs: List[Dict[str, Any]]  # one per (variant, seed) of the plan: state, final / best top-1, time, memory
    files: List[Path] = field(default_factory=list)


@dataclass
class Sweep:
    """What :func:`plan_sweep` decided: every (variant, seed) run with its state, and the finetune
    options each run gets (the same for all)."""
    output: Path
    base: str
    data: str
    epochs: int
    runs: List[Run]
    options: Dict[str, Any]


def plan_sweep(base: str, data, variants, epochs: int, output, seeds: Union[int, str, Sequence[int]] = 3,
               model_kwargs: Optional[Mapping[str, Any]] = None, **options) -> Sweep:
    """Check a sweep (every variant is built on the meta device first) and write its plan,
    ``output/sweep.json``; returns the runs with their states (done, resume, new) without running
    any. Arguments as for :func:`ablate`."""
    from ..models.catalog import split_model_name
    from ..tasks.classification import FinetuneOptions
    from ..tasks.data import find_splits
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        raise AblationError('a sweep runs its runs one after another in one process; for several processes per run, '
                            'run the commands of --print-commands under torchrun')
    owned = sorted(set(options) & set(_SWEEP_OWNED))
    if owned:
        raise AblationError(f"the sweep sets {', '.join(owned)} itself (seeds: seeds=, shared architecture "
                            'arguments: model_kwargs=)')
    if int(epochs) < 1:
        raise AblationError(f'epochs must be at least 1, got {epochs}')
    name, tag = split_model_name(base)
    if base.startswith(('local-dir:', 'hf-hub:')):
        raise AblationError('the base must be a registered se_hub model (MODEL[.TAG]), not a directory or Hub repo')
    seed_list = parse_seeds(seeds)
    items = parse_variants(variants)
    base_kwargs = dict(model_kwargs or {})
    opts = FinetuneOptions.from_options(epochs, dict(options, model_kwargs=base_kwargs))  # unknown names fail here
    if opts.pretrained and not base_kwargs.get('pretrained_cfg_overlay'):
        from ..weights.manifest import UnknownWeightsError, find_weights
        try:
            find_weights(name, tag)
        except UnknownWeightsError as e:
            raise AblationError(f'{e}; sweep from random weights with --no-pretrained (pretrained=False)') from None
    splits = find_splits(data, check_images=False)
    check_variants(base, items, base_kwargs, len(splits.classes))
    options = dict(options, fresh_se=bool(opts.pretrained))
    out = Path(output)
    runs = []
    for v in items:
        kwargs = variant_model_kwargs(base_kwargs, v.change)
        for seed in seed_list:
            path = run_dir(out, v.label, seed)
            state = run_state(path, int(epochs))
            if state == 'done':
                _check_same_design(path, kwargs)
            runs.append(Run(v, seed, path, state, kwargs))
    _write_plan(out, base, data, int(epochs), seed_list, items, base_kwargs, options)
    return Sweep(out, base, data, int(epochs), runs, options)


def ablate(base: str, data, variants, epochs: int, output, seeds: Union[int, str, Sequence[int]] = 3,
           model_kwargs: Optional[Mapping[str, Any]] = None, log=print, **options) -> AblationResult:
    """Fine-tune every variant of ``base`` on ``data`` for ``epochs`` epochs with each seed into
    ``output/<label>/seed<k>`` (see the module docstring), then :func:`collect`. ``model_kwargs``:
    architecture arguments every variant shares (e.g. ``layers=(1, 1, 1)``); ``options``: the
    other fields of :class:`se_hub.tasks.FinetuneOptions`, the same for every run. Runs that
    finished are skipped, interrupted ones resume (:func:`plan_sweep`)."""
    from ..tasks.classification import finetune
    sweep = plan_sweep(base, data, variants, epochs, output, seeds, model_kwargs, **options)
    plan, options = sweep.runs, sweep.options
    cuda = torch.device(_device_type(options.get('device'))).type == 'cuda'
    for i, r in enumerate(plan, 1):
        head = f'[{i}/{len(plan)}] {r.variant.label} seed {r.seed}'
        if r.state == 'done':
            log(f'{head}: finished earlier, skipped')
            continue
        log(f"{head}: {'resuming' if r.state == 'resume' else 'training'} ({r.variant.describe()})")
        start = time.perf_counter()
        with PeakMemory(cuda) as memory:
            finetune(base, data, epochs, r.path, model_kwargs=r.model_kwargs, seed=r.seed,
                     resume=r.state == 'resume', **options)
        _write_run_info(r, memory, time.perf_counter() - start)
    return collect(sweep.output, log=log)


def _device_type(device: Optional[str]) -> str:
    if device:
        return device.split(':')[0]
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def _write_plan(out: Path, base: str, data, epochs: int, seeds: List[int], items: List[Variant],
                base_kwargs: Dict[str, Any], options: Dict[str, Any]) -> None:
    from ..files import write_text_atomic
    out.mkdir(parents=True, exist_ok=True)
    plan = {'base': base, 'data': str(data), 'epochs': epochs, 'seeds': seeds, 'model_kwargs': base_kwargs,
            'options': options,
            'variants': [{'label': v.label, 'text': v.text, 'change': v.change, 'describe': v.describe()}
                         for v in items]}
    write_text_atomic(out / SWEEP, json.dumps(plan, indent=1, default=repr) + '\n')


def _write_run_info(r: Run, memory: PeakMemory, wall_s: float) -> None:
    from ..files import write_text_atomic
    old = _read_json(r.path / RUN_INFO)
    peak = memory.mb
    if peak is not None and old.get('peak_memory_mb') is not None:
        peak = max(peak, old['peak_memory_mb'])  # a resumed run: the larger of its parts
    info = {'variant': r.variant.label, 'seed': r.seed, 'peak_memory_mb': peak, 'memory': memory.what,
            'wall_s': wall_s + old.get('wall_s', 0.0)}
    write_text_atomic(r.path / RUN_INFO, json.dumps(info, indent=1) + '\n')


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return {}


# -------------------------------------------------------------------------------------- collect

def _discover(out: Path) -> Tuple[List[Tuple[str, str]], List[int], Optional[int], Dict[str, Any]]:
    """(label, change text) per variant, seeds, epochs (None: unknown) and the plan, from
    sweep.json or else from the run directories ``OUT/<label>/seed<k>/``."""
    plan = _read_json(out / SWEEP)
    if plan.get('variants'):
        return ([(v['label'], v['describe']) for v in plan['variants']], list(plan['seeds']), plan.get('epochs'),
                plan)
    labels, seeds = [], set()
    for metrics in sorted(out.glob('*/seed*/metrics.jsonl')):
        m = re.fullmatch(r'seed(\d+)', metrics.parent.name)
        if m:
            seeds.add(int(m.group(1)))
            if metrics.parent.parent.name not in labels:
                labels.append(metrics.parent.parent.name)
    return [(label, '') for label in labels], sorted(seeds), None, {}


def _mean_std(values: List[float]) -> Tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _change_from_export(run: Path) -> str:
    args = _read_json(run / 'config.json').get('model_args', {})
    return describe_change({k: v for k, v in args.items() if k not in ('num_classes', 'in_chans', 'global_pool')})


def collect(output, log=print) -> AblationResult:
    """Tables and plots of the finished runs in ``output`` (written by :func:`ablate` or by the
    commands it printed): ablation.csv, ablation.md, accuracy_vs_cost.png, curves.png."""
    from ..complexity import model_complexity
    from ..files import write_atomic, write_text_atomic
    from ..plots import draw_scatter, draw_sweep_curves
    out = Path(output)
    if not out.is_dir():
        raise AblationError(f'{out}: no such directory (the --output of a sweep)')
    variants, seeds, epochs, plan = _discover(out)
    if not variants:
        raise AblationError(f'{out} holds no runs: expected {out}/<variant>/seed<k>/ with metrics.jsonl and an export, '
                            'as `se-hub ablate` (or the commands of --print-commands) write them')
    runs, rows, curves = [], [], {}
    metric = 'top1'
    for label, change in variants:
        finished = []
        for seed in seeds:
            path = run_dir(out, label, seed)
            history = _metrics(path)
            state = run_state(path, epochs) if path.is_dir() else 'new'
            info = _read_json(path / RUN_INFO)
            record = {'variant': label, 'seed': seed, 'path': str(path), 'state': state,
                      'epochs': history[-1]['epoch'] if history else 0}
            if state == 'done':
                key = 'ema_top1' if 'ema_top1' in history[-1] else 'top1'
                metric = key
                record.update(top1=history[-1][key], best_top1=max(h[key] for h in history),
                              train_time_s=sum(h['train_time_s'] for h in history),
                              peak_memory_mb=info.get('peak_memory_mb'), memory=info.get('memory'))
                finished.append((record, history))
            runs.append(record)
        if not finished:
            continue
        first = Path(finished[0][0]['path'])
        params, macs = model_complexity(f'local-dir:{first}')
        top1, top1_std = _mean_std([r['top1'] for r, _ in finished])
        best, best_std = _mean_std([r['best_top1'] for r, _ in finished])
        memories = [r['peak_memory_mb'] for r, _ in finished if r['peak_memory_mb'] is not None]
        input_size = _read_json(first / 'config.json').get('pretrained_cfg', {}).get('input_size')
        rows.append({
            'variant': label, 'change': change or _change_from_export(first), 'runs': len(finished),
            'top1_mean': top1, 'top1_std': top1_std, 'best_top1_mean': best, 'best_top1_std': best_std,
            'params': params, 'macs': macs, 'input_size': 'x'.join(map(str, input_size[1:])) if input_size else '',
            'train_time_s': statistics.fmean(r['train_time_s'] for r, _ in finished),
            'peak_memory_mb': max(memories) if memories else None,
        })
        common = min(len(h) for _, h in finished)
        curves[label] = [{'epoch': e + 1,
                          'train_loss': statistics.fmean(h[e]['train_loss'] for _, h in finished),
                          'top1': statistics.fmean(h[e][metric] for _, h in finished)} for e in range(common)]
    if not rows:
        raise AblationError(f'{out} holds no finished run yet ({len(runs)} planned, states: '
                            f"{', '.join(sorted({r['state'] for r in runs}))}); finish them with `se-hub ablate` (it "
                            'resumes) or the commands of --print-commands, then collect')
    memory_what = next((r['memory'] for r in runs if r.get('memory')), None)
    files = [out / CSV, out / MARKDOWN, out / COST_PLOT, out / CURVES_PLOT]
    write_text_atomic(out / CSV, _csv(rows))
    markdown = _markdown(out, rows, runs, plan, metric, memory_what)
    write_text_atomic(out / MARKDOWN, markdown)
    base = plan.get('base') or _read_json(Path(runs[0]['path']) / 'config.json').get('architecture', '')
    points = [(r['variant'], r['macs'] / 1e6, r['top1_mean'], r['top1_std']) for r in rows]
    write_atomic(out / COST_PLOT, lambda f: draw_scatter(
        points, f, 'multiply-adds (M)', 'val top-1 (%), final epoch, mean +- std over seeds',
        title=f'{base}: accuracy against cost'))
    write_atomic(out / CURVES_PLOT, lambda f: draw_sweep_curves(
        curves, f, title=f'{base}: every variant, mean over seeds', metric='top1',
        metric_title='val top-1 (%)' if metric == 'top1' else 'EMA val top-1 (%)'))
    log(markdown)
    return AblationResult(out, rows, runs, files)


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return '' if value is None else f'{value:.{digits}f}'


def _csv(rows: List[Dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f'{v:.4f}' if isinstance(v, float) else ('' if v is None else v)) for k, v in row.items()})
    return buffer.getvalue()


def _markdown(out: Path, rows, runs, plan, metric: str, memory_what: Optional[str]) -> str:
    pm = lambda m, s: f'{_fmt(m)} ± {_fmt(s)}' if s is not None else _fmt(m)
    seeds = sorted({r['seed'] for r in runs})
    head = [f'# Design-space sweep: {plan.get("base", "")}'.rstrip(), '']
    if plan:
        from ..tasks.classification import FinetuneOptions
        shared = plan.get('model_kwargs') or {}
        defaults = FinetuneOptions.defaults()
        options = {k: v for k, v in plan.get('options', {}).items()
                   if k != 'fresh_se' and (k not in defaults or defaults[k] != v)}
        head += [f"data `{plan['data']}`, {plan['epochs']} epochs, seeds {', '.join(map(str, seeds))}; shared "
                 f"architecture arguments: {describe_change(shared) if shared else 'none'}; "
                 'options: '
                 + (', '.join(f'{k}={v}' for k, v in options.items()) or 'the defaults')
                 + ('; pretrained: SE units start fresh in every variant' if plan.get('options', {}).get('fresh_se')
                    else ''), '']
    table = ['| variant | change | runs | val top-1 % (final) | best val top-1 % | params | MACs (M) | input | '
             'train s / run | peak memory MB |', '|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        table.append(f"| {r['variant']} | {r['change']} | {r['runs']} | {pm(r['top1_mean'], r['top1_std'])} | "
                     f"{pm(r['best_top1_mean'], r['best_top1_std'])} | {r['params']:,} | {r['macs'] / 1e6:,.3f} | "
                     f"{r['input_size']} | {_fmt(r['train_time_s'], 1)} | {_fmt(r['peak_memory_mb'], 0)} |")
    notes = ['', f"top-1: {'the EMA weights' if metric == 'ema_top1' else 'the weights'}' val top-1 at the final epoch "
             '(mean ± sample std over seeds) and at each run\'s best epoch; MACs: multiply-adds of one image at the '
             'input size (se_hub.complexity); train s: training time per run (evaluation excluded); peak memory: '
             + (memory_what or 'not measured (runs made outside `se-hub ablate`)') + '.']
    unfinished = [r for r in runs if r['state'] != 'done']
    if unfinished:
        state = lambda r: 'not started' if r['state'] == 'new' else f"{r['epochs']} epochs so far"
        notes += ['', 'not finished (left out): ' + ', '.join(f"{r['variant']}/seed{r['seed']} ({state(r)})"
                                                              for r in unfinished)]
    return '\n'.join(head + table + notes) + '\n'


# ------------------------------------------------------------------------------------- listing

def list_variants() -> str:
    lines = [f'{name:<10} {describe_change(v.change):<40} {v.description}' for name, v in named_variants().items()]
    lines += [f'{"":<10} {text}' for _, _, text in _PATTERNS]
    return '\n'.join(lines)


__all__ = ['ablate', 'plan_sweep', 'Sweep', 'collect', 'list_variants', 'parse_variant',
           'parse_variants', 'named_variants', 'check_variants', 'AblationError', 'AblationResult']
