"""Every network the paper reports (TPAMI version of arXiv:1709.01507, Tables 2-8), with the
paper's figures and the se_hub model that reproduces it: README's "Paper fidelity" table
(``tools/refresh_readme_tables.py`` writes it, ``tests/test_paper_table.py`` keeps it in sync).

Figures are the paper's: params in millions, "GFLOPs" (multiply-adds at the input size; MFLOPs
of Table 3 given here in G), results as printed. ``(baseline, SE)`` pairs; None where the paper
prints none. The SE-ResNet-50 ablations (Tables 10-15) have their own README table.
"""
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

Pair = Tuple[Optional[float], Optional[float]]


def _row(table: str, network: str, model: Optional[str], result: str, params: Pair = (None, None),
         gmacs: Pair = (None, None), params_rounding: str = 'round', model_kwargs: Optional[Dict[str, Any]] = None,
         explained: str = '') -> Dict[str, Any]:
    """``params_rounding``: 'round' (to the paper's last digit) or 'truncate' (Table 3 truncates:
    MobileNet 4.23M is printed 4.2M, 4.72M 4.7M). ``explained``: the README paragraph that
    explains a measured cost the paper's rounding does not cover."""
    return dict(table=table, network=network, model=model, result=result, params=params, gmacs=gmacs,
                params_rounding=params_rounding, model_kwargs=model_kwargs or {}, explained=explained)


_T2, _T3 = 'Table 2 (ImageNet)', 'Table 3 (ImageNet, mobile)'
_MACS_NOTE = 'multiply-adds per SE unit'
_DEEP_NOTE = 'deeper residual baselines'
PAPER_NETWORKS: List[Dict[str, Any]] = [
    _row(_T2, 'ResNet-50', 'se_resnet50', 'top-1/5 err 24.80/7.48 -> 23.29/6.62', (25.6, 28.1), (3.86, 3.87)),
    _row(_T2, 'ResNet-101', 'se_resnet101', 'top-1/5 err 23.17/6.52 -> 22.38/6.07', gmacs=(7.58, 7.60),
         explained=_DEEP_NOTE),
    _row(_T2, 'ResNet-152', 'se_resnet152', 'top-1/5 err 22.42/6.34 -> 21.57/5.73', gmacs=(11.30, 11.32),
         explained=_DEEP_NOTE),
    _row(_T2, 'ResNeXt-50 (32x4d)', 'se_resnext50_32x4d', 'top-1/5 err 22.11/5.90 -> 21.10/5.49',
         gmacs=(4.24, 4.25), explained=_DEEP_NOTE),
    _row(_T2, 'ResNeXt-101 (32x4d)', 'se_resnext101_32x4d', 'top-1/5 err 21.18/5.57 -> 20.70/5.01',
         gmacs=(7.99, 8.00), explained=_DEEP_NOTE),
    _row(_T2, 'VGG-16 (with BN)', 'se_vgg16', 'top-1/5 err 27.02/8.81 -> 25.22/7.70', gmacs=(15.47, 15.48),
         explained=_MACS_NOTE),
    _row(_T2, 'BN-Inception', 'se_bn_inception', 'top-1/5 err 25.38/7.89 -> 24.23/7.14', gmacs=(2.03, 2.04)),
    _row(_T2, 'Inception-ResNet-v2 (299x299)', 'se_inception_resnet_v2', 'top-1/5 err 20.37/5.21 -> 19.80/4.79',
         gmacs=(11.75, 11.76), explained='Inception-ResNet-v2 multiply-adds'),
    _row(_T3, 'MobileNet (1.0 MobileNet-224)', 'se_mobilenet', 'top-1/5 err 28.4/9.4 -> 25.3/7.7',
         (4.2, 4.7), (0.569, 0.572), params_rounding='truncate', explained=_MACS_NOTE),
    _row(_T3, 'ShuffleNet 1x (g=3)', 'se_shufflenet', 'top-1/5 err 32.6/12.5 -> 31.0/11.1',
         (1.8, 2.4), (0.140, 0.142), params_rounding='truncate', explained='ShuffleNet multiply-adds'),
    _row('Table 8 (ImageNet)', 'SENet-154', 'se_senet154', 'top-1/5 err 18.68/4.47 (224x224)'),
    _row('Tables 4 / 5 (CIFAR-10 / 100)', 'ResNet-110', 'se_resnet110_cifar', 'err 6.37 -> 5.21 / 26.88 -> 23.85'),
    _row('Tables 4 / 5 (CIFAR-10 / 100)', 'ResNet-164', 'se_resnet164_cifar', 'err 5.46 -> 4.39 / 24.33 -> 21.31'),
    _row('Tables 4 / 5 (CIFAR-10 / 100)', 'WRN-16-8', 'se_wrn16_8_cifar', 'err 4.27 -> 3.88 / 20.43 -> 19.14'),
    # the baseline's 26.2M is the Shake-Shake paper's (Gastaldi 2017, Table 1)
    _row('Table 4 (CIFAR-10)', 'Shake-Shake 26 2x96d + Cutout', 'se_shake_shake26_2x96d_cifar',
         'err 2.56 -> 2.12', (26.2, None)),
    _row('Table 5 (CIFAR-100)', 'Shake-Even 29 2x4x64d + Cutout', None, 'err 15.85 -> 15.41'),
    _row('Table 6 (Places-365)', 'ResNet-152', 'se_resnet152', 'top-1/5 err 41.15/11.61 -> 40.37/11.01',
         model_kwargs=dict(num_classes=365)),
    _row('Table 7 (COCO, Faster R-CNN)', 'ResNet-50 backbone', 'se_resnet50',
         'AP 38.0 -> 40.4, AP@0.5 57.9 -> 61.0'),
    _row('Table 7 (COCO, Faster R-CNN)', 'ResNet-101 backbone', 'se_resnet101',
         'AP 39.9 -> 41.9, AP@0.5 60.1 -> 62.7'),
]


def _fmt_pair(pair: Pair, digits: int) -> str:
    if pair == (None, None):
        return ''
    return ' -> '.join('—' if v is None else f'{v:.{digits}f}' for v in pair)


@lru_cache(maxsize=None)
def _complexity(model: str, kwargs: Tuple[Tuple[str, Any], ...]) -> Tuple[int, int]:
    from ..complexity import model_complexity
    return model_complexity(model, **dict(kwargs))


def measured(row: Dict[str, Any]) -> Dict[str, Pair]:
    """se_hub's (baseline, SE) parameters and multiply-adds for a row (baseline: se_layer='none')."""
    kwargs = tuple(sorted(row['model_kwargs'].items()))
    base = _complexity(row['model'], kwargs + (('se_layer', 'none'),))
    se = _complexity(row['model'], kwargs)
    return dict(params=(base[0], se[0]), macs=(base[1], se[1]))


def paper_table_rows() -> List[Dict[str, str]]:
    rows = []
    for row in PAPER_NETWORKS:
        out = {'paper table': row['table'], 'network (baseline -> SE)': row['network'],
               'se_hub model': f"`{row['model']}`" if row['model'] else '— (not built)',
               'paper params (M)': _fmt_pair(row['params'], 1),
               'se_hub params (M)': '', 'paper GMACs': _fmt_pair(row['gmacs'], 3 if row['table'] == _T3 else 2),
               'se_hub GMACs': '', 'paper result': row['result']}
        if row['model']:
            m = measured(row)
            out['se_hub params (M)'] = _fmt_pair(tuple(p / 1e6 for p in m['params']), 2)
            out['se_hub GMACs'] = _fmt_pair(tuple(c / 1e9 for c in m['macs']), 3)
        rows.append(out)
    return rows
