"""torch.hub entrypoints: every se_hub model.

    torch.hub.load('<owner>/se_hub', 'se_resnet50', pretrained=False, num_classes=10)

Keyword arguments pass through to timm.create_model (num_classes, in_chans, global_pool,
drop_rate, drop_path_rate, features_only, out_indices, se_layer, ...).
"""
dependencies = ['torch', 'torchvision', 'timm', 'huggingface_hub', 'safetensors']

import timm as _timm  # noqa: E402

import se_hub as _se_hub  # noqa: E402,F401  (registers the models)
from se_hub.models.catalog import MODELS as _MODELS  # noqa: E402


def _hub_entrypoint(name):
    entrypoint = _timm.models.model_entrypoint(name)

    def load(pretrained: bool = False, **kwargs):
        return entrypoint(pretrained=pretrained, **kwargs)
    load.__name__ = load.__qualname__ = name
    load.__doc__ = entrypoint.__doc__
    return load


for _name in _MODELS:
    globals()[_name] = _hub_entrypoint(_name)
