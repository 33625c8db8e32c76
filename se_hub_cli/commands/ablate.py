"""``se-hub ablate``: design-space sweeps (se_hub/analysis/ablate/); ``--print-commands`` writes
one ``se-hub finetune`` command per unfinished run instead of running it, for a scheduler."""
import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, List, Mapping

from ..parsers import finetune_arguments, finetune_parser, options_of

# what the sweep sets itself in each run, or the ablate verb defines its own way: not taken as finetune options
SWEEP_OWNED = ('--data', '--epochs', '--output', '--seed', '--resume', '--push', '--fresh-se', '--retrofit',
               '--retrofit-arg')


def add_parser(sub) -> None:
    p = sub.add_parser('ablate', help='design-space sweep: fine-tune SE variants of one network with the same budget '
                       'and seeds, then tables and plots (se_hub/analysis/ablate/)')
    p.add_argument('--base', help='the network every variant changes: a registered MODEL[.TAG] (residual or MBConv)')
    p.add_argument('--data', metavar='DIR', help='a data directory, as for finetune')
    p.add_argument('--variants', metavar='LIST', help='comma-separated variants: paper rows (r4, gmp, nosqueeze, pre, '
                   'identity, 3x3, none, tanh, stage2, ...), attention layers (se, eca, cbam), base, rN, stageN, '
                   "combinations (r8+tanh) and named designs (late=se_stages:(2,3)+gate:tanh); see --list-variants")
    p.add_argument('--epochs', type=int, help='epochs of every run')
    p.add_argument('--seeds', default='3', metavar='K|LIST', help='K seeds (0..K-1), or a comma list (default 3)')
    p.add_argument('--output', metavar='OUT', help='OUT/<variant>/seed<k>/ per run, OUT/ablation.md / .csv / .png')
    p.add_argument('--print-commands', action='store_true', help='print one `se-hub finetune` command per unfinished '
                   '(variant, seed) instead of running; then `se-hub ablate --collect OUT`')
    p.add_argument('--collect', metavar='OUT', help='only build the tables and plots from the finished runs in OUT')
    p.add_argument('--list-variants', action='store_true', help='print the named variants and what each changes')
    finetune_arguments(p, skip=SWEEP_OWNED)  # variants are the sweep's SE designs


def finetune_argv(base: str, data, epochs: int, run: Path, seed: int, model_kwargs: Mapping[str, Any],
                  options: Mapping[str, Any], defaults: Mapping[str, Any], resume: bool = False) -> List[str]:
    """The ``se-hub finetune`` arguments of one run: the flags of every option that differs from
    the command's default (read from the finetune parser itself, in its order), ``--model-arg KEY=VALUE`` per
    architecture argument (VALUE as a Python literal). ``defaults``: the library's, for the options
    the command line does not take."""
    from se_hub.analysis.ablate import AblationError
    argv = ['finetune', '--model', base, '--data', str(data), '--epochs', str(int(epochs)), '--output', str(run),
            '--seed', str(seed)]
    for key, value in model_kwargs.items():
        argv += ['--model-arg', f'{key}={value!r}']
    actions = {a.dest: a for a in finetune_parser()._actions if a.option_strings}
    own = ('model_kwargs', 'seed', 'resume')  # written above, or by the caller
    for key, value in options.items():
        if key not in actions and key not in own and defaults.get(key, object()) != value:
            raise AblationError(f'finetune option {key}={value!r} has no `se-hub finetune` flag: it cannot be printed '
                                'as a command (run the sweep here instead)')
    for key, action in actions.items():  # in the order of `se-hub finetune --help`
        if key not in options or key in own or options[key] == action.default:
            continue
        value, flags = options[key], action.option_strings
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(flags[0] if value else flags[1])
        elif action.nargs == 0:  # store_true / store_false: the flag sets the non-default value
            argv.append(flags[0])
        elif value is None:
            raise AblationError(f'finetune option {key}=None cannot be written as {flags[0]}')
        else:
            argv += [flags[0], str(value)]
    if resume:
        argv.append('--resume')
    return argv


def shell_quote(arg: str) -> str:
    """``arg`` for a POSIX shell: as it is when safe, in double quotes when it holds single quotes
    only (Python literals read better so), else shlex's single quotes."""
    quoted = shlex.quote(arg)
    if quoted != arg and "'" in arg and not set(arg) & set('"$`\\!'):
        return f'"{arg}"'
    return quoted


def finetune_commands(sweep, log=print) -> List[str]:
    """One ``se-hub finetune`` command line per unfinished run of ``sweep`` (se_hub.analysis.ablate.plan_sweep)."""
    from se_hub.tasks.classification import FinetuneOptions
    defaults = FinetuneOptions.defaults()
    commands = ['se-hub ' + ' '.join(map(shell_quote, finetune_argv(
        sweep.base, sweep.data, sweep.epochs, r.path, r.seed, r.model_kwargs, sweep.options, defaults,
        resume=r.state == 'resume'))) for r in sweep.runs if r.state != 'done']
    done = sum(r.state == 'done' for r in sweep.runs)
    log(f'{len(commands)} of {len(sweep.runs)} runs to do ({done} finished); when they have run: '
        f'se-hub ablate --collect {shlex.quote(str(sweep.output))}', file=sys.stderr)
    return commands


def run(args) -> int:
    from dataclasses import fields

    from se_hub.analysis.ablate import (
        COST_PLOT,
        CSV,
        CURVES_PLOT,
        MARKDOWN,
        AblationError,
        ablate,
        collect,
        list_variants,
        plan_sweep,
    )
    from se_hub.tasks.classification import FinetuneOptions
    if args.list_variants:
        print(list_variants())
        return 0
    if args.collect:
        collect(args.collect)
        print(f'wrote {Path(args.collect) / MARKDOWN}, {CSV}, {COST_PLOT}, {CURVES_PLOT}')
        return 0
    missing = [flag for flag, value in (('--base', args.base), ('--data', args.data), ('--variants', args.variants),
                                        ('--epochs', args.epochs), ('--output', args.output)) if value is None]
    if missing:
        raise AblationError(f"se-hub ablate needs {', '.join(missing)} (or --collect OUT, or --list-variants)")
    options = options_of(args, [f.name for f in fields(FinetuneOptions)], skip=('epochs',))
    model_kwargs = options.pop('model_kwargs')
    if args.print_commands:
        sweep = plan_sweep(args.base, args.data, args.variants, args.epochs, args.output, seeds=args.seeds,
                           model_kwargs=model_kwargs, **options)
        print('\n'.join(finetune_commands(sweep)))
        return 0
    ablate(args.base, args.data, args.variants, args.epochs, args.output, seeds=args.seeds, model_kwargs=model_kwargs,
           **options)
    print(f'wrote {Path(args.output) / MARKDOWN}, {CSV}, {COST_PLOT}, {CURVES_PLOT}')
    return 0
