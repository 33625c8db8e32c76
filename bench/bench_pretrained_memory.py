"""Peak memory of ``timm.create_model(MODEL, pretrained=True)``, next to the bare model's.

Builds a fake weight file for MODEL (default ``se_senet154``) the way its manifest entry holds it:
timm's ``legacy_senet154`` state dict (the Cadene layout the real file has), random values, saved
with ``torch.save`` in torch.hub's checkpoint cache (``$TORCH_HOME`` set to a temporary folder),
and points the manifest entry at it (a url source whose file is already cached, the file's real
sha256). Each case runs in a fresh subprocess (``--case``), which imports torch/timm/se_hub,
resets the kernel's peak-RSS counter (``/proc/self/clear_refs``, 5), builds the model, and reports
the peak resident set (``VmHWM``) above its resident set before the build.

Cases:
  bare              create_model(MODEL)                               (the reference)
  manifest          create_model(MODEL, pretrained=True)              se_hub resolves + verifies the file
  manifest (again)  the same, the file's hash stamp already written
  overlay file      pretrained_cfg_overlay=dict(file=PATH)            timm reads the caller's file
  overlay state     pretrained_cfg_overlay=dict(state_dict=torch.load(PATH)), the file read inside the
                    measured span: a state dict in the cfg, as se_hub's manifest path did before
                    (timm deep-copies cfg values)

"extra / weights" = (peak - bare peak) / bytes of the weights: 1.0 means one copy of the
weights besides the model's own parameters. Linux only (/proc).

Run (from the repository root):
    PYTHONPATH=. python bench/bench_pretrained_memory.py                  # se_senet154, ~1 min
    PYTHONPATH=. python bench/bench_pretrained_memory.py --model se_resnet50 --upstream legacy_seresnet50
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import record  # bench/record.py: --results writes the output to bench/results/

CASES = ('bare', 'manifest', 'manifest (again)', 'overlay file', 'overlay state')


def _rss_kib(field: str) -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1])
    raise RuntimeError(f'no {field} in /proc/self/status')


def run_case(case: str, model: str, path: str, sha256: str) -> dict:
    import gc

    import timm
    import torch

    import se_hub  # noqa: F401
    from se_hub.weights import pretrained
    from se_hub.weights.manifest import find_weights
    entry = dict(find_weights(model)[0], sha256=sha256,
                 sources=[dict(kind='url', url=f'https://example.invalid/{os.path.basename(path)}')])
    pretrained.find_weights = lambda name, tag: (entry, entry['tag'])  # the fake file, already in the cache
    kwargs = {}
    if case != 'bare':
        kwargs['pretrained'] = True
    if case == 'overlay file':
        kwargs['pretrained_cfg_overlay'] = dict(file=path)
    gc.collect()
    before = _rss_kib('VmRSS')
    Path('/proc/self/clear_refs').write_text('5')  # peak RSS := current RSS
    if case == 'overlay state':  # read inside the measured span, as the old manifest path did
        kwargs['pretrained_cfg_overlay'] = dict(state_dict=torch.load(path, map_location='cpu', weights_only=True))
    net = timm.create_model(model, **kwargs)
    kwargs.clear()
    peak = _rss_kib('VmHWM')
    return dict(peak_mib=(peak - before) / 1024, params=sum(p.numel() for p in net.parameters()),
                loaded=getattr(net, 'loaded_weights', None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='se_senet154')
    parser.add_argument('--upstream', default='legacy_senet154', help='timm model whose state dict is the fake file')
    parser.add_argument('--case', help=argparse.SUPPRESS)
    parser.add_argument('--path', help=argparse.SUPPRESS)
    parser.add_argument('--sha256', help=argparse.SUPPRESS)
    record.add_option(parser)
    args = parser.parse_args()
    with record.recording(args.results, 'pretrained_memory'):
        if args.case:
            print(json.dumps(run_case(args.case, args.model, args.path, args.sha256)))
            return

        import timm
        import torch
        with tempfile.TemporaryDirectory() as tmp:
            checkpoints = Path(tmp) / 'hub' / 'checkpoints'
            checkpoints.mkdir(parents=True)
            path = checkpoints / f'{args.upstream}-fake.pth'
            state = timm.create_model(args.upstream).state_dict()
            weight_bytes = sum(t.numel() * t.element_size() for t in state.values())
            torch.save(state, path)
            del state
            sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
            # PYTHONPATH first: PYTHONPATH=/other/checkout measures that checkout's se_hub
            env = dict(os.environ, TORCH_HOME=tmp, HF_HUB_OFFLINE='1', PYTHONPATH=os.pathsep.join(
                p for p in (os.environ.get('PYTHONPATH'), str(Path(__file__).resolve().parents[1])) if p))
            rows = []
            for case in CASES:
                out = subprocess.run([sys.executable, __file__, '--case', case, '--model', args.model,
                                      '--path', str(path), '--sha256', sha256], env=env, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f'{case} failed:\n{out.stderr[-3000:]}')
                rows.append((case, json.loads(out.stdout.strip().splitlines()[-1])))
        bare = rows[0][1]['peak_mib']
        weights_mib = weight_bytes / 2**20
        print(f'{args.model}: weights {weights_mib:.0f} MiB ({rows[0][1]["params"] / 1e6:.1f}M parameters), '
              f'fake file in the layout of timm {args.upstream}; torch {torch.__version__}, timm {timm.__version__}')
        print(f'{"case":<18} {"peak above start (MiB)":>22} {"extra over bare (MiB)":>22} '
              f'{"extra / weights":>16}  loaded')
        for case, r in rows:
            extra = r['peak_mib'] - bare
            print(f'{case:<18} {r["peak_mib"]:>22.0f} {extra:>22.0f} {extra / weights_mib:>16.2f}  {r["loaded"]}')


if __name__ == '__main__':
    main()
