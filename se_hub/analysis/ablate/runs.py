"""Running a sweep: the plan (every (variant, seed) run and its state: done, resume, new), the runs
one after another with their peak memory, and the files each run leaves (see the package docstring)."""
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch

from .variants import AblationError, Variant, check_variants, parse_variants, variant_model_kwargs

SWEEP, RUN_INFO = 'sweep.json', 'ablate_run.json'
# what the sweep sets itself in each run: not finetune options a user passes
_SWEEP_OWNED = ('seed', 'resume', 'fresh_se', 'model_kwargs', 'push')


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


def run_metrics(run: Path) -> List[Dict[str, Any]]:
    path = run / 'metrics.jsonl'
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]


def _exported(run: Path) -> bool:
    return (run / 'config.json').is_file() and (run / 'model.safetensors').is_file()


def run_state(run: Path, epochs: Optional[int]) -> str:
    """'done' (every epoch and the export written), 'resume' (a last.pth to continue from) or 'new'.
    ``epochs`` None: done when exported."""
    rows = run_metrics(run)
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
    from ...models.catalog import NOT_MODEL_ARGS
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
    any. Arguments as for :func:`se_hub.analysis.ablate.ablate`."""
    from ...models.catalog import split_model_name
    from ...tasks.classification import FinetuneOptions
    from ...tasks.data import find_splits
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
        from ...weights.manifest import UnknownWeightsError, find_weights
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


def run_sweep(sweep: Sweep, log=print) -> None:
    """Every unfinished run of ``sweep``, one after another (finished runs are skipped, interrupted
    ones resume), each with its peak memory and wall time in ``RUN/ablate_run.json``."""
    from ...tasks.classification import finetune
    cuda = torch.device(_device_type(sweep.options.get('device'))).type == 'cuda'
    for i, r in enumerate(sweep.runs, 1):
        head = f'[{i}/{len(sweep.runs)}] {r.variant.label} seed {r.seed}'
        if r.state == 'done':
            log(f'{head}: finished earlier, skipped')
            continue
        log(f"{head}: {'resuming' if r.state == 'resume' else 'training'} ({r.variant.describe()})")
        start = time.perf_counter()
        with PeakMemory(cuda) as memory:
            finetune(sweep.base, sweep.data, sweep.epochs, r.path, model_kwargs=r.model_kwargs, seed=r.seed,
                     resume=r.state == 'resume', **sweep.options)
        _write_run_info(r, memory, time.perf_counter() - start)


def _device_type(device: Optional[str]) -> str:
    if device:
        return device.split(':')[0]
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def _write_plan(out: Path, base: str, data, epochs: int, seeds: List[int], items: List[Variant],
                base_kwargs: Dict[str, Any], options: Dict[str, Any]) -> None:
    from ...files import write_text_atomic
    out.mkdir(parents=True, exist_ok=True)
    plan = {'base': base, 'data': str(data), 'epochs': epochs, 'seeds': seeds, 'model_kwargs': base_kwargs,
            'options': options,
            'variants': [{'label': v.label, 'text': v.text, 'change': v.change, 'describe': v.describe()}
                         for v in items]}
    write_text_atomic(out / SWEEP, json.dumps(plan, indent=1, default=repr) + '\n')


def _write_run_info(r: Run, memory: PeakMemory, wall_s: float) -> None:
    from ...files import write_text_atomic
    old = read_json(r.path / RUN_INFO)
    peak = memory.mb
    if peak is not None and old.get('peak_memory_mb') is not None:
        peak = max(peak, old['peak_memory_mb'])  # a resumed run: the larger of its parts
    info = {'variant': r.variant.label, 'seed': r.seed, 'peak_memory_mb': peak, 'memory': memory.what,
            'wall_s': wall_s + old.get('wall_s', 0.0)}
    write_text_atomic(r.path / RUN_INFO, json.dumps(info, indent=1) + '\n')


def read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return {}

