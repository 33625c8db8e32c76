"""Publishing in timm's Hugging Face Hub format: ``config.json`` (architecture, pretrained cfg,
label names, model args), ``model.safetensors`` and a model card with metrics and provenance.
After ``import se_hub``, ``timm.create_model('hf-hub:OWNER/REPO', pretrained=True)`` (or
``'local-dir:PATH'`` for a saved directory) rebuilds the same model, with every architecture
argument it was built with (se_layer, se_args, ...), whether it was built through
timm.create_model, torch.hub or the entrypoint.

``as_timm=True`` publishes a model whose function is a timm architecture's (the catalog's
``upstream``) in that architecture's own keys and config, for readers without se_hub.

The config and card say where the weights came from: a pretrained tag (and its metrics) only
for weights loaded from that tag, "random initialisation" for a model never loaded with weights.
"""
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
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
                  'pretrained_cfg_overlay', 'cache_dir', 'features_only', 'out_indices', 'feature_cls')
# cfg fields that describe the published weights (where they came from), not the architecture
_WEIGHT_FIELDS = ('tag', 'origin_url', 'license', 'notes')


def architecture(model: nn.Module) -> str:
    """The se_hub architecture ``model`` was built as (its ``pretrained_cfg``'s); an error for any other model."""
    name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    if name not in MODELS:
        raise ValueError(f'{type(model).__name__} is not an se_hub model (pretrained_cfg architecture: {name!r})')
    return name


def weights_origin(model: nn.Module) -> Optional[str]:
    """What the model's weights are: 'model.tag' (the manifest's), 'hf-hub:...', 'local-dir:...',
    'file:...', 'url:...', 'state_dict', 'checkpoint:...' (se_hub.load_checkpoint), or None for a
    random initialisation."""
    return getattr(model, 'loaded_weights', None)


def _carries_tag(model: nn.Module) -> bool:
    """Whether the cfg's pretrained tag describes the weights the model holds."""
    cfg, loaded = model.pretrained_cfg or {}, weights_origin(model)
    if not loaded or not cfg.get('tag'):
        return False
    if cfg.get('num_classes') is not None and cfg['num_classes'] != model.num_classes:
        return False  # a new head: the weights were started from the tag, they are not the tag's
    if loaded.startswith(('hf-hub:', 'local-dir:')):
        return True  # an export's own tag, written only when it was true
    return loaded == f"{cfg.get('architecture')}.{cfg.get('tag')}"


def _export_cfg(model: nn.Module) -> Dict[str, Any]:
    """The model's pretrained cfg without the claims its weights cannot back."""
    cfg = {k: v for k, v in (model.pretrained_cfg or {}).items() if k != 'state_dict'}
    if not _carries_tag(model):
        for key in _WEIGHT_FIELDS:
            cfg.pop(key, None)
    return cfg


def _model_args(model: nn.Module) -> Dict[str, Any]:
    """The architecture arguments to write to config.json; a clear error for one that cannot be.
    timm's exporter adds the current num_classes / in_chans / global_pool itself (a classifier may
    have been reset since the model was built), and leaves training-only drop rates out."""
    args = {k: v for k, v in (getattr(model, '_model_args', None) or {}).items()
            if k not in ('features_only', 'out_indices', 'feature_cls', 'drop_rate', 'drop_path_rate',
                         'drop_block_rate', 'num_classes', 'in_chans', 'global_pool', 'img_size')
            and not k.endswith('_drop_rate')}
    for key, value in args.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ValueError(
                f'{key!r} is not serializable ({value!r}): config.json can only rebuild a model from names and '
                f"numbers (e.g. se_layer='eca', se_args=dict(rd_ratio=0.5)); rebuild the model with such arguments "
                'and load its weights into it to publish it') from None
    return args


def _architecture_overrides(model: nn.Module) -> Dict[str, Any]:
    return {k: v for k, v in _model_args(model).items() if k not in _NON_ARCH_ARGS}


def _in_chans(model: nn.Module) -> int:
    conv = model.get_submodule(model.pretrained_cfg['first_conv'])
    return conv.in_channels


def _top_k(metric: Dict[str, Any]) -> str:
    """'top-5: 93.1' (fine-tuning reports top-min(5, classes), e.g. top3 for three classes)."""
    key = next((k for k in metric if k.startswith('top') and k[3:].isdigit() and k != 'top1'), None)
    return f'top-{key[3:]}: {metric[key]}' if key else ''


def model_card(model: nn.Module, metrics: Optional[Sequence[Dict[str, Any]]] = None, notes: str = '',
               as_timm: str = '') -> str:
    """A README.md with what the model is, where its weights came from, and its metrics."""
    name = architecture(model)
    info = MODELS[name]
    cfg = _export_cfg(model)
    loaded = weights_origin(model)
    source = next((e for e in weights_by_model().get(name, []) if f"{name}.{e['tag']}" == loaded), None)
    params = sum(p.numel() for p in model.parameters())
    overrides = _architecture_overrides(model)
    if loaded is None:
        weights = '- weights: random initialisation (never trained or loaded; not for predictions)'
    elif source:
        weights = f"- initial weights: `{loaded}` from {source['origin']}"
    else:
        weights = f'- weights: loaded from `{loaded}`'
    lines = [
        '---', 'tags:', '- image-classification', '- timm', '- se_hub', f"license: {cfg.get('license') or 'other'}",
        'library_name: timm', '---', f'# {name}', '', f'{info.description}, built with se_hub '
        '(Squeeze-and-Excitation networks for timm).', '', '## Details', '',
        f'- architecture: `{name}`' + (f" (same function as timm's `{info.upstream}`)"
                                       if info.upstream and not overrides else ''),
        f'- parameters: {params / 1e6:.2f}M', f'- classes: {model.num_classes}',
        f"- input size: {cfg.get('input_size')}, interpolation {cfg.get('interpolation')}, "
        f"crop {cfg.get('crop_pct')}, mean {cfg.get('mean')}, std {cfg.get('std')}",
        weights,
    ]
    if as_timm:
        lines.append(f"- published in the key layout and config of timm's `{as_timm}`: loads without se_hub")
    if overrides:
        lines.append(f'- architecture arguments: {overrides}')
    if info.paper.get('row'):
        lines.append(f"- paper row: {info.paper['row']}")
    if notes:
        lines += ['', notes]
    rows = list(metrics or []) + (source['metrics'] if source and _carries_tag(model) else [])
    if rows:
        lines += ['', '## Metrics', '', '| dataset | top-1 | top-k | provenance | reference |', '|---|---|---|---|---|']
        lines += [f"| {m.get('dataset', '')} | {m.get('top1', '')} | {_top_k(m)} | "
                  f"{m.get('provenance', '')} | {m.get('reference', '')} |" for m in rows]
    usage = (['import timm  # se_hub is not needed'] if as_timm else ['import se_hub, timm'])
    lines += ['', '## Usage', '', '```python', *usage,
              "model = timm.create_model('hf-hub:REPO_ID', pretrained=True).eval()", '```',
              '', '## Citation', '', '```bibtex', CITATION, '```', '']
    return '\n'.join(lines)


def as_timm_model(model: nn.Module) -> nn.Module:
    """timm's own model of the same function (the catalog's ``upstream``), holding ``model``'s
    weights in its key layout, with ``model``'s preprocessing and label names in its cfg.

    The key mapping is found by sending tagged tensors from the timm model through the family's
    checkpoint conversion (the one ``load_checkpoint`` uses), and the result is checked: both
    models must give the same logits on a random batch, else ValueError."""
    from timm import create_model

    from .weights.checkpoint import checkpoint_filter_fn
    name = architecture(model)
    upstream = MODELS[name].upstream
    if not upstream:
        raise ValueError(f"{name} has no timm counterpart of the same function; publish it without as_timm "
                         '(readers then need se_hub installed)')
    overrides = _architecture_overrides(model)
    if overrides:
        raise ValueError(f"{name} built with {overrides} computes another function than timm's {upstream}; "
                         'publish it without as_timm (readers then need se_hub installed)')
    if isinstance(model.pretrained_cfg.get('classifier'), (list, tuple)):
        raise ValueError(f'{name} has several classifiers; as_timm supports single-head models')
    in_chans = _in_chans(model)
    pool = (getattr(model, '_model_args', None) or {}).get('global_pool')
    target = create_model(upstream, num_classes=model.num_classes, in_chans=in_chans,
                          **({'global_pool': pool} if pool else {}))
    target_sd = target.state_dict()
    # tag each timm tensor with its (1-based) index, convert, and read back where each one went
    probes = {k: torch.full(v.shape, i + 1, dtype=torch.float64) for i, (k, v) in enumerate(target_sd.items())}
    converted = checkpoint_filter_fn(probes, model)
    ours = model.state_dict()
    keys = list(target_sd)
    export = {}
    for our_key, probe in converted.items():
        if our_key not in ours or probe.numel() == 0 or probe.min() != probe.max() or probe.flatten()[0] < 1:
            continue
        their_key = keys[int(probe.flatten()[0]) - 1]
        value = ours[our_key].detach()
        if value.numel() != target_sd[their_key].numel():
            raise ValueError(f"cannot map {name}'s {our_key} {tuple(value.shape)} to {upstream}'s {their_key} "
                             f'{tuple(target_sd[their_key].shape)}')
        export[their_key] = value.reshape(target_sd[their_key].shape).to(target_sd[their_key].dtype).clone()
    missing = [k for k in keys if k not in export and not k.endswith('num_batches_tracked')]
    if missing:
        raise ValueError(f"cannot express {name} in {upstream}'s keys: no weights for {', '.join(missing[:5])}")
    target.load_state_dict(export, strict=False)
    _check_same_function(model, target, in_chans, name, upstream)
    cfg = _export_cfg(model)
    data = {k: cfg[k] for k in ('input_size', 'test_input_size', 'interpolation', 'crop_pct', 'test_crop_pct',
                                'crop_mode', 'mean', 'std', 'num_classes', 'label_names', 'label_descriptions',
                                'pool_size', 'test_pool_size', 'license', 'origin_url', 'tag', 'paper_ids',
                                'paper_name') if k in cfg}
    # the weights' fields (tag, license, origin) are the se_hub model's when it carries its tag, else none
    target.pretrained_cfg = {**target.pretrained_cfg, 'tag': None, 'license': None, 'origin_url': None, **data}
    for key in ('hf_hub_id', 'url', 'file', 'hf_hub_filename', 'source'):
        target.pretrained_cfg.pop(key, None)
    target.default_cfg = target.pretrained_cfg
    target._model_args = dict(in_chans=in_chans)
    if pool:
        target._model_args['global_pool'] = pool
    return target


def _check_same_function(model: nn.Module, target: nn.Module, in_chans: int, name: str, upstream: str) -> None:
    # the function, not the resolution, is compared: a small batch keeps big models quick
    size = [min(s, 96) for s in (model.pretrained_cfg.get('input_size') or (3, 224, 224))[1:]]
    x = torch.randn(2, in_chans, *size, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    try:
        with torch.no_grad():
            ours, theirs = model.eval()(x), target.eval()(x)
    finally:
        model.train(was_training)
    scale = ours.abs().max().item() or 1.0
    if not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale):
        raise ValueError(f"{name} does not give the logits of timm's {upstream} with the mapped weights "
                         f'(max difference {(ours - theirs).abs().max().item():.3g}); publish it without as_timm')


def _without_num_classes_in_model_args(config_file: Path) -> None:
    """The class count lives at the config's root (timm reads it there): newer timm also writes it into
    ``model_args``, which Hugging Face transformers' timm wrapper passes to ``timm.create_model`` beside its own
    ``num_classes`` ("got multiple values for keyword argument 'num_classes'")."""
    config = json.loads(config_file.read_text(encoding='utf-8'))
    if 'num_classes' in (config.get('model_args') or {}):
        config['model_args'].pop('num_classes')
        config_file.write_text(json.dumps(config, indent=2), encoding='utf-8')


def _replace_files(src: Path, directory: Path) -> None:
    """Move every file of ``src`` into ``directory``, each with one atomic rename, with the mode the umask
    gives new files (safetensors writes model.safetensors 0o600)."""
    from .files import new_file_mode
    mode = new_file_mode()
    for path in src.iterdir():
        os.chmod(path, mode)
        os.replace(path, directory / path.name)


_EXPORT_PREFIX = '.se_hub-export-'


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _remove_stale_exports(directory: Path) -> None:
    """Work folders of exports into ``directory`` whose process (same host) has died: a killed export leaves
    the whole model there. Each folder is named ``.se_hub-export-<host>-<pid>-<random>``."""
    own = f'{_EXPORT_PREFIX}{socket.gethostname()}-'
    for path in directory.glob(f'{_EXPORT_PREFIX}*'):
        pid = path.name[len(own):].split('-', 1)[0] if path.name.startswith(own) else ''
        if pid.isdigit() and not _pid_alive(int(pid)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def save_pretrained(
        model: nn.Module,
        directory: Union[str, os.PathLike],
        label_names: Optional[List[str]] = None,
        metrics: Optional[Sequence[Dict[str, Any]]] = None,
        notes: str = '',
        as_timm: bool = False,
) -> Path:
    """Write config.json, model.safetensors and README.md to ``directory`` (each file replaced
    atomically). ``as_timm=True``: in the key layout and config of the timm architecture of the
    same function (see ``as_timm_model``), loadable without se_hub."""
    from ._compat import save_for_hf
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    architecture(model)
    if label_names is None:  # keep the names of a model loaded from an export
        names = (model.pretrained_cfg or {}).get('label_names')
        label_names = list(names) if names and len(names) == model.num_classes else None
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f'{len(label_names)} label names for a model with {model.num_classes} classes')
    model_config = {'label_names': list(label_names)} if label_names else None
    card = model_card(model, metrics, notes, as_timm=MODELS[architecture(model)].upstream if as_timm else '')
    _remove_stale_exports(directory)
    with tempfile.TemporaryDirectory(dir=directory, prefix=f'{_EXPORT_PREFIX}{socket.gethostname()}-{os.getpid()}-') \
            as tmp:
        if as_timm:
            target = as_timm_model(model)
            save_for_hf(target, tmp, model_config=model_config, model_args=target._model_args,
                        safe_serialization=True)
        else:
            args = _model_args(model)
            saved_cfgs = model.pretrained_cfg, getattr(model, 'default_cfg', None)
            model.pretrained_cfg = model.default_cfg = _export_cfg(model)
            try:
                save_for_hf(model, tmp, model_config=model_config, model_args=args, safe_serialization=True)
            finally:
                model.pretrained_cfg, model.default_cfg = saved_cfgs
        _without_num_classes_in_model_args(Path(tmp) / 'config.json')
        (Path(tmp) / 'README.md').write_text(card, encoding='utf-8')
        _replace_files(Path(tmp), directory)
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
        as_timm: bool = False,
) -> str:
    """Publish ``model`` to the Hub (``HF_ENDPOINT`` and tokens as huggingface_hub reads them);
    returns the commit URL. ``as_timm``: see ``save_pretrained``."""
    from huggingface_hub import HfApi
    api = HfApi(endpoint=os.environ.get('HF_ENDPOINT') or None, token=token, library_name='se_hub')
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, label_names, metrics, notes, as_timm=as_timm)  # fails before the repo exists
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message)
    return info.commit_url if hasattr(info, 'commit_url') else str(info)
