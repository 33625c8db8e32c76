"""Regenerate se_hub/models/catalog_costs.json: every registered se_hub model's parameters,
multiply-adds (at its input size, as se_hub.complexity counts them), input size and paper
figures, which ``se-hub list`` and ``se-hub info`` print without building any model.

Run after adding or changing a model (tests/test_cli_startup.py fails until the file is true):

    python tools/make_catalog_costs.py
"""
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / 'se_hub' / 'models' / 'catalog_costs.json'


def measure(name: str) -> dict:
    import timm

    from se_hub.complexity import model_complexity
    from se_hub.models.catalog import MODELS
    params, macs = model_complexity(name)
    return {'params': int(params), 'macs': int(macs), 'input_size': list(timm.get_pretrained_cfg(name).input_size),
            'paper': dict(MODELS[name].paper)}


def build() -> dict:
    import timm
    import torch

    from se_hub.models.catalog import MODELS
    return {'generated_by': 'tools/make_catalog_costs.py', 'timm': timm.__version__, 'torch': torch.__version__,
            'models': {name: measure(name) for name in sorted(MODELS)}}


def main() -> None:
    data = build()
    OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + '\n', encoding='utf-8')
    print(f"wrote {OUT} ({len(data['models'])} models)")


if __name__ == '__main__':
    main()
