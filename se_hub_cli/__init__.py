"""The ``se-hub`` command's entry point, kept outside the ``se_hub`` package.

``import se_hub`` registers every model with timm, which imports torch and timm (seconds). The
command only needs them for the verb it runs: each verb is a module of :mod:`.commands` whose
arguments use the standard library only and whose ``run`` imports se_hub when the verb runs;
``list`` (:mod:`.listing`) is served from the catalog file ``se_hub/models/catalog_costs.json``.
"""
import argparse
import os
import shlex
import sys
from typing import Optional, Sequence

from .commands import VERBS, command

__all__ = ['build_parser', 'main']


def check_options(parser: argparse.ArgumentParser, verbs, argv: Sequence[str]) -> None:
    """Name a misspelt option (``--ouptut``), with the option it may be, before argparse reports a
    missing required option (it reports that first and never the typo)."""
    verb = next((a for a in argv if not a.startswith('-')), None)
    if verb not in verbs.choices:
        return
    known = [o for action in verbs.choices[verb]._actions for o in action.option_strings]
    for arg in argv[argv.index(verb) + 1:]:
        if arg == '--':
            break
        flag = arg.split('=', 1)[0]
        # argparse takes an unambiguous prefix of an option (allow_abbrev): those are known too
        if flag.startswith('--') and not any(o.startswith(flag) for o in known):
            import difflib
            close = difflib.get_close_matches(flag, [o for o in known if o.startswith('--')], n=1)
            verbs.choices[verb].error(f'unrecognized option {flag}' + (f' (did you mean {close[0]}?)' if close else ''))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='se-hub', description='The Squeeze-and-Excitation model zoo for timm.')
    parser.add_argument('--debug', action='store_true', help='show tracebacks')
    sub = parser.add_subparsers(dest='command', required=True)
    for verb in VERBS:
        command(verb).add_parser(sub)
    parser.verbs = sub
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    check_options(parser, parser.verbs, argv)
    args = parser.parse_args(argv)
    try:
        code = command(args.command).run(args)
        sys.stdout.flush()  # a closed pipe fails here, where it is handled, not at exit
        return code
    except KeyboardInterrupt as e:
        print(interrupted_text(e, argv), file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader left (`se-hub list | head`): stop quietly like other Unix tools; stdout goes to devnull
        # so that the interpreter's final flush does not fail again (Python's signal documentation)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # noqa: BLE001 - one clear line unless --debug
        if args.debug:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f'se-hub: error: {for_the_command_line(message, args)}', file=sys.stderr)
        return 1


def interrupted_text(e: KeyboardInterrupt, argv: Sequence[str]) -> str:
    """What Ctrl-C left behind (the library says it in the exception) and, for a run that ``--resume``
    continues, the command that does it."""
    text = 'se-hub: interrupted' + (f': {e}' if str(e) else '')
    if getattr(e, 'resumable', False):
        again = [a for a in argv if a != '--resume'] + ['--resume']
        text += f'\ncontinue it with: se-hub {shlex.join(again)}'
    return text


# the library's advice in Python terms -> (what the command line says, the namespace attribute that
# shows the verb has that flag)
_PYTHON_ADVICE = {
    'create it with pretrained=False': ('pass --no-pretrained (random weights)', 'pretrained'),
    'load a checkpoint with se_hub.load_checkpoint': ('load a checkpoint with --checkpoint FILE', 'checkpoint'),
    'pretrained=False': ('--no-pretrained', 'pretrained'),
}


def for_the_command_line(message: str, args: argparse.Namespace) -> str:
    """``message`` with Python advice said as this verb's flags; advice the verb has no flag for is left out."""
    parts = []
    for part in message.replace(' (pretrained=False)', '').split('; '):  # that one stands beside its flag
        options = []
        for option in part.split(', or '):
            for python, (cli, dest) in _PYTHON_ADVICE.items():
                if python in option:
                    option = option.replace(python, cli) if hasattr(args, dest) else ''
            options.append(option)
        parts.append(', or '.join(o for o in options if o))
    return '; '.join(p for p in parts if p)
