"""The command line's defaults and choice lists are the library's. ``se_hub_cli`` writes them out
(importing the library would import torch before ``--help``), so this test holds them together:
every option of a verb that sets a field of the options dataclass the verb fills, or an argument of
the function it calls, has that field's default; the AMP modes, detector kinds, export formats and
schedules offered are the ones the library accepts."""
import argparse
import dataclasses
import inspect

import pytest

from se_hub.analysis.excitations import collect_excitations
from se_hub.deploy.benchmark import PATHS, benchmark
from se_hub.deploy.convert import EXPORT_FORMATS, INT8_METHODS, OPENVINO_PRECISIONS, export_verified
from se_hub.tasks.classification import FinetuneOptions, evaluate
from se_hub.tasks.detection import KINDS, DetectOptions, create_detector
from se_hub.tasks.distributed import AMP_CHOICES
from se_hub.tasks.engine import EXPORTS, SCHEDULES, TrainConfig
from se_hub_cli import build_parser


def _verb(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _options(parser: argparse.ArgumentParser):
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != 'help'}


def _parameter_defaults(function):
    return {k: p.default for k, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _cli_default(action):
    # repeatable KEY=VALUE options collect pairs; the library takes them as a dict
    return dict(action.default) if action.dest in ('model_kwargs', 'retrofit_args') else action.default


def _agree(verb: str, defaults: dict, renamed=()) -> int:
    """Every option of ``verb`` that the library has a default for has that default; returns how many."""
    renamed = dict(renamed)
    checked = 0
    for dest, action in _options(_verb(verb)).items():
        name = renamed.get(dest, dest)
        if name not in defaults or action.required:
            continue
        assert _cli_default(action) == defaults[name], \
            f'se-hub {verb} {action.option_strings[0]}: {action.default!r}, the library: {defaults[name]!r}'
        checked += 1
    return checked


def test_finetune_defaults_are_finetune_options():
    assert _agree('finetune', FinetuneOptions.defaults()) >= 30


def test_ablate_defaults_are_finetune_options():
    assert _agree('ablate', FinetuneOptions.defaults()) >= 25


def test_finetune_detect_defaults_are_detect_options_and_create_detector():
    assert _agree('finetune-detect', DetectOptions.defaults()) >= 18
    detector = _parameter_defaults(create_detector)
    assert _agree('finetune-detect', detector, renamed={'pretrained': 'pretrained_backbone'}) == 6


def test_evaluate_excitations_and_export_defaults_are_the_functions():
    assert _agree('evaluate', _parameter_defaults(evaluate)) == 7
    assert _agree('excitations', _parameter_defaults(collect_excitations)) >= 8
    assert _agree('export', _parameter_defaults(export_verified)) == 11


def test_bench_defaults_and_paths_are_the_benchmarks():
    assert _agree('bench', _parameter_defaults(benchmark)) == 9
    assert tuple(_options(_verb('bench'))['paths'].choices) == PATHS


@pytest.mark.parametrize('verb', ['finetune', 'finetune-detect', 'ablate'])
def test_choice_lists_are_the_librarys(verb):
    options = _options(_verb(verb))
    assert tuple(options['amp'].choices) == AMP_CHOICES
    assert tuple(options['export'].choices) == EXPORTS
    if 'sched' in options:
        assert tuple(options['sched'].choices) == SCHEDULES
    if verb == 'finetune-detect':
        assert tuple(options['kind'].choices) == KINDS


def test_export_formats_are_the_librarys():
    export = _options(_verb('export'))
    assert tuple(export['format'].choices) == EXPORT_FORMATS
    assert tuple(export['precision'].choices) == OPENVINO_PRECISIONS
    assert tuple(export['int8_method'].choices) == INT8_METHODS


def test_the_engine_options_are_declared_once():
    """The tasks' options are the engine's config (subclasses), re-declaring only what differs."""
    base = TrainConfig.defaults()
    for cls in (FinetuneOptions, DetectOptions):
        assert issubclass(cls, TrainConfig)
        redeclared = [f.name for f in dataclasses.fields(cls) if f.name in base and cls.__dataclass_fields__[f.name]
                      is not TrainConfig.__dataclass_fields__[f.name]]
        assert redeclared and all(cls.defaults()[k] != base[k] for k in redeclared), redeclared
