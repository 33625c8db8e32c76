"""``se-hub list`` from two data files, without importing torch or timm: the model catalog
``se_hub/models/catalog_costs.json`` (parameters and multiply-adds measured at release time by
``tools/make_catalog_costs.py``; ``tests/test_cli_startup.py`` recomputes them) and the weights
manifest ``se_hub/weights/weights_manifest.json`` (pretrained tags)."""
import fnmatch
import importlib.util
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Sequence

CATALOG_FILE = ('models', 'catalog_costs.json')
MANIFEST_FILE = ('weights', 'weights_manifest.json')
WIDTH = 100  # the default table fits a terminal this wide


def package_dir() -> Path:
    spec = importlib.util.find_spec('se_hub')  # finds the package without importing it
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=None)
def catalog() -> Dict[str, Any]:
    path = package_dir().joinpath(*CATALOG_FILE)
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except FileNotFoundError:
        raise FileNotFoundError(f'{path} is missing: run python tools/make_catalog_costs.py') from None


@lru_cache(maxsize=None)
def pretrained_tags() -> Dict[str, List[str]]:
    """model -> its weight tags, in manifest order (the first is the default)."""
    data = json.loads(package_dir().joinpath(*MANIFEST_FILE).read_text(encoding='utf-8'))
    out: Dict[str, List[str]] = {}
    for entry in data['weights']:
        out.setdefault(entry['model'], []).append(entry['tag'])
    return out


def _natural_key(name: str):
    return [int(s) if s.isdigit() else s for s in re.split(r'(\d+)', name.lower())]


def list_names(pattern: str = 'se_*', exclude: Sequence[str] = ()) -> List[str]:
    """Catalog names matching ``pattern`` and none of ``exclude``, in timm.list_models' order."""
    names = fnmatch.filter(catalog()['models'], pattern)
    for glob in exclude:
        names = [n for n in names if not fnmatch.fnmatch(n, glob)]
    return sorted(names, key=_natural_key)


def model_rows(pattern: str = 'se_*', exclude: Sequence[str] = (), pretrained: bool = False) -> List[Dict]:
    """One row per registered se_hub model matching ``pattern``: measured and paper figures."""
    tags = pretrained_tags()
    models = catalog()['models']
    rows = []
    for name in list_names(pattern, exclude):
        if pretrained and name not in tags:
            continue
        m = models[name]
        paper = m['paper']
        err = (f"{paper['top1_err']:.2f}" if 'top1_err' in paper else '')
        err += (f" / {paper['top5_err']:.2f}" if 'top5_err' in paper else '')  # CIFAR rows have no top-5
        row = {
            'model': name,
            'params (M)': f"{m['params'] / 1e6:.2f}",
            'GMACs': f"{m['macs'] / 1e9:.3f}",
            'input': 'x'.join(str(s) for s in m['input_size'][1:]),
            'paper row': paper.get('row', ''),
            'paper params (M)': f"{paper['params']:.1f}" if 'params' in paper else '',
            'paper GMACs': f"{paper['gmacs']:.2f}" if 'gmacs' in paper else '',
            'paper top-1 / top-5 err (%)': err,
        }
        if pretrained:
            row = {'model': name, 'params (M)': row['params (M)'], 'GMACs': row['GMACs'],
                   'pretrained tags': ', '.join(tags[name])}
        rows.append(row)
    return rows


def format_table(rows: Sequence[Dict], markdown: bool = False, width: int = 0) -> str:
    """A plain or markdown table. ``width`` > 0: drop columns from the right, then cut the last
    kept column's cells, until each line fits (markdown tables are never cut)."""
    if not rows:
        return 'no models match'
    cols = list(rows[0])
    if markdown:
        lines = ['| ' + ' | '.join(cols) + ' |', '|' + '|'.join('---' for _ in cols) + '|']
        lines += ['| ' + ' | '.join(r[c] for c in cols) + ' |' for r in rows]
        return '\n'.join(lines)
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    if width > 0:
        while len(cols) > 2 and sum(widths[c] + 2 for c in cols) - 2 > width:
            cols.pop()
        over = sum(widths[c] + 2 for c in cols) - 2 - width
        if over > 0:
            last = cols[-1]
            widths[last] = max(len(last), widths[last] - over)
    cut = lambda text, n: text if len(text) <= n else text[:n - 1] + '…'
    lines = ['  '.join(cut(c, widths[c]).ljust(widths[c]) for c in cols).rstrip()]
    lines += ['  '.join(cut(r[c], widths[c]).ljust(widths[c]) for c in cols).rstrip() for r in rows]
    return '\n'.join(lines)

