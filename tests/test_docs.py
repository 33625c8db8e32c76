"""README.md and the docs site (docs/, mkdocs.yml): every quoted command exists, README stays short, and
the generated tables and the CLI reference equal their generators' output.

`mkdocs build --strict` (broken links and anchors) runs in .ci/run, after the test suite.
"""
import argparse
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

from se_hub_cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README_BUDGET = 250  # lines: details belong in docs/
# docs/cli.md is the parser's own help text, not commands quoted by a person; a bench/results file's first
# line quotes the command that wrote it
DOC_FILES = [REPO / 'README.md'] + sorted(p for p in (REPO / 'docs').glob('*.md') if p.name != 'cli.md')
DOC_FILES += sorted((REPO / 'bench' / 'results').glob('*.md'))
SEPARATORS = {'|', '||', '&&', ';', '&', '>', '>>', '2>&1'}
SCRIPT = re.compile(r'(?:^|/)((?:bench|tools)/[\w./-]+\.py)$')


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def verb_parsers() -> dict:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError('se-hub has no verbs')


def quoted_commands(text: str):
    """Command lines quoted in a markdown text: the lines of every code block that is not Python or text
    (output, layouts), and every inline code span that starts with `se-hub` or runs a bench/ or tools/ script."""
    for lang, body in re.findall(r'^```(\w*)\n(.*?)^```', text, flags=re.S | re.M):
        if lang not in ('python', 'text'):
            yield from body.replace('\\\n', ' ').splitlines()
    prose = re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)
    for span in re.findall(r'(?<!`)`([^`\n]+(?:\n[^`\n]+)?)`(?!`)', prose):
        span = span.replace('\n', ' ')
        if re.match(r'(?:PYTHONPATH=\S+ )?(?:se-hub |python (?:bench|tools)/)', span):
            yield span


def _tokens(line: str):
    line = re.sub(r'^\$ ', '', line.strip()).replace('$(which se-hub)', 'se-hub')
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # prose with an odd quote: the words before any comment
        return line.split('#')[0].split()


def _flag(token: str):
    """'--name' of a token such as '[--name', '(--name:', '--name=VALUE', '--name);'."""
    m = re.match(r'^[\[(]*(--[A-Za-z0-9][\w-]*)', token)
    return m.group(1) if m else None


def _script_options(path: Path) -> str:
    """A bench/tools script's source and that of the bench modules it imports (where its options live)."""
    text = path.read_text()
    for name in re.findall(r'^\s*(?:from|import) (record|bench_\w+)\b', text, flags=re.M):
        text += (path.parent / f'{name}.py').read_text()
    return text


def command_errors(line: str, verbs: dict) -> list:
    """What a quoted command line names that does not exist: a se-hub verb, a verb's flag, a script, a script's flag."""
    errors, tokens = [], _tokens(line)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        script = SCRIPT.search(token)
        if token == 'se-hub' or token.endswith('/se-hub'):
            rest = tokens[i + 1:]
            while rest and rest[0] == '--debug':
                rest = rest[1:]
            if not rest or rest[0] in ('-h', '--help', '...') or rest[0].startswith('<') or rest[0] in SEPARATORS:
                i += 1
                continue
            verb = rest[0]
            if verb not in verbs:
                errors.append(f'se-hub has no verb {verb!r}')
                i += 1
                continue
            known = verbs[verb]._option_string_actions
            for arg in rest[1:]:
                if arg in SEPARATORS:
                    break
                flag = _flag(arg)
                if flag and flag not in known:
                    errors.append(f'se-hub {verb} has no option {flag}')
            i += len(tokens)
        elif script:
            path = REPO / script.group(1)
            if not path.is_file():
                errors.append(f'{script.group(1)} does not exist')
            else:
                source = _script_options(path)
                for arg in tokens[i + 1:]:
                    if arg in SEPARATORS:
                        break
                    flag = _flag(arg)
                    if flag and f"'{flag}'" not in source and f"'--{flag[5:]}'" not in source:  # --no-X: X's switch
                        errors.append(f'{script.group(1)} has no option {flag}')
            i += len(tokens)
        else:
            i += 1
    return errors


@pytest.mark.parametrize('path', DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_quoted_commands_name_verbs_flags_and_scripts_that_exist(path):
    verbs = verb_parsers()
    errors = [f'{line.strip()!r}: {e}'
              for line in quoted_commands(path.read_text()) for e in command_errors(line, verbs)]
    assert not errors, '\n'.join(errors)


@pytest.mark.parametrize('line,error', [
    ('se-hub export m --format onnx --output m.onnx --int8-all', 'se-hub export has no option --int8-all'),
    ('se-hub fine-tune --model m', "se-hub has no verb 'fine-tune'"),
    ('torchrun --nproc_per_node 2 $(which se-hub) finetune --model m [--no-such-flag]',
     'se-hub finetune has no option --no-such-flag'),
    ('PYTHONPATH=. python bench/bench_nothing.py --rounds 3', 'bench/bench_nothing.py does not exist'),
    ('python bench/bench_deploy.py --quick --no-such-path', 'bench/bench_deploy.py has no option --no-such-path'),
])
def test_the_command_check_catches_what_does_not_exist(line, error):
    """The check above would fail on a removed verb, flag or script (and passes the real ones below)."""
    assert command_errors(line, verb_parsers()) == [error]


@pytest.mark.parametrize('line', [
    'se-hub export m --format onnx --output m.onnx [--img-size N] [--dynamic-batch]   # a comment --not-a-flag',
    'se-hub predict IMAGE... --model MODEL[.TAG]  top-k labels (--topk K, --json); IMAGE may be skimage:NAME',
    'python bench/bench_deploy.py --no-compile --results',  # BooleanOptionalAction; bench/record.py's option
    'se-hub --help', 'se-hub <verb> --help',
])
def test_the_command_check_accepts_real_commands(line):
    assert command_errors(line, verb_parsers()) == []


def test_readme_stays_within_its_budget():
    lines = len((REPO / 'README.md').read_text().splitlines())
    assert lines <= README_BUDGET, f'README.md has {lines} lines (budget {README_BUDGET}): move details into docs/'


@pytest.mark.parametrize('path,name,table', list(_tool('refresh_docs_tables').generated_tables()),
                         ids=lambda v: v if isinstance(v, str) and '\n' not in v else '')
def test_generated_tables_equal_their_generator(path, name, table):
    assert _tool('refresh_docs_tables').read_block(path, name) == table, \
        'run: PYTHONPATH=. python tools/refresh_docs_tables.py'


def test_cli_reference_equals_the_help_of_every_verb():
    tool = _tool('make_cli_reference')
    page = tool.OUT.read_text()
    written_with = re.search(r'with Python (\d+\.\d+)', page)
    if written_with and written_with.group(1) != '%d.%d' % sys.version_info[:2]:
        pytest.skip(f'docs/cli.md was written with Python {written_with.group(1)}: argparse lays out help '
                    'differently from one version to the next')
    assert page == tool.reference(), 'run: PYTHONPATH=. python tools/make_cli_reference.py'
    assert set(verb_parsers()) <= set(re.findall(r'^## se-hub (\S+)$', page, flags=re.M))


def test_pages_include_results_files_that_exist():
    """The docs quote bench/ output by including bench/results/ files (mkdocs' snippets; a missing one also
    fails `mkdocs build --strict`)."""
    included = [m for p in DOC_FILES for m in re.findall(r'^--8<-- "([^"]+)"$', p.read_text(), flags=re.M)]
    assert included and all((REPO / m).is_file() for m in included), included


def _slug(heading: str) -> str:
    """The anchor mkdocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r'[^\w\s-]', '', re.sub(r'<[^>]+>', '', heading)).strip().lower()
    return re.sub(r'[-\s]+', '-', text)


def test_readme_links_into_docs_reach_a_page_and_heading():
    """mkdocs --strict checks the links between pages; README is not a page of the site: its links are checked here."""
    errors = []
    for target, anchor in re.findall(r'\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)', (REPO / 'README.md').read_text()):
        page = REPO / target
        if not page.is_file():
            errors.append(f'{target} does not exist')
        elif anchor and anchor not in {_slug(h) for h in re.findall(r'^#+ (.+)$', page.read_text(), flags=re.M)}:
            errors.append(f'{target} has no heading #{anchor}')
    assert not errors, '\n'.join(errors)
