"""SE's memory cost in training, every family: what autograd keeps for backward and the train step.

For one model per family (the paper's placements; MBConv in both paddings; the CIFAR networks in both
block kinds) this prints, next to its SE-free twin (``se_layer='none'``):

* the memory autograd keeps for backward in one training forward at batch 4 and 8 (unique non-parameter
  storages, as ``bench_se_overhead.py`` counts them), for se_hub's SE and for the same model under
  ``se_hub.layers.plain_se_backward()`` (SE products kept as PyTorch keeps ``x * g``: what se_hub kept
  before the recomputed products, and what a plain implementation keeps), and for timm's
  same-function model where timm has one;
* the train step at batch 4 (forward, backward, SGD step; median over rounds, the variants of a model
  timed round-robin in the same run, a visit disturbed by other processes re-run), and SE's step against
  the others as the median of the ratios of the same round with its interquartile range: the machine's
  drift between rounds cancels in a ratio of neighbouring visits, so a difference of 1% shows where
  separate medians of a shared 2-core machine move by 5% from run to run;
* with ``--baseline REV``, SE's step against the same model at git revision REV of se_hub ("today's" step
  for a change; ``plain SE`` shares every other change of the working tree): the working tree's SE and
  REV's (``git archive`` into a temporary folder) each run in a process of their own holding only that
  model, which times its own steps when its turn in the round comes. The two processes differ in nothing
  but the revision; this process, which holds four models and has measured memory, is not compared with
  them (a long-lived process and a fresh one need not run the same code at the same speed). Two
  processes running the same code can differ by several percent for their whole life, so the rounds are
  shared among ``--pairs`` successive pairs of fresh processes.

The memory figures of the families with recomputed products or rebuilt residual branches need torch >= 2.8
(on older torch se_hub keeps their SE products as PyTorch does); the BatchNorm-statistics tails and MBConv's
kept products work on any torch.

Train steps on a 2-core CPU move by 10% and more between runs with the allocation pattern (glibc returns
large freed blocks to the system, and the next step faults their pages in again): the results file was made
with glibc's thresholds raised, as ``docs/benchmarks.md`` explains for eager inference.

Run (from the repository root):
    MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=268435456 \
        PYTHONPATH=. python bench/bench_se_memory.py --rounds 21 --pairs 3 --baseline dba4a4e --results  # results
    PYTHONPATH=. python bench/bench_se_memory.py                     # every family, several minutes
    PYTHONPATH=. python bench/bench_se_memory.py --quick             # smoke check
    PYTHONPATH=. python bench/bench_se_memory.py --models se_efficientnet_b0,se_mobilenet --rounds 5
"""
import argparse
import contextlib
import gc
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

import record  # bench/record.py: --results writes the output to bench/results/
import timm
import torch
import torch.nn.functional as F
from bench_se_overhead import CORES, pct, saved_for_backward_bytes, timed

import se_hub
from se_hub.layers import plain_se_backward

# model -> (input size, timm's same-function model or None)
FAMILIES = {
    'se_resnet50b': (224, 'seresnet50'),
    'se_resnet164_cifar': (32, None),
    'se_wrn16_8_cifar': (32, None),
    'se_resnet56_cifar': (32, None),
    'se_efficientnet_b0': (224, 'efficientnet_b0'),
    'se_tf_efficientnet_b0': (224, 'tf_efficientnet_b0'),
    'se_bn_inception': (224, None),
    'se_inception_v3': (299, None),
    'se_inception_resnet_v2': (299, None),
    'se_mobilenet': (224, None),
    'se_shufflenet': (224, None),
    'se_vgg16': (224, None),
    'se_shake_shake26_2x96d_cifar': (32, None),
}
MEMORY_BATCHES, STEP_BATCH, MIB = (4, 8), 4, 2 ** 20
# glibc hands large freed blocks back to the system by default, and an eager train step then pays page faults
# for every activation again, differently for every allocation pattern: raised, timings compare what is computed
MALLOC_SETTINGS = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_')
VARIANTS = ('SE-free', 'SE', 'plain SE', 'timm')

# --baseline: SE's step in a process of its own, one visit per line it reads ("<runs>"), answering the median
# of the visit's steps; the step is train_step's, written again here because the other revision's se_hub
# may lack what this file imports
SE_PROCESS = '''
import statistics, sys, time
import timm, torch
import torch.nn.functional as F
import se_hub
name, size, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
model = timm.create_model(name)
x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
def step():
    model.train()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
print(se_hub.__file__, flush=True)
for line in sys.stdin:
    step()  # warm-up, as timed() does
    times = []
    for _ in range(int(line)):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(statistics.median(times), flush=True)
'''


class SEProcess:
    """SE's train step of ``name`` in a process of its own that imports se_hub from the folder ``tree``
    (``with`` it; ``visit(runs)`` -> seconds)."""

    def __init__(self, tree, label, name, size, threads):
        self.tree, self.label, self.name, self.size, self.threads = tree, label, name, size, threads

    def __enter__(self):
        env = dict(os.environ, PYTHONPATH=self.tree)
        self.proc = subprocess.Popen([sys.executable, '-c', SE_PROCESS, self.name, str(self.size), str(STEP_BATCH),
                                      str(self.threads)], env=env, cwd=self.tree,  # -c puts its cwd on sys.path
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        where = self._answer()
        if not where.startswith(os.path.join(self.tree, 'se_hub')):
            raise SystemExit(f'{self.label}: its process imported se_hub from {where}, not {self.tree}')
        return self

    def _answer(self):
        line = self.proc.stdout.readline().strip()
        if not line:  # its traceback went to stderr
            raise SystemExit(f'{self.label}: the process running {self.name} failed')
        return line

    def visit(self, runs):
        self.proc.stdin.write(f'{runs}\n')
        self.proc.stdin.flush()
        return float(self._answer())

    def __exit__(self, *exc):
        self.proc.stdin.close()
        self.proc.wait()


def revision_tree(root, rev, folder):
    """se_hub of git revision ``rev`` extracted into ``folder``."""
    archive = subprocess.run(['git', 'archive', rev, 'se_hub'], cwd=root, capture_output=True, check=True)
    subprocess.run(['tar', '-x', '-C', folder], input=archive.stdout, check=True)
    return folder


def build(name, variant):
    if variant == 'timm':
        return timm.create_model(FAMILIES[name][1])
    return timm.create_model(name, **({'se_layer': 'none'} if variant == 'SE-free' else {}))


def context(variant):
    return plain_se_backward() if variant == 'plain SE' else contextlib.nullcontext()


def train_step(model, variant, size):
    x, y = torch.randn(STEP_BATCH, 3, size, size), torch.randint(0, 10, (STEP_BATCH,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        with context(variant):
            F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def ratio_pct(ratios):
    """The median of per-round ratios as a percentage, with the interquartile range."""
    mid = statistics.median(ratios)
    if len(ratios) < 4:
        return f'{100. * (mid - 1.):+.1f}%'
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return f'{100. * (mid - 1.):+.1f}% ({100. * (q1 - 1.):+.1f}..{100. * (q3 - 1.):+.1f})'


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rounds', type=int, default=3, help='interleaved rounds of train steps over all variants')
    p.add_argument('--runs', type=int, default=1, help='timed train steps per visit (after one warm-up)')
    p.add_argument('--threads', type=int, default=CORES, help='torch.set_num_threads (default: CPU cores)')
    p.add_argument('--retries', type=int, default=3, help='re-runs of a visit disturbed by other processes')
    p.add_argument('--quick', action='store_true', help='smoke check: two small models, 1 round, no retries')
    p.add_argument('--models', default=','.join(FAMILIES), help=f'comma-separated subset of: {", ".join(FAMILIES)}')
    p.add_argument('--baseline', metavar='REV', help="also time SE's step at this git revision of se_hub against "
                   "the working tree's, each in a process of its own visited in the same rounds: 'SE step vs REV'")
    p.add_argument('--pairs', type=int, default=3, help='--baseline: the rounds are shared among this many '
                   'successive pairs of fresh processes (two processes running the same code can differ by a '
                   'few percent)')
    record.add_option(p)
    args = p.parse_args()
    with record.recording(args.results, 'se_memory'):
        names = [m.strip() for m in args.models.split(',') if m.strip()]
        if args.quick:
            names, args.rounds, args.retries = ['se_resnet56_cifar', 'se_shake_shake26_2x96d_cifar'], 1, 0
        if not names or any(n not in FAMILIES for n in names):
            p.error(f'--models: choose from {list(FAMILIES)}')
        if args.pairs < 1:
            p.error(f'--pairs {args.pairs}: at least 1')
        rounds_per_pair = -(-args.rounds // min(args.pairs, max(args.rounds, 1)))
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        print(f'# torch {torch.__version__} | timm {timm.__version__} | se_hub {se_hub.__version__} | python '
              f'{sys.version.split()[0]} | {CORES} cores | threads {torch.get_num_threads()} | rounds {args.rounds} '
              f'x runs {args.runs} | OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "(unset)")} | glibc '
              + ' '.join(f'{k}={os.environ.get(k, "(unset)")}' for k in MALLOC_SETTINGS))
        print(f'# command: {shlex.join([sys.executable, *sys.argv])}  (cwd {os.getcwd()})\n')

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        trees = contextlib.ExitStack()
        baseline = own = None
        if args.baseline:
            rev = subprocess.run(['git', 'rev-parse', '--short', args.baseline], cwd=root, capture_output=True,
                                 text=True)
            if rev.returncode:
                p.error(f'--baseline {args.baseline}: not a git revision here ({rev.stderr.strip()})')
            baseline, own = f'SE at {rev.stdout.strip()}', 'SE, own process'
            base_tree = revision_tree(root, args.baseline, trees.enter_context(
                tempfile.TemporaryDirectory(prefix='se_hub-baseline-')))
            print(f"# '{baseline}': se_hub of git revision {args.baseline} ({rev.stdout.strip()}), and '{own}': this "
                  f'working tree, each timed in a process of its own holding only that model, a fresh pair every '
                  f'{rounds_per_pair} rounds\n')
        saved, step_ms, step_ratio, stats = {}, {}, {}, dict(rerun=0, contended=0, visits=0)
        for n in names:  # one family at a time: all of them at once do not fit in 24 GiB
            size = FAMILIES[n][0]
            models = {v: build(n, v) for v in VARIANTS if v != 'timm' or FAMILIES[n][1]}
            for v, model in models.items():
                for b in MEMORY_BATCHES:
                    with context(v):
                        saved[n, v, b] = saved_for_backward_bytes(model, torch.randn(b, 3, size, size)) / MIB
            steps = {v: train_step(model, v, size) for v, model in models.items()}
            # one visit: the median of its timed steps
            visits = {v: lambda step=step: statistics.median(timed(step, args.runs, args.retries, stats))
                      for v, step in steps.items()}
            labels = (own, baseline) if baseline else ()
            samples = {v: [] for v in (*visits, *labels)}  # per round
            order = list(samples)
            pair = contextlib.ExitStack()
            try:
                for r in range(args.rounds):
                    if baseline and r % rounds_per_pair == 0:  # a fresh pair of processes
                        pair.close()
                        for label, tree in ((own, root), (baseline, base_tree)):
                            process = pair.enter_context(SEProcess(tree, label, n, size, args.threads))
                            visits[label] = lambda process=process: process.visit(args.runs)
                    for v in order[r % len(order):] + order[:r % len(order)]:
                        samples[v].append(visits[v]())
                        stats['visits'] += 1
            finally:
                pair.close()
            step_ms.update({(n, v): statistics.median(t) * 1e3 for v, t in samples.items()})
            for base in ('plain SE', 'SE-free'):
                step_ratio[n, base] = [se / b for se, b in zip(samples['SE'], samples[base])]
            if baseline:  # two processes alike but for the revision
                step_ratio[n, baseline] = [se / b for se, b in zip(samples[own], samples[baseline])]
            del models, steps, visits
            gc.collect()
            print(f'# {n} done', file=sys.stderr, flush=True)

        b4, b8 = MEMORY_BATCHES
        print(f'| model | input | saved b{b4}, SE-free (MiB) | SE b{b4} | SE overhead b{b4} | SE overhead b{b8} | '
              f'plain SE overhead b{b8} | timm same model b{b8} (MiB) | se_hub vs timm b{b8} | '
              f'train step b{STEP_BATCH}, SE-free (ms) | SE | plain SE | SE step vs plain SE (IQR) | '
              f'SE step vs SE-free (IQR) |' + (f' SE step vs {baseline[6:]} (IQR) |' if baseline else ''))
        print('|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|' + ('--:|' if baseline else ''))
        for n in names:
            size, timm_name = FAMILIES[n]
            timm_mem = f'{saved[n, "timm", b8]:.1f} ({timm_name})' if timm_name else '-'
            vs_timm = pct(saved[n, 'SE', b8], saved[n, 'timm', b8]) if timm_name else '-'
            print(f'| {n} | {size} | {saved[n, "SE-free", b4]:.1f} | {saved[n, "SE", b4]:.1f} | '
                  f'{pct(saved[n, "SE", b4], saved[n, "SE-free", b4])} | '
                  f'{pct(saved[n, "SE", b8], saved[n, "SE-free", b8])} | '
                  f'{pct(saved[n, "plain SE", b8], saved[n, "SE-free", b8])} | {timm_mem} | {vs_timm} | '
                  f'{step_ms[n, "SE-free"]:.0f} | {step_ms[n, "SE"]:.0f} | {step_ms[n, "plain SE"]:.0f} | '
                  f'{ratio_pct(step_ratio[n, "plain SE"])} | {ratio_pct(step_ratio[n, "SE-free"])} |'
                  + (f' {ratio_pct(step_ratio[n, baseline])} |' if baseline else ''))
        trees.close()
        print(f'\n# {stats["visits"]} timed visits (variants of a model round-robin): {stats["rerun"]} re-run after '
              f'other processes used the CPU, {stats["contended"]} kept although still disturbed')


if __name__ == '__main__':
    main()
