"""SE overhead benchmark: se_hub's SE-ResNet-50 next to timm's and next to its SE-free baselines.

Models (via timm's registry; ``import se_hub`` registers se_hub's): timm layout se_hub
``se_resnet50b`` / timm ``seresnet50`` / SE-free timm ``resnet50`` and se_hub ``se_resnet50b(se_layer=
None)``; Caffe layout se_hub ``se_resnet50`` / timm ``legacy_seresnet50`` / SE-free ``se_resnet50_none``.

Columns (CPU, 224x224): eval latency at batch 1 and throughput at batch 16 (``inference_mode``);
train-step time at batch 8 (forward + backward + SGD step); memory saved for backward at batch 8
(UNIQUE storages packed by autograd in a train-mode forward, via ``saved_tensors_hooks``, keyed by
storage pointer, parameters and buffers excluded); SE overhead (%) over the same-layout baseline.

Timing is interleaved (each round visits every model for each metric, one warm-up then ``--runs``
timed iterations, 4x at batch 1; medians over all rounds) so drift hits all models alike. Other
processes on our cores make OpenMP steps 10-30x slower, so a visit during which the rest of the
machine used more than the cores we leave spare + 10% (``/proc/stat``) is re-run when it is quiet.

Run (from the repository root):
    PYTHONPATH=. python bench/bench_se_overhead.py                  # full run, several minutes
    PYTHONPATH=. python bench/bench_se_overhead.py --quick          # smoke check
    PYTHONPATH=. python bench/bench_se_overhead.py --models se_resnet50b,seresnet50 --rounds 3
"""
import argparse
import os
import shlex
import statistics
import sys
import time

import record  # bench/record.py: --results writes the output to bench/results/
import timm
import torch
import torch.nn.functional as F

import se_hub

# label -> (registered model name, kwargs, label of the same-layout SE-free baseline)
MODELS = {
    'se_resnet50b': ('se_resnet50b', {}, 'se_resnet50b[se_layer=None]'),
    'seresnet50': ('seresnet50', {}, 'resnet50'),
    'resnet50': ('resnet50', {}, None),
    'se_resnet50b[se_layer=None]': ('se_resnet50b', dict(se_layer=None), None),
    'se_resnet50': ('se_resnet50', {}, 'se_resnet50_none'),
    'legacy_seresnet50': ('legacy_seresnet50', {}, 'se_resnet50_none'),
    'se_resnet50_none': ('se_resnet50_none', {}, None),
}
BATCH, TRAIN_BATCH, SIZE, MIB = 16, 8, 224, 2 ** 20  # TRAIN_BATCH: train step and saved memory
CORES = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def create(label):
    name, kwargs, baseline = MODELS[label]
    if None in kwargs.values():  # create_model drops None kwargs (se_layer=None would keep SE)
        model = timm.models.model_entrypoint(name)(**kwargs)
    else:
        model = timm.create_model(name, **kwargs)
    assert baseline or not any('.se.' in n for n, _ in model.named_parameters()), f'{label} has SE'
    return model


def saved_for_backward_bytes(model, x):
    """Bytes of the unique non-parameter storages autograd saves during one train-mode forward."""
    exclude = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in exclude:
            saved[ptr] = t.untyped_storage().nbytes()
        # keeping t alive keeps its address from being reused within the forward; detached, because a layer's
        # saved output held with its graph would hold that graph (a cycle that outlives the forward)
        return t.detach()

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(saved.values())


def make_steps(model):
    """Per-metric zero-argument callables running one iteration of ``model``."""
    x1, xb = torch.randn(1, 3, SIZE, SIZE), torch.randn(BATCH, 3, SIZE, SIZE)
    xt, yt = torch.randn(TRAIN_BATCH, 3, SIZE, SIZE), torch.randint(0, 1000, (TRAIN_BATCH,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def infer(x):
        model.eval()
        with torch.inference_mode():
            model(x)

    def train():
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xt), yt).backward()
        opt.step()

    return {'b1': lambda: infer(x1), 'batch': lambda: infer(xb), 'train': train}


def others_cpu_s():
    """CPU seconds used so far by everything on the machine except this process (Linux)."""
    with open('/proc/stat') as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    own = os.times()
    return (user + nice + system + irq + softirq) / os.sysconf('SC_CLK_TCK') - own.user - own.system


def others_allowed():
    """Cores the rest of the machine may keep busy without taking ours: the spare ones + 10%."""
    return max(CORES - torch.get_num_threads(), 0) + 0.1 * CORES


def wait_for_quiet(max_wait_s=120):
    for _ in range(max_wait_s):  # until a second in which the rest of the machine stayed in bounds
        c0 = others_cpu_s()
        time.sleep(1.)
        if others_cpu_s() - c0 < others_allowed():
            return


def timed(fn, runs, retries, stats):
    """One warm-up call (caches after the previous model), then ``runs`` timed calls; re-run
    (after waiting for quiet) if other processes took more than ``others_allowed()`` cores."""
    for attempt in range(retries + 1):
        fn()
        c0, t0, times = others_cpu_s(), time.perf_counter(), []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        if others_cpu_s() - c0 < others_allowed() * (time.perf_counter() - t0):
            break
        stats['contended' if attempt == retries else 'rerun'] += 1
        if attempt < retries:
            wait_for_quiet()
    return times


def pct(value, base):
    return f'{100. * (value / base - 1.):+.1f}%' if base else '-'


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--runs', type=int, default=3, help='timed iterations per visit (batch 1 gets 4x)')
    p.add_argument('--rounds', type=int, default=5, help='interleaved rounds over all models')
    p.add_argument('--threads', type=int, default=CORES, help='torch.set_num_threads (default: CPU cores)')
    p.add_argument('--retries', type=int, default=5, help='re-runs of a visit disturbed by other processes')
    p.add_argument('--quick', action='store_true', help='smoke check: 1 round of 1 run, no retries')
    p.add_argument('--models', default=','.join(MODELS), help=f'comma-separated subset of: {", ".join(MODELS)}')
    record.add_option(p)
    args = p.parse_args()
    with record.recording(args.results, 'se_overhead'):
        if args.quick:
            args.runs, args.rounds, args.retries = 1, 1, 0
        labels = [m.strip() for m in args.models.split(',') if m.strip()]
        if not labels or any(m not in MODELS for m in labels):
            p.error(f'--models: choose from {list(MODELS)}')

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        print(f'# torch {torch.__version__} | timm {timm.__version__} | se_hub {se_hub.__version__} | python '
              f'{sys.version.split()[0]} | {CORES} cores | threads {torch.get_num_threads()} | runs {args.runs} '
              f'x rounds {args.rounds} | OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "(unset)")}')
        print(f'# command: {shlex.join([sys.executable, *sys.argv])}  (cwd {os.getcwd()})\n')

        models = {m: create(m) for m in labels}
        params = {m: sum(t.numel() for t in model.parameters()) / 1e6 for m, model in models.items()}
        saved = {m: saved_for_backward_bytes(model, torch.randn(TRAIN_BATCH, 3, SIZE, SIZE)) / MIB
                 for m, model in models.items()}
        steps = {m: make_steps(model) for m, model in models.items()}
        samples = {m: {k: [] for k in ('b1', 'batch', 'train')} for m in labels}
        stats = dict(rerun=0, contended=0)
        for r in range(args.rounds):
            order = labels[r % len(labels):] + labels[:r % len(labels)]
            for metric in ('b1', 'batch', 'train'):
                for m in order:
                    samples[m][metric] += timed(steps[m][metric], args.runs * (4 if metric == 'b1' else 1),
                                                args.retries, stats)
            print(f'# round {r + 1}/{args.rounds} done', file=sys.stderr, flush=True)
        med = {m: {k: statistics.median(v) for k, v in s.items()} for m, s in samples.items()}

        print(f'| model | from | params (M) | b1 latency (ms) | b{BATCH} throughput (img/s) | '
              f'train step b{TRAIN_BATCH} (ms) | saved for backward b{TRAIN_BATCH} (MiB) | '
              'SE +lat b1 | SE +train step | SE +saved mem | SE-free baseline |')
        print('|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|')
        for m in labels:
            base = MODELS[m][2] if MODELS[m][2] in med else None
            lat = med[m]['b1'] * 1e3
            print(f'| {m} | {models[m].__module__.split(".")[0]} | {params[m]:.2f} | {lat:.1f} | '
                  f'{BATCH / med[m]["batch"]:.1f} | {med[m]["train"] * 1e3:.0f} | {saved[m]:.1f} | '
                  f'{pct(lat, base and med[base]["b1"] * 1e3)} | {pct(med[m]["train"], base and med[base]["train"])} | '
                  f'{pct(saved[m], base and saved[base])} | {base or "-"} |')
        print()
        for a, b in (('se_resnet50b', 'seresnet50'), ('se_resnet50', 'legacy_seresnet50'),
                     ('se_resnet50b[se_layer=None]', 'resnet50')):
            if a in med and b in med:
                print(f'# {a} vs {b}: b1 latency {pct(med[a]["b1"], med[b]["b1"])}, '
                      f'b{BATCH} time {pct(med[a]["batch"], med[b]["batch"])}, '
                      f'train step {pct(med[a]["train"], med[b]["train"])}, saved mem {pct(saved[a], saved[b])}')
        print(f'# {args.rounds * 3 * len(labels)} timed visits: {stats["rerun"]} re-run after other processes '
              f'used the CPU, {stats["contended"]} kept although still disturbed')


if __name__ == '__main__':
    main()
