"""Rewrite the generated tables of README.md (between <!-- NAME:start --> / <!-- NAME:end -->)."""
import re
from pathlib import Path

from se_hub.models.paper_table import paper_table_rows
from se_hub_cli.listing import format_table, model_rows

README = Path(__file__).resolve().parents[1] / 'README.md'
# block name -> (pattern, exclude globs, pretrained only); the test reads the same spec from here
TABLES = {
    'models-table': ('se_*', ['se_resnet50_*'], False),
    'ablation-table': ('se_resnet50*', ['se_resnet50b'], False),
    'weights-table': ('se_*', [], True),
}


def generated_tables():
    """README block name -> its markdown table."""
    for name, (pattern, exclude, pretrained) in TABLES.items():
        yield name, format_table(model_rows(pattern, exclude, pretrained), markdown=True)
    yield 'paper-table', format_table(paper_table_rows(), markdown=True)


def main() -> None:
    text = README.read_text()
    for name, table in generated_tables():
        text, n = re.subn(rf'(<!-- {name}:start -->\n)(?:.*?\n)?(<!-- {name}:end -->)',
                          lambda m, t=table: m.group(1) + t + '\n' + m.group(2), text, flags=re.S)
        assert n == 1, f'README.md has no {name} block'
    README.write_text(text)


if __name__ == '__main__':
    main()
