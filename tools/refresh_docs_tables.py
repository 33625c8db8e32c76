"""Rewrite the generated tables of README.md and docs/ (between <!-- NAME:start --> / <!-- NAME:end -->).

tests/test_docs.py fails when a block differs from what this writes. Refresh them with
`PYTHONPATH=. python tools/refresh_docs_tables.py`.
"""
import re
from pathlib import Path

from se_hub_cli.listing import format_table, model_rows

REPO = Path(__file__).resolve().parents[1]
# block name -> (file, globs, exclude globs, pretrained only): `se-hub list --markdown GLOB --exclude ...`
TABLES = {
    'models-table': ('docs/models.md', ['se_*'], ['se_resnet50_*'], False),
    'ablation-table': ('docs/paper.md', ['se_resnet50*'], ['se_resnet50b'], False),
    'weights-table': ('docs/weights.md', ['se_*'], [], True),
    # README's short table: a few of the residual and MBConv models with published weights
    'readme-weights-table': ('README.md', ['se_resnet50', 'se_resnet50b', 'se_resnext50_32x4d', 'se_senet154',
                                           'se_efficientnet_b0', 'se_tf_efficientnet_lite0'], [], True),
}
PAPER_TABLE = 'docs/paper.md'


def generated_tables():
    """(file relative to the repository, block name, its markdown table), for every generated block."""
    for name, (path, globs, exclude, pretrained) in TABLES.items():
        rows = [row for glob in globs for row in model_rows(glob, exclude, pretrained)]
        yield path, name, format_table(rows, markdown=True)
    from se_hub.models.paper_table import paper_table_rows  # imports torch: only for this block
    yield PAPER_TABLE, 'paper-table', format_table(paper_table_rows(), markdown=True)


def block_pattern(name: str) -> str:
    return rf'(<!-- {name}:start -->\n)(?:.*?\n)?(<!-- {name}:end -->)'


def read_block(path: str, name: str) -> str:
    """The text between a file's <!-- NAME:start --> and <!-- NAME:end --> lines."""
    text = (REPO / path).read_text()
    m = re.search(block_pattern(name), text, flags=re.S)
    assert m, f'{path} has no {name} block'
    return text[m.end(1):m.start(2)].rstrip('\n')


def main() -> None:
    for path, name, table in generated_tables():
        text = (REPO / path).read_text()
        text, n = re.subn(block_pattern(name), lambda m, t=table: m.group(1) + t + '\n' + m.group(2), text, flags=re.S)
        assert n == 1, f'{path} has no {name} block'
        (REPO / path).write_text(text)


if __name__ == '__main__':
    main()
