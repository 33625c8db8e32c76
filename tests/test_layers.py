"""Every import in se_hub points down its floors, no two modules import each other (directly or round a
longer circle), and no module imports another module's private ``_name`` (``_compat`` excepted).

The checker reads the source with ``ast`` (nothing is imported), so it sees imports inside functions too.
The second test shows it failing on a small tree with one of each offence."""
import ast
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

REPO = Path(__file__).resolve().parents[1]

# Lowest floor first; a module may import its own floor (no circles) and any floor below it. A name
# covers the module and everything under it; the most specific name wins.
FLOORS: Tuple[Tuple[str, ...], ...] = (
    ('se_hub._compat', 'se_hub.files', 'se_hub.plots', 'se_hub.images', 'se_hub.layers'),
    ('se_hub.weights',),
    ('se_hub.models', 'se_hub.retrofit', 'se_hub.complexity'),
    ('se_hub.factory', 'se_hub.hub', 'se_hub.__init__'),  # se_hub.__init__: the package's front door
    ('se_hub.tasks', 'se_hub.deploy'),
    ('se_hub.analysis',),
    ('se_hub_cli', 'hubconf'),
)
SHARED_PRIVATE = ('_compat',)  # the one module whose private names anyone may import
# Offences still owed, each (importer, imported) with the step of issue #29 that removes it; the list may
# only shrink (an entry that no longer matches fails the test).
OWED = ()


def _module_names(root: Path, tops: Sequence[str]) -> Dict[str, Path]:
    """Dotted name -> file; a package is named by its folder (``se_hub.tasks``)."""
    names = {}
    for top in tops:
        if (root / f'{top}.py').is_file():
            names[top] = root / f'{top}.py'
        for path in sorted((root / top).rglob('*.py')) if (root / top).is_dir() else ():
            parts = path.relative_to(root).with_suffix('').parts
            names['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
    return names


def _floor(module: str, is_root_package: bool, floors) -> Optional[int]:
    key = f'{module}.__init__' if is_root_package else module
    best = None
    for level, names in enumerate(floors):
        for name in names:
            if (key == name or key.startswith(name + '.')) and (best is None or len(name) > len(best[1])):
                best = (level, name)
    return None if best is None else best[0]


def _imports(path: Path, module: str, modules: Dict[str, Path]):
    """(line, target module, imported name or None) for every import of a module in ``modules``, and
    (line, target module, attribute) for ``alias._name`` where ``alias`` is bound to such a module."""
    tree = ast.parse(path.read_text(encoding='utf-8'), str(path))
    package = module if path.name == '__init__.py' else module.rpartition('.')[0]
    bound: Dict[str, str] = {}
    found: List[Tuple[int, str, Optional[str]]] = []

    def internal(name: str) -> Optional[str]:  # the longest known module that ``name`` starts with
        parts = name.split('.')
        for n in range(len(parts), 0, -1):
            if '.'.join(parts[:n]) in modules:
                return '.'.join(parts[:n])
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = internal(alias.name)
                if target:
                    found.append((node.lineno, target, None))
                    local = alias.asname or alias.name.split('.')[0]
                    bound[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - (node.level - 1)]
                source = '.'.join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ''
            if internal(source) is None:
                continue
            for alias in node.names:
                sub = f'{source}.{alias.name}'
                if sub in modules:  # ``from pkg import module``
                    found.append((node.lineno, sub, None))
                    bound[alias.asname or alias.name] = sub
                else:
                    found.append((node.lineno, source, alias.name))
    for node in ast.walk(tree):  # ``module._name`` through a bound alias
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.insert(0, value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in bound:
                target = internal('.'.join([bound[value.id], *chain]))
                if target and target == '.'.join([bound[value.id], *chain]):
                    found.append((node.lineno, target, node.attr))
    return found


def _is_private(name: str) -> bool:
    return name.startswith('_') and not (name.startswith('__') and name.endswith('__'))


def _circles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected groups of two or more modules (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    groups = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def check_layers(root, tops: Sequence[str] = ('se_hub', 'se_hub_cli', 'hubconf'), floors=FLOORS) -> List[str]:
    """Every offence under ``root``: a module with no floor, an import up the floors, a circle of imports,
    an import of another module's private name. An empty list means the house is in order."""
    root = Path(root)
    modules = _module_names(root, tops)
    problems, edges = [], {}
    for module, path in sorted(modules.items()):
        floor = _floor(module, module in tops, floors)
        where = path.relative_to(root).as_posix()
        if floor is None:
            problems.append(f'{where}: {module} is on no floor (add it to FLOORS in tests/test_layers.py)')
            continue
        edges[module] = set()
        for line, target, name in _imports(path, module, modules):
            if target != module:
                edges[module].add(target)
            target_floor = _floor(target, target in tops, floors)
            if target_floor is not None and target_floor > floor:
                problems.append(f'{where}:{line}: upward import: {module} (floor {floor}) imports {target} '
                                f'(floor {target_floor})')
            if (name and _is_private(name) and target != module
                    and target.rpartition('.')[2] not in SHARED_PRIVATE):
                problems.append(f'{where}:{line}: private import: {module} uses {target}.{name}')
    problems += [f'import circle: {" <-> ".join(group)}' for group in _circles(edges)]
    return problems


def test_se_hub_imports_point_down():
    problems = check_layers(REPO)
    owed = {pair: [p for p in problems if f'{pair[0]} ' in p and pair[1] in p] for pair in OWED}
    problems = [p for p in problems if not any(p in found for found in owed.values())]
    assert not problems, '\n'.join(problems)
    paid = [f'{a} -> {b}' for (a, b), found in owed.items() if not found]
    assert not paid, f'no longer found, remove from OWED: {paid}'


def test_checker_reports_each_offence(tmp_path):
    """A tree like se_hub's with the offences issue #29 found: weights importing the checkpoint writer
    from tasks (upward, inside a function), a circle between a task and an analysis tool (which is also
    upward), a circle on one floor, and a private name through ``from`` and through an alias."""
    files = {
        'se_hub/__init__.py': 'from . import weights\n',
        'se_hub/_compat.py': '_shim = 1\n',
        'se_hub/files.py': 'from ._compat import _shim\n',
        'se_hub/weights/__init__.py': '',
        'se_hub/weights/sources.py': 'def stamp():\n    from ..tasks.checkpoints import write_text_atomic\n',
        'se_hub/models/__init__.py': '',
        'se_hub/models/a.py': 'from . import b\n',
        'se_hub/models/b.py': 'import se_hub.models.a\n',
        'se_hub/tasks/__init__.py': '',
        'se_hub/tasks/checkpoints.py': 'from ..files import _tmp_path\n',
        'se_hub/tasks/classification.py': 'def f():\n    from se_hub.analysis.ablate import fresh\n',
        'se_hub/analysis/__init__.py': '',
        'se_hub/analysis/ablate.py': ('from ..tasks import classification as c\n'
                                      'def g():\n    return c._create_model()\n'),
        'se_hub/stray.py': '',
        'hubconf.py': 'import se_hub\n',
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    problems = check_layers(tmp_path, tops=('se_hub', 'hubconf'))
    expected = [
        'se_hub/analysis/ablate.py:3: private import: se_hub.analysis.ablate uses '
        'se_hub.tasks.classification._create_model',
        'se_hub/stray.py: se_hub.stray is on no floor (add it to FLOORS in tests/test_layers.py)',
        'se_hub/tasks/checkpoints.py:1: private import: se_hub.tasks.checkpoints uses se_hub.files._tmp_path',
        'se_hub/tasks/classification.py:2: upward import: se_hub.tasks.classification (floor 4) imports '
        'se_hub.analysis.ablate (floor 5)',
        'se_hub/weights/sources.py:2: upward import: se_hub.weights.sources (floor 1) imports '
        'se_hub.tasks.checkpoints (floor 4)',
        'import circle: se_hub.analysis.ablate <-> se_hub.tasks.classification',
        'import circle: se_hub.models.a <-> se_hub.models.b',
    ]
    assert problems == expected
