"""The report of a sweep: per-variant tables (CSV, markdown) and plots (accuracy against cost, the
curves of every variant) from the finished runs' own files (see the package docstring)."""
import csv
import io
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ...factory import describe_change
from .runs import RUN_INFO, SWEEP, read_json, run_dir, run_metrics, run_state
from .variants import AblationError

CSV, MARKDOWN, COST_PLOT, CURVES_PLOT = 'ablation.csv', 'ablation.md', 'accuracy_vs_cost.png', 'curves.png'


@dataclass
class AblationResult:
    output: Path
    rows: List[Dict[str, Any]]  # one per variant (the CSV's rows)
    runs: List[Dict[str, Any]]  # one per (variant, seed) of the plan: state, final / best top-1, time, memory
    files: List[Path] = field(default_factory=list)


def _discover(out: Path) -> Tuple[List[Tuple[str, str]], List[int], Optional[int], Dict[str, Any]]:
    """(label, change text) per variant, seeds, epochs (None: unknown) and the plan, from
    sweep.json or else from the run directories ``OUT/<label>/seed<k>/``."""
    plan = read_json(out / SWEEP)
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
    args = read_json(run / 'config.json').get('model_args', {})
    return describe_change({k: v for k, v in args.items() if k not in ('num_classes', 'in_chans', 'global_pool')})


def collect(output, log=print) -> AblationResult:
    """Tables and plots of the finished runs in ``output`` (written by :func:`ablate` or by the
    commands it printed): ablation.csv, ablation.md, accuracy_vs_cost.png, curves.png."""
    from ...complexity import model_complexity
    from ...files import write_atomic, write_text_atomic
    from ...plots import draw_scatter, draw_sweep_curves
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
            history = run_metrics(path)
            state = run_state(path, epochs) if path.is_dir() else 'new'
            info = read_json(path / RUN_INFO)
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
        input_size = read_json(first / 'config.json').get('pretrained_cfg', {}).get('input_size')
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
    base = plan.get('base') or read_json(Path(runs[0]['path']) / 'config.json').get('architecture', '')
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
        from ...tasks.classification import FinetuneOptions
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

