"""Wall time of `se-hub --help` and `se-hub list` (best of N runs), through the entry point
`se_hub_cli:main` (what the installed `se-hub` script calls), and the same verbs through the
se_hub package imported first (what the command would cost if it imported se_hub), for comparison.

    python bench/bench_cli_startup.py [--runs 3]
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import record  # bench/record.py: --results writes the output to bench/results/

HERE = Path(__file__).resolve().parents[1]


def best_of(cmd, runs):
    env = dict(os.environ, PYTHONPATH=str(HERE))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--runs', type=int, default=3)
    record.add_option(parser)
    args = parser.parse_args()
    runs = args.runs
    first = 'import sys, se_hub, se_hub_cli; sys.exit(se_hub_cli.main(sys.argv[1:]))'
    with record.recording(args.results, 'cli_startup'):
        print(f"{'command':28s}{'se_hub_cli (s)':>16s}{'import se_hub first (s)':>26s}")
        for verb in (['--help'], ['list'], ['list', '--pretrained']):
            fast = best_of([sys.executable, '-m', 'se_hub_cli', *verb], runs)
            slow = best_of([sys.executable, '-c', first, *verb], runs)
            print(f"{'se-hub ' + ' '.join(verb):28s}{fast:16.2f}{slow:26.2f}")


if __name__ == '__main__':
    main()
