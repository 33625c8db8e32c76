"""Variants of a sweep: the grammar (``r8+tanh``, ``late=se_stages:(2,3)+gate:tanh``), the named
variants (the paper's SE-ResNet-50 ablation rows, the attention layers), the architecture arguments
each one builds with, and the check that every variant applies to the base (see the package docstring)."""
import ast
import difflib
import inspect
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ...factory import SE_DESIGN_KEYS, describe_change

_LABEL = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.+-]*$')


class AblationError(ValueError):
    """A sweep that cannot run as asked: unknown variant, one that does not apply to the base, ..."""


@dataclass(frozen=True)
class NamedVariant:
    change: Dict[str, Any]
    description: str


def _config_change(base: Mapping[str, Any], row: Mapping[str, Any]) -> Dict[str, Any]:
    """What ``row``'s configuration sets differently from ``base``'s (se_args key by key)."""
    change = {}
    for key, value in row.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            sub = {k: v for k, v in value.items() if base[key].get(k, object()) != v}
            if sub:
                change[key] = sub
        elif key not in base or base[key] != value:
            change[key] = 'none' if key == 'se_layer' and value is None else value
    return change


def named_variants() -> Dict[str, NamedVariant]:
    """Every variant with a name: ``base``, the paper's SE-ResNet-50 ablation rows (each registered
    ``se_resnet50_<row>`` model's configuration minus ``se_resnet50``'s) and the attention layers."""
    from ...layers.factory import ATTENTION_LAYERS
    from ...models.se_residual import ARCHS
    named = {'base': NamedVariant({}, 'the base network as it is')}
    reference = ARCHS['se_resnet50']['args']
    for name, spec in ARCHS.items():
        if name.startswith('se_resnet50_'):
            named[name[len('se_resnet50_'):]] = NamedVariant(
                _config_change(reference, spec['args']), spec['description'].replace('SE-ResNet-50 ablation: ', ''))
    for layer in ATTENTION_LAYERS:
        named.setdefault(layer, NamedVariant({'se_layer': layer}, f'attention layer {layer!r} in place of the SE unit'
                                             if layer != 'se' else "se_hub's SE unit (adds SE to an SE-free base)"))
    return named


# names made of a number: reduction ratio 1/N, SE in the paper's stage N only (conv2_x = index 0)
_PATTERNS: Sequence[Tuple[str, Callable[[int], Dict[str, Any]], str]] = (
    (r'r(\d+)', lambda n: {'se_args': {'rd_ratio': 1 / n}} if n >= 1 else None, 'r<N>: SE reduction ratio 1/N'),
    (r'stage([2-5])', lambda n: {'se_stages': (n - 2,)}, "stage<N>: SE in the paper's stage N (conv<N>_x) only, 2-5"),
)


def _lookup(name: str) -> Optional[Dict[str, Any]]:
    named = named_variants()
    if name in named:
        return dict(named[name].change)
    for pattern, make, _ in _PATTERNS:
        m = re.fullmatch(pattern, name)
        if m:
            return make(int(m.group(1)))
    return None


def _split_top_level(text: str, sep: str) -> List[str]:
    """``text`` split at each ``sep`` outside brackets and quotes."""
    parts, depth, quote, start = [], 0, '', 0
    for i, ch in enumerate(text):
        if quote:
            quote = '' if ch == quote else quote
        elif ch in '\'"':
            quote = ch
        elif ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _merge(change: Dict[str, Any], key: str, value: Any, what: str) -> None:
    """Set ``key`` (se_args: per option) in ``change``; a different value already there is an error."""
    if key == 'se_args':
        if not isinstance(value, dict):
            raise AblationError(f'{what}: se_args must be a dict, e.g. se_args:{{"rd_ratio":0.25}}, not {value!r}')
        for k, v in value.items():
            old = change.setdefault('se_args', {}).get(k, v)
            if old != v:
                raise AblationError(f'{what}: two terms set se_args {k!r} to {old!r} and {v!r}; keep one')
            change['se_args'][k] = v
        return
    if key == 'se_layer' and value is None:
        value = 'none'  # timm.create_model drops None-valued kwargs
    if key in change and change[key] != value:
        raise AblationError(f'{what}: two terms set {key} to {change[key]!r} and {value!r}; keep one')
    change[key] = value


def _literal(text: str) -> Any:
    """A term's VALUE: a Python literal, or else the plain string (as ``--model-arg`` reads it)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _term(term: str, what: str) -> Dict[str, Any]:
    from ...layers.factory import SE_ARGS
    key, sep, value = term.partition(':')
    if not sep:
        found = _lookup(term)
        if found is None:
            known = sorted(named_variants())
            close = difflib.get_close_matches(term, known, n=3)
            raise AblationError(
                f'{what}: unknown name {term!r}' + (f" (did you mean {', '.join(close)}?)" if close else '')
                + f"; named variants: {', '.join(known)}, r<N>, stage<N>; or KEY:VALUE terms (se_layer:eca, "
                "se_args:{'rd_ratio':0.25}, gate:tanh, se_stages:(2,3)); see `se-hub ablate --list-variants`")
        return found
    key = key.strip()
    if key not in SE_DESIGN_KEYS and key not in SE_ARGS:
        raise AblationError(
            f'{what}: {key!r} is not an SE design option; a term sets one of {", ".join(SE_DESIGN_KEYS)} or an option '
            f'of the SE unit ({", ".join(sorted(SE_ARGS))}); architecture arguments every variant shares go in '
            '--model-arg / model_kwargs')
    parsed = _literal(value.strip())
    return {'se_args': {key: parsed}} if key in SE_ARGS else {key: parsed}


@dataclass(frozen=True)
class Variant:
    label: str  # the run directory's name
    text: str  # as given
    change: Dict[str, Any]  # architecture arguments it sets on top of the base's

    def describe(self) -> str:
        return describe_change(self.change)


def parse_variant(text: str) -> Variant:
    """One variant from its text: ``r8``, ``r8+tanh``, ``late=se_stages:(2,3)+gate:tanh``."""
    text = text.strip()
    if not text:
        raise AblationError('an empty variant (two commas in a row?)')
    label, sep, spec = text.partition('=')
    if not (sep and _LABEL.match(label.strip())):
        label, spec = '', text
    label, spec = label.strip(), spec.strip()
    what = f'variant {text!r}'
    change: Dict[str, Any] = {}
    for term in _split_top_level(spec, '+'):
        if not term:
            raise AblationError(f"{what}: an empty term (a '+' too many?)")
        for key, value in _term(term, what).items():
            _merge(change, key, value, what)
    if not label:
        if not _LABEL.match(spec):
            raise AblationError(f'{what}: name it for its run directory, e.g. mine={spec} (letters, digits, _ . + -)')
        label = spec
    return Variant(label, text, change)


def parse_variants(variants: Union[str, Sequence[str], Mapping[str, Any]]) -> List[Variant]:
    """Variants from a comma-separated string, a list of variant texts, or a mapping of label to
    architecture arguments (a dict) or variant text."""
    if isinstance(variants, str):
        items = [parse_variant(t) for t in _split_top_level(variants, ',')]
    elif isinstance(variants, Mapping):
        items = []
        for label, spec in variants.items():
            if not _LABEL.match(str(label)):
                raise AblationError(f'variant label {label!r}: use letters, digits, _ . + - (it names a directory)')
            if isinstance(spec, str):
                items.append(Variant(label, spec, parse_variant(spec).change))
            else:
                change: Dict[str, Any] = {}
                for key, value in dict(spec).items():
                    if key not in SE_DESIGN_KEYS:
                        raise AblationError(f'variant {label!r}: {key!r} is not one of {", ".join(SE_DESIGN_KEYS)}')
                    _merge(change, key, value, f'variant {label!r}')
                items.append(Variant(label, describe_change(change), change))
    else:
        items = [parse_variant(t) for t in variants]
    if not items:
        raise AblationError('no variants: name at least one (e.g. --variants base,none,r4)')
    seen = set()
    for v in items:
        if v.label in seen:
            raise AblationError(f'two variants are labelled {v.label!r}; give one another name (LABEL=...)')
        seen.add(v.label)
    return items


def variant_model_kwargs(base_kwargs: Mapping[str, Any], change: Mapping[str, Any]) -> Dict[str, Any]:
    """The architecture arguments of one run: the base's, then the variant's (se_args merged).
    A variant that swaps in another attention layer drops the base's SE-unit options."""
    kwargs = dict(base_kwargs)
    if 'se_layer' in change and change['se_layer'] != 'se':
        kwargs.pop('se_args', None)
    for key, value in change.items():
        if key == 'se_args' and isinstance(kwargs.get('se_args'), dict):
            kwargs['se_args'] = dict(kwargs['se_args'], **value)
        else:
            kwargs[key] = value
    if kwargs.get('se_layer', '') is None:
        kwargs['se_layer'] = 'none'
    return kwargs


def _family_config(name: str) -> Dict[str, Any]:
    from ...models.catalog import MODELS
    module = sys.modules.get(f'se_hub.models.{MODELS[name].family}')
    return dict(getattr(module, 'ARCHS', {}).get(name, {}).get('args', {}))


def check_variants(base: str, variants: Sequence[Variant], base_kwargs: Mapping[str, Any], num_classes: int) -> None:
    """Build every variant of ``base`` on the meta device; a clear error for an option the base's
    family does not take, an SE option on a network left without SE, or a value the model refuses."""
    from ..._compat import create_model
    from ...layers.factory import NO_SE
    from ...models.catalog import split_model_name
    name, _ = split_model_name(base)
    build_kwargs = {k: v for k, v in base_kwargs.items() if k != 'pretrained_cfg_overlay'}
    try:
        with torch.device('meta'):
            reference = create_model(name, num_classes=num_classes, **build_kwargs)
    except (TypeError, ValueError) as e:
        raise AblationError(f'the base {name} with {describe_change(build_kwargs)}: {e}') from None
    cls = type(reference)
    config = _family_config(name)
    params = inspect.signature(cls).parameters
    unsupported = set(getattr(cls, 'unsupported_kwargs', lambda c: ())(config))
    takes = [k for k in SE_DESIGN_KEYS if k in params and k not in unsupported]
    for v in variants:
        bad = [k for k in v.change if k not in takes]
        if bad:
            hint = (' (the integration points and stages are options of the residual family: se_resnet*, se_resnext*)'
                    if {'se_placement', 'se_stages'} & set(bad) else '')
            raise AblationError(f'variant {v.label!r} ({v.describe()}) does not apply to {name}: {cls.__name__} takes '
                                f"no {', '.join(bad)}; its SE options are {', '.join(takes)}{hint}")
        kwargs = {k: val for k, val in variant_model_kwargs(build_kwargs, v.change).items()}
        se_layer = kwargs.get('se_layer', config.get('se_layer', params['se_layer'].default))
        no_se = any(se_layer is x or (isinstance(x, str) and se_layer == x) for x in NO_SE)
        se_only = [k for k in v.change if k in ('se_args', 'se_ratio', 'se_placement', 'se_stages')]
        if no_se and se_only:
            raise AblationError(f"variant {v.label!r} ({v.describe()}) sets {', '.join(se_only)} on {name}, which has "
                                f"no SE unit: add one, e.g. {v.label}=se+{v.text.split('=', 1)[-1]}")
        try:
            with torch.device('meta'):
                create_model(name, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError) as e:
            raise AblationError(f'variant {v.label!r} ({v.describe()}) on {name}: {e}') from None




def list_variants() -> str:
    lines = [f'{name:<10} {describe_change(v.change):<40} {v.description}' for name, v in named_variants().items()]
    lines += [f'{"":<10} {text}' for _, _, text in _PATTERNS]
    return '\n'.join(lines)

