"""The command answers quickly: ``se-hub --help`` and ``se-hub list`` import neither torch nor
timm (timings: bench/bench_cli_startup.py), ``list`` / ``info`` read their cost figures from the
catalog file, which this test recomputes, and ``list`` fits 100 columns unless asked for more."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REGENERATE = 'run `python tools/make_catalog_costs.py` to regenerate se_hub/models/catalog_costs.json'


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                          env={'PYTHONPATH': str(REPO), 'PATH': '/usr/bin:/bin'})


@pytest.mark.parametrize('argv', [['--help'], ['list'], ['list', '--pretrained'], ['finetune', '--help'],
                                  ['finetune-detect', '--help'], ['excitations', '--help'], ['ablate', '--help'],
                                  ['bench', '--help'], ['export', '--help']])
def test_help_and_list_import_neither_torch_nor_timm(argv):
    code = ('import sys\nfrom se_hub_cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n'
            "heavy = sorted(m for m in ('torch', 'timm', 'se_hub.models') if m in sys.modules)\n"
            "print('HEAVY', heavy)") % (argv,)
    run = _run(code)
    assert run.returncode == 0, run.stderr
    assert 'HEAVY []' in run.stdout
    if argv == ['--help']:  # every verb is listed, bench (se_hub.deploy.benchmark) among them
        assert ',bench,' in run.stdout and 'time every deployment path' in run.stdout


def test_catalog_is_true():
    """Every registered model is in the catalog with the figures se_hub.complexity measures now."""
    import timm

    from se_hub.complexity import model_complexity
    from se_hub.models.catalog import MODELS
    from se_hub_cli.listing import catalog
    models = catalog()['models']
    assert sorted(models) == sorted(MODELS), f'models added or removed: {REGENERATE}'
    for name in sorted(MODELS):
        params, macs = model_complexity(name)
        row = models[name]
        assert (row['params'], row['macs']) == (params, macs), f'{name}: {REGENERATE}'
        assert row['input_size'] == list(timm.get_pretrained_cfg(name).input_size), f'{name}: {REGENERATE}'
        assert row['paper'] == json.loads(json.dumps(MODELS[name].paper)), f'{name}: {REGENERATE}'


def test_list_fits_100_columns_and_wide_shows_all(capsys):
    from se_hub_cli import main
    assert main(['list']) == 0
    narrow = capsys.readouterr().out.splitlines()
    assert max(map(len, narrow)) <= 100 and len(narrow) > 20
    assert main(['list', '--wide']) == 0
    wide = capsys.readouterr().out.splitlines()
    assert 'paper row' in wide[0] and 'paper row' not in narrow[0] and len(wide) == len(narrow)
    assert main(['list', '--pretrained']) == 0
    assert max(map(len, capsys.readouterr().out.splitlines())) <= 100


def test_list_order_and_filters_are_timms():
    import timm

    import se_hub  # noqa: F401
    from se_hub.models.catalog import MODELS
    from se_hub_cli.listing import list_names
    for pattern, exclude in (('se_*', []), ('se_resnet50*', ['se_resnet50b']), ('*cifar*', [])):
        assert list_names(pattern, exclude) == [n for n in timm.list_models(pattern, exclude_filters=exclude)
                                                if n in MODELS]


def test_info_prints_the_catalog_figures(capsys):
    from se_hub_cli import main
    from se_hub_cli.listing import catalog
    assert main(['info', 'se_resnet50']) == 0
    row = catalog()['models']['se_resnet50']
    assert f"params: {row['params'] / 1e6:.2f}M   multiply-adds: {row['macs'] / 1e9:.3f} G" in capsys.readouterr().out
