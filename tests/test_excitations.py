"""Excitation analysis (se_hub.analysis.excitations, `se-hub excitations`).

A small SE network is trained on the real digits data by a plain AdamW loop written here (no se_hub
training code); then the statistics are checked against the paper's finding (late blocks are
class-selective, early ones are not as much) and against a direct computation: every gate kept in
memory by hooks written in this file, numpy mean / std per class.
"""
import csv
import math
import shutil
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import se_hub  # noqa: F401  (registers the models)
from _helpers import randomize_batchnorm
from se_hub.analysis.excitations import ExcitationStats, NoGatesError, collect_excitations
from se_hub.layers import SqueezeExcite
from se_hub.tasks.data import DataError, find_splits, read_image
from se_hub_cli import main

EPOCHS = 6
SIZE = 16  # the digits are 8x8 scans: 16x16 keeps every detail at a quarter of the 32x32 cost


def _images(model, samples, img_size=None):
    """The images of ``samples`` with the model's eval preprocessing, and their labels."""
    cfg = resolve_data_config({}, model=model)
    if img_size:
        cfg['input_size'] = (3, img_size, img_size)
    tf = create_transform(**cfg, is_training=False)
    return torch.stack([tf(read_image(p)) for p, _ in samples]), np.array([t for _, t in samples])


def _direct(model, units, images, batch=64):
    """Every gate of every unit in ``units`` (names of SqueezeExcite modules), per image: {name: (N, C)}."""
    modules = dict(model.named_modules())
    kept = {n: [] for n in units}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: kept[n].append(o.mean((2, 3)).double().numpy()))
             for n in units]
    model.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            model(images[i:i + batch])
    for h in hooks:
        h.remove()
    return {n: np.concatenate(v) for n, v in kept.items()}


def _se_units(model):
    return [n for n, m in model.named_modules() if isinstance(m, SqueezeExcite)]


@pytest.fixture(scope='module')
def trained(digits_dir, tmp_path_factory):
    """se_resnet20_cifar with one block per stage, trained on the digits train split, and its export."""
    from se_hub.hub import save_pretrained
    torch.manual_seed(0)
    model = timm.create_model('se_resnet20_cifar', num_classes=10, layers=(1, 1, 1))
    splits = find_splits(digits_dir)
    x, y = _images(model, splits.train.samples, SIZE)
    y = torch.from_numpy(y)
    steps = EPOCHS * math.ceil(len(x) / 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    out = tmp_path_factory.mktemp('trained') / 'model'
    save_pretrained(model, out, label_names=splits.classes)
    return model, out, splits


def test_trained_model_is_accurate(trained):
    """The finding below is about a network that learned the task (not a random one)."""
    model, _, splits = trained
    x, y = _images(model, splits.val.samples, SIZE)
    with torch.no_grad():
        top1 = (model(x).argmax(1).numpy() == y).mean()
    assert top1 > 0.9, top1


def test_late_blocks_are_more_class_selective(trained, digits_dir):
    """The paper's "role of excitation": early gates are shared by the classes, late ones are class-specific."""
    model, _, _ = trained
    stats = collect_excitations(model, digits_dir, img_size=SIZE, num_workers=0, progress=False)
    rows = stats.selectivity()
    assert [r['block'] for r in rows] == ['layer1.0.se', 'layer2.0.se', 'layer3.0.se']
    sel = [r['selectivity'] for r in rows]
    assert sel[-1] > 1.5 * sel[0], sel
    assert rows[-1]['between'] > 3 * rows[0]['between'], rows
    # the same measure on the untrained network: no such growth from depth alone
    torch.manual_seed(0)
    fresh = timm.create_model('se_resnet20_cifar', num_classes=10, layers=(1, 1, 1))
    untrained = [r['selectivity'] for r in collect_excitations(fresh, digits_dir, img_size=SIZE, num_workers=0,
                                                               progress=False).selectivity()]
    assert sel[-1] > untrained[-1], (sel, untrained)


def _selectivity_by_hand(mean, std):
    k = len(mean)
    pairs = [np.sqrt(((mean[a] - mean[b]) ** 2).mean()) for a in range(k) for b in range(a + 1, k)]
    within = np.mean([np.sqrt((s ** 2).mean()) for s in std])
    return np.mean(pairs) / within


def test_statistics_equal_a_direct_computation(trained, digits_dir, tmp_path):
    model, _, splits = trained
    # batches of 7 mix classes and split them across batches: the running merge must still be exact
    stats = collect_excitations(model, digits_dir, img_size=SIZE, batch_size=7, num_workers=0, progress=False)
    x, y = _images(model, splits.val.samples, SIZE)
    gates = _direct(model, _se_units(model), x)
    assert stats.classes == splits.classes
    np.testing.assert_array_equal(stats.counts, np.bincount(y, minlength=10))
    for b, name in enumerate(stats.blocks):
        want_mean = np.stack([gates[name][y == k].mean(0) for k in range(10)])
        want_std = np.stack([gates[name][y == k].std(0) for k in range(10)])
        np.testing.assert_allclose(stats.means[b], want_mean, rtol=0, atol=1e-6)
        np.testing.assert_allclose(stats.stds[b], want_std, rtol=0, atol=1e-6)
        pooled_mean, pooled_std = stats.pooled(b)
        np.testing.assert_allclose(pooled_mean, gates[name].mean(0), atol=1e-6)
        np.testing.assert_allclose(pooled_std, gates[name].std(0), atol=1e-6)
        assert stats.selectivity()[b]['selectivity'] == pytest.approx(_selectivity_by_hand(want_mean, want_std),
                                                                      rel=1e-5)
    # saved and reloaded (float32 on disk)
    stats.save(tmp_path)
    again = ExcitationStats.load(tmp_path / 'excitations.safetensors')
    assert again.blocks == stats.blocks and again.classes == stats.classes
    for b in range(len(stats.blocks)):
        np.testing.assert_allclose(again.means[b], stats.means[b], atol=1e-6)
        np.testing.assert_allclose(again.stds[b], stats.stds[b], atol=1e-6)


def test_full_disk_while_saving_keeps_the_files_there(trained, digits_dir, tmp_path, full_disk):
    """Saving into a directory on a full disk (the kernel's ENOSPC) says so; the files of an earlier
    save stay as they were and no temporary file is left."""
    import errno

    from se_hub.files import FileWriteError
    model, _, _ = trained
    stats = collect_excitations(model, digits_dir, classes=['0', '1'], max_images=2, batch_size=4,
                                img_size=SIZE, num_workers=0, progress=False)
    paths = stats.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    full_disk.add('excitations.csv')
    kept = r'the disk is full, could not write .*excitations\.csv; the previous .*excitations\.csv is intact'
    with pytest.raises(FileWriteError, match=kept) as e:
        stats.save(tmp_path)
    assert e.value.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert sorted(before) == sorted(p.name for p in paths.values())


def test_classes_and_max_images_per_class(trained, digits_dir):
    model, _, splits = trained
    stats = collect_excitations(model, digits_dir, classes=['7', '3', '1'], max_images=5, batch_size=4,
                                img_size=SIZE, num_workers=0, progress=False)
    assert stats.classes == ['7', '3', '1']
    np.testing.assert_array_equal(stats.counts, [5, 5, 5])
    for k, cls in enumerate(stats.classes):  # the first five images of the class, in the data set's order
        samples = [s for s in splits.val.samples if splits.classes[s[1]] == cls][:5]
        x, _ = _images(model, samples, SIZE)
        gates = _direct(model, stats.blocks, x)
        for b, name in enumerate(stats.blocks):
            np.testing.assert_allclose(stats.means[b][k], gates[name].mean(0), atol=1e-6)
            np.testing.assert_allclose(stats.stds[b][k], gates[name].std(0), atol=1e-6)


def test_cli_writes_every_file_and_they_reload(trained, digits_dir, tmp_path, capsys):
    from safetensors.numpy import load_file
    model, export, splits = trained
    out = tmp_path / 'excite'
    rc = main(['excitations', '--model', f'local-dir:{export}', '--data', str(digits_dir), '--classes', '0,1,2,3',
               '--max-images', '12', '--batch-size', '16', '--img-size', str(SIZE), '--workers', '0', '--no-progress',
               '--device', 'cpu', '--output', str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert 'selectivity' in printed and 'layer3.0.se' in printed
    names = {p.name for p in out.iterdir()}
    assert names == {'excitations.safetensors', 'excitations.csv', 'selectivity.csv', 'excitations_by_depth.png',
                     'excitations_last_blocks.png'}
    arrays = load_file(out / 'excitations.safetensors')
    np.testing.assert_array_equal(arrays['counts'], [12] * 4)
    blocks = _se_units(model)
    # the CLI's numbers are those of a direct computation on the reloaded export
    for k, cls in enumerate(['0', '1', '2', '3']):
        x, _ = _images(model, [s for s in splits.val.samples if splits.classes[s[1]] == cls][:12], SIZE)
        gates = _direct(model, blocks, x)
        for name in blocks:
            np.testing.assert_allclose(arrays[f'mean/{name}'][k], gates[name].mean(0), atol=1e-6)
            np.testing.assert_allclose(arrays[f'std/{name}'][k], gates[name].std(0), atol=1e-6)
    with open(out / 'excitations.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(blocks) * 4
    for r in rows:
        mean = arrays[f"mean/{r['block']}"][['0', '1', '2', '3'].index(r['class'])]
        assert int(r['images']) == 12 and int(r['channels']) == mean.shape[0]
        assert float(r['gate_mean']) == pytest.approx(mean.mean(), rel=1e-5)
        assert float(r['saturated_fraction']) == pytest.approx((mean > 0.9).mean(), abs=1e-9)
    with open(out / 'selectivity.csv', newline='') as f:
        sel = list(csv.DictReader(f))
    assert [r['block'] for r in sel] == blocks
    for r, b in zip(sel, blocks):
        means = arrays[f'mean/{b}'].astype(np.float64)
        stds = arrays[f'std/{b}'].astype(np.float64)
        assert float(r['selectivity']) == pytest.approx(_selectivity_by_hand(means, stds), rel=1e-4)
    for png in ('excitations_by_depth.png', 'excitations_last_blocks.png'):
        with Image.open(out / png) as img:
            img.verify()
            assert img.format == 'PNG' and img.width > 500 and img.height > 250
    stats = ExcitationStats.load(out)
    assert stats.classes == ['0', '1', '2', '3'] and stats.blocks == blocks and stats.split == 'val'


# one model per family (random weights, small inputs): a statistics entry for every SE unit
FAMILIES = {
    'se_resnet18': ({}, 32),  # residual, basic block
    'se_resnext26_32x4d': ({}, 32),  # residual, grouped bottleneck
    'se_resnet50_nosqueeze': ({}, 32),  # per-position gates (spatial mean recorded)
    'se_bn_inception': ({}, 32),
    'se_inception_v3': ({}, 75),
    'se_efficientnet_b0': ({}, 32),  # MBConv
    'se_resnet20_cifar': ({}, 16),
    'se_mobilenet': ({}, 32),
    'se_shufflenet': ({}, 32),
    'se_vgg16': ({'mlp_hidden': 32}, 32),
    'se_shake_shake26_2x96d_cifar': ({}, 16),
}


@pytest.fixture(scope='module')
def tiny_dir(digits_dir, tmp_path_factory):
    """Two classes, three images each, in both splits."""
    root = tmp_path_factory.mktemp('tiny')
    for split in ('train', 'val'):
        for cls in ('0', '1'):
            (root / split / cls).mkdir(parents=True)
            for src in sorted((digits_dir / split / cls).iterdir())[:3]:
                shutil.copy(src, root / split / cls / src.name)
    return root


def _check_every_unit(model, stats, units, size):
    assert stats.blocks == units  # every unit once, in the order the forward pass runs them (module order here)
    np.testing.assert_array_equal(stats.counts, [2, 2])
    width = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_pre_hook(lambda m, i, n=n: width.__setitem__(n, i[0].shape[1]))
             for n in units]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    for b, name in enumerate(units):
        assert stats.means[b].shape == (2, width[name])
        assert np.isfinite(stats.means[b]).all() and (stats.stds[b] >= 0).all()


@pytest.mark.parametrize('name', list(FAMILIES))
def test_every_family_gets_an_entry_per_se_unit(name, tiny_dir):
    kwargs, size = FAMILIES[name]
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    stats = collect_excitations(model, tiny_dir, max_images=2, img_size=size, batch_size=4, num_workers=0,
                                progress=False)
    units = _se_units(model)
    assert len(units) >= 3
    _check_every_unit(model, stats, units, size)
    if name == 'se_resnet50_nosqueeze':  # the gate of each position, averaged over the positions
        x, y = _images(model, [s for s in find_splits(tiny_dir).val.samples][:2], img_size=size)
        gates = _direct(model, units[:1], x)
        np.testing.assert_allclose(stats.means[0][0], gates[units[0]].mean(0), atol=1e-6)


@pytest.mark.parametrize('name,kwargs,size', [
    ('se_resnet20_cifar', {'out_indices': (0, 1)}, 16),
    ('se_resnet50b', {'out_indices': (1, 2)}, 32),
    ('se_efficientnet_b0', {}, 32),
])
def test_features_only_models(name, kwargs, size, tiny_dir):
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True, **kwargs)
    full = _se_units(timm.create_model(name))
    units = _se_units(model)
    assert units and (len(units) < len(full) or not kwargs)  # the wrapper keeps the stages it returns
    stats = collect_excitations(model, tiny_dir, max_images=2, img_size=size, batch_size=4, num_workers=0,
                                progress=False)
    _check_every_unit(model, stats, units, size)


@pytest.mark.parametrize('se_layer', ['eca', 'cbam'])
def test_timm_attention_units_are_read_through_their_gate(se_layer, tiny_dir):
    """ECA / CBAM are timm's modules (they return x * gate): the gate is read from their gate module,
    and equals what timm's unit multiplies its input by."""
    from timm.layers.cbam import CbamModule
    from timm.layers.eca import EcaModule
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model('se_resnet18', se_layer=se_layer))  # no zero-init last BN
    cls = EcaModule if se_layer == 'eca' else CbamModule
    units = [n for n, m in model.named_modules() if isinstance(m, cls)]
    stats = collect_excitations(model, tiny_dir, max_images=2, img_size=32, batch_size=4, num_workers=0,
                                progress=False)
    _check_every_unit(model, stats, units, 32)
    # the reference: the factor timm's unit applies, out / in where in != 0 (ECA; CBAM: its channel stage)
    x, y = _images(model, find_splits(tiny_dir).val.samples[:2], img_size=32)
    unit = dict(model.named_modules())[units[0]]
    got = {}
    probe = unit if se_layer == 'eca' else unit.channel
    h = probe.register_forward_hook(lambda m, i, o: got.update(x=i[0], y=o))
    with torch.no_grad():
        model.eval()(x)
    h.remove()
    nonzero = got['x'].abs() > 1e-3
    factor = torch.where(nonzero, got['y'] / torch.where(nonzero, got['x'], 1.0), torch.nan)
    per_channel = torch.nanmean(factor.flatten(2), dim=2).mean(0).double().numpy()  # both images are class 0
    seen = np.isfinite(per_channel)  # a channel the ReLU before the unit zeroed everywhere shows no factor
    assert (y == 0).all() and seen.mean() > 0.5
    np.testing.assert_allclose(stats.means[0][0][seen], per_channel[seen], atol=1e-5)


def test_timm_se_models(tiny_dir):
    """timm's own SE networks (SEModule; EfficientNet's SqueezeExcite) are read through their gate."""
    from timm.layers.squeeze_excite import SEModule
    from timm.models._efficientnet_blocks import SqueezeExcite as EffSE
    for name, cls in (('seresnet18', SEModule), ('efficientnet_b0', EffSE)):
        torch.manual_seed(0)
        model = timm.create_model(name)
        units = [n for n, m in model.named_modules() if isinstance(m, cls)]
        stats = collect_excitations(model, tiny_dir, max_images=2, img_size=32, batch_size=4, num_workers=0,
                                    progress=False)
        _check_every_unit(model, stats, units, 32)


# ------------------------------------------------------------------------------ bad input

def test_models_without_a_readable_gate_are_refused(tiny_dir):
    from timm.layers.cbam import LightCbamModule
    for model in (timm.create_model('se_resnet50_none'), timm.create_model('resnet18')):
        with pytest.raises(NoGatesError, match='has no SE gate to record'):
            collect_excitations(model, tiny_dir, num_workers=0, progress=False)
    light = timm.create_model('se_resnet18', se_layer=lambda c: LightCbamModule(c))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(NoGatesError):
        warnings.simplefilter('always')
        collect_excitations(light, tiny_dir, num_workers=0, progress=False)
    assert any('LightCbamModule' in str(w.message) for w in caught)


def test_bad_input_gets_a_clear_error(tiny_dir, tmp_path, capsys):
    model = timm.create_model('se_resnet20_cifar', layers=(1, 1, 1))
    with pytest.raises(ValueError, match=r"class\(es\) 7, cat are not in the val split .* its classes are 0, 1"):
        collect_excitations(model, tiny_dir, classes=['0', '7', 'cat'], num_workers=0, progress=False)
    with pytest.raises(ValueError, match='max_images must be at least 1'):
        collect_excitations(model, tiny_dir, max_images=0, num_workers=0, progress=False)
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        collect_excitations(model, tiny_dir, split='test', num_workers=0, progress=False)
    empty = tmp_path / 'empty'
    for split in ('train', 'val'):
        (empty / split / 'a').mkdir(parents=True)
    with pytest.raises(DataError, match='has no images'):
        collect_excitations(model, empty, num_workers=0, progress=False)
    with pytest.raises(DataError, match='not found'):
        collect_excitations(model, tmp_path / 'nowhere', num_workers=0, progress=False)
    broken = tmp_path / 'broken'
    shutil.copytree(tiny_dir, broken)
    bad = sorted((broken / 'val' / '1').iterdir())[0]
    bad.write_bytes(b'not a png')
    with pytest.raises(DataError, match=bad.name):
        collect_excitations(model, broken, num_workers=0, progress=False)
    if torch.cuda.is_available():  # a GPU machine: the same statistics on CUDA
        torch.manual_seed(0)
        cpu = collect_excitations(model, tiny_dir, img_size=16, num_workers=0, progress=False, device='cpu')
        gpu = collect_excitations(model, tiny_dir, img_size=16, num_workers=0, progress=False, device='cuda')
        for a, b in zip(cpu.means, gpu.means):
            np.testing.assert_allclose(a, b, atol=1e-4)
    else:
        from se_hub.tasks.distributed import DeviceError
        with pytest.raises(DeviceError, match='no CUDA device'):
            collect_excitations(model, tiny_dir, device='cuda', num_workers=0, progress=False)
    # the CLI: one line saying what is wrong, before any model runs
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    args = ['excitations', '--model', 'se_resnet20_cifar', '--no-pretrained', '--data', str(tiny_dir), '--workers',
            '0', '--no-progress']
    assert main(args + ['--output', str(blocker / 'out')]) == 1
    assert 'cannot write to the output directory' in capsys.readouterr().err
    assert main(args + ['--classes', '0,9', '--output', str(tmp_path / 'o')]) == 1
    assert 'class(es) 9 are not in' in capsys.readouterr().err
    assert main(['excitations', '--model', 'se_resnet50_none', '--no-pretrained', '--data', str(tiny_dir),
                 '--output', str(tmp_path / 'o2'), '--workers', '0', '--no-progress']) == 1
    assert 'has no SE gate to record' in capsys.readouterr().err
