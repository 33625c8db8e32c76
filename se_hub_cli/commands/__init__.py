"""One module per verb of ``se-hub``: ``add_parser(subparsers)`` declares its arguments (standard
library only) and ``run(args)`` does the work, importing se_hub (torch, timm) only then. A new verb
is a new module here and a line in :data:`VERBS` (the order of ``se-hub --help``)."""
import importlib

# verb -> module
VERBS = {
    'list': 'list', 'info': 'info', 'download': 'download', 'verify': 'verify', 'predict': 'predict', 'push': 'push',
    'export': 'export', 'bench': 'bench', 'finetune': 'finetune', 'evaluate': 'evaluate',
    'finetune-detect': 'finetune_detect', 'ablate': 'ablate', 'excitations': 'excitations',
}


def command(verb: str):
    """The module of ``verb``."""
    return importlib.import_module(f'.{VERBS[verb]}', __name__)
