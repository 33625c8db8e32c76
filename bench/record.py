"""Results files of the benches: what a bench prints, also written to bench/results/<what>-<cpu>.md.

Every bench takes ``--results [DIR]`` (DIR defaults to bench/results/). The file holds one header line
(the command, the date, the CPU, torch) and the printed output as a text block; the docs pages include
these files (mkdocs' snippets), so a page quotes the latest run of its command on that kind of CPU.
A run that fails writes nothing.
"""
import contextlib
import datetime
import io
import platform
import re
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / 'bench' / 'results'


def add_option(parser) -> None:
    parser.add_argument('--results', nargs='?', const=str(RESULTS), default=None, metavar='DIR',
                        help='also write the printed output to DIR/<what>-<cpu>.md (DIR: bench/results/ if not given)')


def cpu_name() -> str:
    """The CPU's model name and the vector extensions that decide the benches' speed (int8 and bf16 kernels)."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            key, _, value = line.partition(':')
            if key.strip() == 'model name':
                model = value.strip()
            elif key.strip() in ('flags', 'Features'):
                flags = set(value.split())
            if model and flags:
                break
    if 'amx_int8' in flags:
        isa = 'AMX'
    elif 'avx512_vnni' in flags:
        isa = 'AVX-512 VNNI' + (' BF16' if 'avx512_bf16' in flags else '')
    elif 'avx512f' in flags:
        isa = 'AVX-512'
    elif 'avx2' in flags:
        isa = 'AVX2'
    else:
        isa = platform.machine()
    return f'{model} {isa}'.strip()


def slug(text: str) -> str:
    text = re.sub(r'\((?:R|TM)\)|\bCPU\b|@.*?GHz', ' ', text)
    return re.sub(r'[^a-z0-9]+', '-', text.lower()).strip('-')


def results_path(directory, what: str) -> Path:
    return Path(directory) / f'{what}-{slug(cpu_name())}.md'


def render(command: str, body: str, date: str, cpu: str, torch_version: str) -> str:
    return (f'`{command}` ({date}; {cpu}; torch {torch_version})\n\n'
            f'```text\n{body.rstrip()}\n```\n')


class _Tee(io.TextIOBase):
    def __init__(self, stream):
        self.stream, self.buffer = stream, io.StringIO()

    def write(self, text):
        self.buffer.write(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


@contextlib.contextmanager
def recording(directory, what: str):
    """Print as usual; with a directory (the ``--results`` value) also write the output there on success."""
    if directory is None:
        yield
        return
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        yield
    script = Path(sys.argv[0]).resolve()
    script = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    command = ' '.join(['PYTHONPATH=. python', str(script), *map(shlex.quote, sys.argv[1:])])
    import torch
    path = results_path(directory, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(command, tee.buffer.getvalue(), datetime.date.today().isoformat(), cpu_name(),
                           torch.__version__))
    print(f'wrote {path}', file=sys.stderr)
