"""The import graph of `cmrl`: no cycle, and every import points down the layers (imports inside functions and
`importlib.import_module` calls count; only the CLI dispatcher may load its sub-commands lazily)."""
import ast, re
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1] / 'cmrl'
# bottom to top; a module belongs to the first layer whose pattern matches its dotted name
LAYERS = [
    ('core', r'cmrl(\.core|\.command)?$|cmrl\._modidx$'),
    ('data', r'cmrl\.data(\..*)?$'),
    ('parts', r'cmrl\.(fit|encoders|codebook|losses|dcid|augment)$|cmrl\.heads(\..*)?$'),
    ('models', r'cmrl\.models(\..*)?$'),
    ('metrics and checkpoints', r'cmrl\.(metrics|checkpoint)$'),
    ('training', r'cmrl\.(distributed|learner|callbacks|train)$'),
    ('evaluation', r'cmrl\.eval(\..*)?$|cmrl\.retrieve$|cmrl\.generate$'),
    ('cli', r'cmrl\.cli$'),
    ('test utilities', r'cmrl\.testing$'),
]
LAZY_OK = {'cmrl.cli'}  # the dispatcher loads sub-commands with importlib

def layer(mod: str) -> int:
    for i, (_, pat) in enumerate(LAYERS):
        if re.match(pat, mod): return i
    raise KeyError(f"{mod}: no layer in tests/test_layers.py::LAYERS (add it)")

def modname(f: Path) -> str:
    parts = list(f.relative_to(PKG.parent).with_suffix('').parts)
    if parts[-1] == '__init__': parts = parts[:-1]
    return '.'.join(parts)

def known(name: str, mods: set) -> str | None:
    "The longest prefix of `name` that is a cmrl module"
    parts = name.split('.')
    for i in range(len(parts), 0, -1):
        if '.'.join(parts[:i]) in mods: return '.'.join(parts[:i])
    return None

def imports(f: Path, mods: set, me: str | None = None) -> list[tuple[str, int, str]]:
    "(imported cmrl module, line, how) for every import in `f` (module `me`), at any depth"
    me, out = me or modname(f), []
    pkg = me if f.name == '__init__.py' else me.rpartition('.')[0]
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            names = [(a.name, 'import') for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                up = pkg.split('.')
                up = up[:len(up) - node.level + 1]
                base = '.'.join(up + ([base] if base else []))
            names = [(base + '.' + a.name, 'from') for a in node.names] + [(base, 'from')]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'import_module'
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [(node.args[0].value, 'importlib')]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == '__import__':
            names = [(node.args[0].value, 'importlib')] if node.args and isinstance(node.args[0], ast.Constant) else []
        else: continue
        seen = set()
        for n, how in names:
            k = known(n, mods)
            if k and k != me and k not in seen: seen.add(k); out.append((k, node.lineno, how))
    return out

def graph():
    files = sorted(PKG.rglob('*.py'))
    mods = {modname(f) for f in files}
    return {modname(f): (f, imports(f, mods)) for f in files}

def test_every_module_has_a_layer():
    for m in graph(): layer(m)

def test_imports_point_down():
    bad = []
    for m, (f, imps) in graph().items():
        for k, line, how in imps:
            if layer(k) > layer(m):
                bad.append(f"{f.relative_to(PKG.parent)}:{line}: {m} ({LAYERS[layer(m)][0]}) imports {k} ({LAYERS[layer(k)][0]})")
    assert not bad, 'upward imports:\n' + '\n'.join(bad)

def test_importlib_only_in_cli():
    bad = [f"{f.relative_to(PKG.parent)}:{line}: {m} loads {k} with importlib"
           for m, (f, imps) in graph().items() for k, line, how in imps if how == 'importlib' and m not in LAZY_OK]
    assert not bad, '\n'.join(bad)

def test_no_cycle():
    g = {m: sorted({k for k, *_ in imps}) for m, (f, imps) in graph().items()}
    # the package __init__ files hold nothing: importing a sub-module imports its package, which is no edge back
    state, stack, cycles = {}, [], []
    def visit(m):
        state[m] = 1; stack.append(m)
        for k in g.get(m, []):
            if state.get(k) == 1: cycles.append(stack[stack.index(k):] + [k])
            elif k not in state: visit(k)
        stack.pop(); state[m] = 2
    for m in g:
        if m not in state: visit(m)
    assert not cycles, 'import cycles:\n' + '\n'.join(' -> '.join(c) for c in cycles)

def test_detects_upward_and_cycles(tmp_path):
    "The checks above can fail: a made-up evaluation -> training import is upward"
    assert layer('cmrl.eval.report') > layer('cmrl.train') > layer('cmrl.models.registry') > layer('cmrl.data.source')
    f = tmp_path / 'x.py'; f.write_text('def f():\n    from cmrl import train\n    import importlib; importlib.import_module("cmrl.codebook")\n')
    got = {k for k, *_ in imports(f, {'cmrl.train', 'cmrl.codebook', 'cmrl'}, me='cmrl.eval.x')}
    assert got == {'cmrl', 'cmrl.train', 'cmrl.codebook'}
