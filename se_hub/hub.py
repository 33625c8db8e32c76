"""Publishing in timm's Hugging Face Hub format: ``config.json`` (architecture, pretrained cfg,
label names, model args), ``model.safetensors`` and a model card with metrics and provenance.
After ``import se_hub``, ``timm.create_model('hf-hub:OWNER/REPO', pretrained=True)`` (or
``'local-dir:PATH'`` for a saved directory) rebuilds the same model."""
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from torch import nn

from .models.catalog import MODELS
from .weights.manifest import weights_by_model

CITATION = """@inproceedings{hu2018senet,
  title={Squeeze-and-Excitation Networks},
  author={Jie Hu and Li Shen and Gang Sun},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition},
  year={2018}
}"""


_NON_ARCH_ARGS = ('num_classes', 'in_chans', 'global_pool', 'drop_rate', 'drop_path_rate', 'pretrained_cfg',
                  'pretrained_cfg_overlay', 'cache_dir')


def _architecture(model: nn.Module) -> str:
    name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    if name not in MODELS:
        raise ValueError(f'{type(model).__name__} is not an se_hub model (pretrained_cfg architecture: {name!r})')
    return name


def model_card(model: nn.Module, metrics: Optional[Sequence[Dict[str, Any]]] = None, notes: str = '') -> str:
    """A README.md with what the model is, where its weights came from, and its metrics."""
    name = _architecture(model)
    info = MODELS[name]
    cfg = model.pretrained_cfg
    loaded = getattr(model, 'loaded_weights', None)  # 'model.tag', set when pretrained weights were loaded
    source = next((e for e in weights_by_model().get(name, []) if f"{name}.{e['tag']}" == loaded), None)
    params = sum(p.numel() for p in model.parameters())
    overrides = {k: v for k, v in getattr(model, '_model_args', {}).items() if k not in _NON_ARCH_ARGS}
    lines = [
        '---', 'tags:', '- image-classification', '- timm', '- se_hub', f"license: {cfg.get('license') or 'other'}",
        'library_name: timm', '---', f'# {name}', '', f'{info.description}, built with se_hub '
        '(Squeeze-and-Excitation networks for timm).', '', '## Details', '',
        f'- architecture: `{name}`' + (f" (same function as timm's `{info.upstream}`)"
                                       if info.upstream and not overrides else ''),
        f'- parameters: {params / 1e6:.2f}M', f'- classes: {model.num_classes}',
        f"- input size: {cfg.get('input_size')}, interpolation {cfg.get('interpolation')}, "
        f"crop {cfg.get('crop_pct')}, mean {cfg.get('mean')}, std {cfg.get('std')}",
    ]
    if overrides:
        lines.append(f'- architecture arguments: {overrides}')
    if info.paper.get('row'):
        lines.append(f"- paper row: {info.paper['row']}")
    if source:
        lines.append(f"- initial weights: `{loaded}` from {source['origin']}")
    if notes:
        lines += ['', notes]
    rows = list(metrics or []) + (source['metrics'] if source else [])
    if rows:
        lines += ['', '## Metrics', '', '| dataset | top-1 | top-5 | provenance | reference |', '|---|---|---|---|---|']
        lines += [f"| {m.get('dataset', '')} | {m.get('top1', '')} | {m.get('top5', '')} | "
                  f"{m.get('provenance', '')} | {m.get('reference', '')} |" for m in rows]
    lines += ['', '## Usage', '', '```python', 'import se_hub, timm',
              "model = timm.create_model('hf-hub:REPO_ID', pretrained=True).eval()", '```',
              '', '## Citation', '', '```bibtex', CITATION, '```', '']
    return '\n'.join(lines)


def save_pretrained(
        model: nn.Module,
        directory: Union[str, os.PathLike],
        label_names: Optional[List[str]] = None,
        metrics: Optional[Sequence[Dict[str, Any]]] = None,
        notes: str = '',
) -> Path:
    """Write config.json, model.safetensors and README.md to ``directory``."""
    from ._compat import save_for_hf
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _architecture(model)
    if label_names is None:  # keep the names of a model loaded from an export
        names = (model.pretrained_cfg or {}).get('label_names')
        label_names = list(names) if names and len(names) == model.num_classes else None
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f'{len(label_names)} label names for a model with {model.num_classes} classes')
    save_for_hf(model, str(directory), model_config={'label_names': list(label_names)} if label_names else None,
                safe_serialization=True)
    (directory / 'README.md').write_text(model_card(model, metrics, notes), encoding='utf-8')
    return directory


def push_to_hub(
        model: nn.Module,
        repo_id: str,
        label_names: Optional[List[str]] = None,
        metrics: Optional[Sequence[Dict[str, Any]]] = None,
        notes: str = '',
        token: Optional[str] = None,
        revision: Optional[str] = None,
        private: bool = False,
        commit_message: str = 'Add se_hub model',
) -> str:
    """Publish ``model`` to the Hub (``HF_ENDPOINT`` and tokens as huggingface_hub reads them);
    returns the commit URL."""
    from tempfile import TemporaryDirectory

    from huggingface_hub import HfApi
    api = HfApi(endpoint=os.environ.get('HF_ENDPOINT') or None, token=token, library_name='se_hub')
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, label_names, metrics, notes)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message)
    return info.commit_url if hasattr(info, 'commit_url') else str(info)
