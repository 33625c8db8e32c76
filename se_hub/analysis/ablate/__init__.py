"""Design-space sweeps on your data: fine-tune SE variants of one network with the same budget and
seeds, then compare them (``se-hub ablate``).

Python::

    from se_hub.analysis.ablate import ablate, collect
    result = ablate('se_resnet50.in1k', 'flowers/', ['r4', 'r16', 'gmp', 'none', 'late=se_stages:(2,3)'],
                    epochs=10, output='sweeps/flowers', seeds=3, batch_size=64)
    result.rows            # one dict per variant: val top-1 mean / std over seeds, params, MACs, time, memory

Shell: ``se-hub ablate --base MODEL --data DIR --variants LIST --epochs N --seeds K --output OUT
[finetune options]``; ``--print-commands`` prints one ``se-hub finetune`` command per (variant,
seed) for a scheduler instead of running them, ``se-hub ablate --collect OUT`` builds the tables
and plots from the finished runs.

Variants (``--variants``, comma-separated; commas inside brackets do not separate)::

    VARIANT := [LABEL=]TERM[+TERM...]
    TERM    := NAME | KEY:VALUE

``NAME`` is a named variant: the paper's SE-ResNet-50 ablation rows, read from the registered
``se_resnet50_<row>`` configurations (``r2`` ... ``r32``, ``gmp``, ``nosqueeze``, ``tanh``,
``relu``, ``pre``, ``post``, ``identity``, ``3x3``, ``none``, ``stage2`` ... ``stage4``), the
attention layers (``se``, ``eca``, ``cbam``), ``base`` (the base network unchanged), ``r<N>``
(SE reduction ratio 1/N) and ``stage<N>`` (SE in the paper's stage N only, N = 2-5). ``KEY:VALUE``
sets ``se_layer``, ``se_args``, ``se_ratio``, ``se_placement``, ``se_stages`` or one option of
se_hub's SE unit (``rd_ratio``, ``squeeze``, ``gate``, ... go into ``se_args``); VALUE is a
Python literal or a plain string, as for ``--model-arg``. Terms combine left to right; two
terms that set one key to different values are an error. ``LABEL`` names the variant's run
directory (default: the variant's text when that is a valid name). Each variant is checked
against the base before anything trains: an option the base's family does not have (e.g.
``se_placement`` outside the residual family) is an error.

Runs: ``OUT/<label>/seed<k>/`` is a ``finetune`` output directory (metrics.jsonl, last.pth, the
export) of the base with the variant's architecture arguments (``--model-arg`` arguments shared
by every variant come first, e.g. ``layers=(1,1,1)``), seed ``k``. With pretrained weights every
variant starts from them with its SE units fresh (``finetune(fresh_se=True)``: every other
tensor is loaded; the variant's SE shapes may differ from the weights'), the unchanged ``base``
included, so that every design starts from the same point. A run that finished (all epochs and
its export) is skipped, one with a ``last.pth`` resumes, the rest start.

Outputs in OUT: ``sweep.json`` (the plan), ``ablation.csv`` and ``ablation.md`` (per variant:
final-epoch val top-1 mean and sample std over seeds, best-epoch top-1, parameters,
multiply-adds at the run's input size (:mod:`se_hub.complexity`), train time, peak memory),
``accuracy_vs_cost.png`` and ``curves.png`` (train loss and val top-1 of every variant per epoch,
means over seeds). Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during the run; on
the CPU the growth of this process's peak resident set (VmHWM, reset per run) over its size at
the start, data-loader workers not counted (the first run of a process also counts one-off
allocations: caches, the data set's file list). Runs made by printed commands have no memory
figure.

Layout: :mod:`.variants` (the grammar, the named variants, the check against the base),
:mod:`.runs` (the plan and the runs), :mod:`.report` (tables and plots); the ``se-hub ablate``
command, ``--print-commands`` included, is ``se_hub_cli/commands/ablate.py``.
"""
from typing import Any, Mapping, Optional, Sequence, Union

from .report import COST_PLOT, CSV, CURVES_PLOT, MARKDOWN, AblationResult, collect
from .runs import PeakMemory, Run, Sweep, parse_seeds, plan_sweep, run_sweep
from .variants import (
    AblationError,
    Variant,
    check_variants,
    list_variants,
    named_variants,
    parse_variant,
    parse_variants,
    variant_model_kwargs,
)


def ablate(base: str, data, variants, epochs: int, output, seeds: Union[int, str, Sequence[int]] = 3,
           model_kwargs: Optional[Mapping[str, Any]] = None, log=print, **options) -> AblationResult:
    """Fine-tune every variant of ``base`` on ``data`` for ``epochs`` epochs with each seed into
    ``output/<label>/seed<k>`` (see the module docstring), then :func:`collect`. ``model_kwargs``:
    architecture arguments every variant shares (e.g. ``layers=(1, 1, 1)``); ``options``: the
    other fields of :class:`se_hub.tasks.FinetuneOptions`, the same for every run. Runs that
    finished are skipped, interrupted ones resume (:func:`plan_sweep`)."""
    sweep = plan_sweep(base, data, variants, epochs, output, seeds, model_kwargs, **options)
    run_sweep(sweep, log=log)
    return collect(sweep.output, log=log)


__all__ = ['ablate', 'plan_sweep', 'run_sweep', 'collect', 'Sweep', 'Run', 'Variant', 'PeakMemory', 'parse_seeds',
           'parse_variant', 'parse_variants', 'named_variants', 'list_variants', 'variant_model_kwargs',
           'check_variants', 'AblationError', 'AblationResult', 'CSV', 'MARKDOWN', 'COST_PLOT', 'CURVES_PLOT']
