"""BUILD must describe every module, trainer and test (Bazel can't run offline here)."""
import ast
import glob
import os

from conftest import REPO

_RULES = ("py_library", "py_binary", "py_test")


def _value(node):
    """Literal value of a BUILD expression: glob() is expanded, requirement() is None."""
    if isinstance(node, ast.Call):
        if getattr(node.func, "id", None) == "glob":
            patterns = ast.literal_eval(node.args[0])
            return sorted(os.path.relpath(p, REPO) for pattern in patterns
                          for p in glob.glob(os.path.join(REPO, pattern), recursive=True)
                          if os.path.isfile(p))
        return None
    if isinstance(node, ast.List):
        return [_value(elt) for elt in node.elts]
    return ast.literal_eval(node)


def _targets():
    """Parses BUILD (Starlark is Python syntax) into {name: (rule, srcs, deps)}."""
    with open(os.path.join(REPO, "BUILD")) as f:
        tree = ast.parse(f.read(), "BUILD")
    targets = {}
    for node in tree.body:
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
            continue
        rule = getattr(node.value.func, "id", None)
        if rule not in _RULES:
            continue
        kwargs = {kw.arg: _value(kw.value) for kw in node.value.keywords}
        assert kwargs["name"] not in targets, f"duplicate target {kwargs['name']}"
        targets[kwargs["name"]] = (rule, kwargs.get("srcs") or [], kwargs.get("deps") or [])
    return targets


def test_every_python_file_has_a_target_of_the_right_kind():
    targets = _targets()
    covered = {}
    for rule, srcs, _ in targets.values():
        for src in srcs:
            covered[src] = rule
    expected = {}
    for path in glob.glob(os.path.join(REPO, "dwlt_tf", "*.py")):
        expected[os.path.relpath(path, REPO)] = "py_library"
    for path in glob.glob(os.path.join(REPO, "trainers", "*.py")):
        if not path.endswith("__init__.py"):
            expected[os.path.relpath(path, REPO)] = "py_binary"
    for path in glob.glob(os.path.join(REPO, "configs", "*.py")):
        expected[os.path.relpath(path, REPO)] = "py_library"
    for path in glob.glob(os.path.join(REPO, "benchmarks", "*.py")):
        expected[os.path.relpath(path, REPO)] = "py_binary"
    for path in glob.glob(os.path.join(REPO, "tests", "test_*.py")):
        expected[os.path.relpath(path, REPO)] = "py_test"
    missing = {src: rule for src, rule in expected.items() if covered.get(src) != rule}
    assert not missing, f"files without a {list(set(missing.values()))} target in BUILD: {missing}"


def test_every_target_names_existing_files_and_known_deps():
    targets = _targets()
    for name, (rule, srcs, deps) in targets.items():
        assert srcs, f"target {name} has no srcs"
        for src in srcs:
            assert os.path.isfile(os.path.join(REPO, src)), f"{name}: {src} does not exist"
        for dep in deps:
            if dep is None:  # requirement("...") of a pip package
                continue
            assert dep.lstrip(":") in targets, f"{name}: unknown dep {dep}"


def _imported_modules(path):
    """dwlt_tf modules a file imports (`from dwlt_tf import x`, `from dwlt_tf.x import y`)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "dwlt_tf":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dwlt_tf."):
            found.add(node.module.split(".")[1])
    return found


def test_every_target_depends_on_the_modules_it_imports():
    targets = _targets()
    library_of = {}
    for name, (rule, srcs, _) in targets.items():
        for src in srcs:
            if rule == "py_library" and src.startswith("dwlt_tf/"):
                library_of[os.path.splitext(os.path.basename(src))[0]] = name
    for name, (rule, srcs, deps) in targets.items():
        direct = {d.lstrip(":") for d in deps if d}
        for src in srcs:
            if src.endswith(".py") and not src.startswith("configs/"):
                needed = {library_of[m] for m in _imported_modules(os.path.join(REPO, src))}
                missing = sorted(needed - direct - {name})
                assert not missing, f"{name} ({src}) imports {missing} without depending on them"
