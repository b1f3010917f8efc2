"""dvc.yaml's code deps against what each stage actually runs: every cotlab module its script imports, transitively
(lazy imports inside functions included), must be a dep of the stage, or `dvc repro` calls stale outputs up to date.
And no module imports from a layer above it."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# Modules that cannot change what a stage writes, so editing them need not re-run anything. The one place to say so.
EXEMPT = {
    "src/cotlab/tracking.py": "MLflow logging only: runs and their params/metrics, no stage output",
    "src/cotlab/progress.py": "tqdm progress bars on stderr",
    "src/cotlab/__init__.py": "the package docstring and version string",
}

# Lower layers first: a module may import from its own layer or those before it, never from a later one.
LAYERS = [
    {"cotlab", "cotlab.errors", "cotlab.progress", "cotlab.config", "cotlab.schema", "cotlab.answers"},
    {"cotlab.prompts", "cotlab.formats", "cotlab.models", "cotlab.tracking", "cotlab.hub"},
    {"cotlab.data", "cotlab.evaluation", "cotlab.teacher"},
    {"cotlab.methods", "cotlab.selfimprove"},
    {"cotlab.stage", "cotlab.sections", "cotlab.presets"},
]


def module_file(name: str) -> Path | None:
    """The source file of module `name` under src/, or None if it is not a cotlab module (or not a module)."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """The cotlab modules a file imports anywhere in it, with the packages that importing them runs."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import; cotlab imports by absolute name"
            # `from cotlab.methods import codi` imports the submodule cotlab.methods.codi.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names
                                     if module_file(f"{node.module}.{alias.name}")]
        else:
            continue
        for name in names:
            if name == "cotlab" or name.startswith("cotlab."):
                parts = name.split(".")
                found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i])))
    return found


def import_closure(script: Path) -> set[Path]:
    """Every cotlab source file that running `script` can execute."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        for name in imported_modules(path):
            file = module_file(name)
            if file not in seen:
                seen.add(file)
                todo.append(file)
    return seen


def is_docstring_only(path: Path) -> bool:
    """A package __init__ with nothing but a docstring runs no code, so it cannot change an output."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def uncovered(root: Path, script: str, deps: list[str]) -> list[str]:
    """The script and the cotlab files of its closure that no dep (a file, or a folder above it) covers, minus
    EXEMPT: the script relative to `root`, the modules to src/'s project."""
    dep_paths = [root / d for d in deps]
    covered = lambda file: any(file == d or d in file.parents for d in dep_paths)  # noqa: E731
    missing = [] if covered(root / script) else [script]
    for file in sorted(import_closure(root / script)):
        rel = file.relative_to(ROOT).as_posix()
        if rel not in EXEMPT and not is_docstring_only(file) and not covered(root / rel):
            missing.append(rel)
    return missing


def pipeline_stages(root: Path):
    """(name, script, code deps) for every stage of dvc.yaml, foreach and matrix expanded by DVC itself."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            words = stage.cmd.split()
            assert words[:1] == ["python"] and words[1].startswith("stages/"), (stage.addressing, stage.cmd)
            yield stage.addressing, words[1], [str(d.def_path) for d in stage.deps]


def test_every_stage_depends_on_every_module_its_script_imports():
    gaps = {name: missing for name, script, deps in pipeline_stages(ROOT)
            if (missing := uncovered(ROOT, script, deps))}
    assert not gaps, "stage deps miss modules the stage imports:\n" + "\n".join(
        f"  {name}: {', '.join(files)}" for name, files in gaps.items())


def test_no_stage_depends_on_code_it_does_not_run():
    """The other direction: a code dep outside the closure re-runs a stage for an edit that cannot change it, so
    the claim "a change re-runs exactly the stages that import it" would not hold."""
    extra = {}
    for name, script, deps in pipeline_stages(ROOT):
        needed = {script} | {f.relative_to(ROOT).as_posix() for f in import_closure(ROOT / script)}
        stale = [d for d in deps if d.endswith(".py") and d.startswith(("src/", "stages/")) and d not in needed]
        stale += [d for d in deps if d.startswith(("src/", "stages/")) and (ROOT / d).is_dir()
                  and any((ROOT / d).glob("*.py"))]  # a whole package: any edit in it re-runs the stage
        if stale:
            extra[name] = stale
    assert not extra, "stage deps name code the stage never imports:\n" + "\n".join(
        f"  {name}: {', '.join(files)}" for name, files in extra.items())


def test_no_stage_imports_the_check_of_every_section():
    """cotlab.sections imports every method and job: a stage importing it would depend on all of them. check_params
    exists to run it, and writes an output that no param value can change."""
    importers = {name for name, script, _ in pipeline_stages(ROOT)
                 if ROOT / "src/cotlab/sections.py" in import_closure(ROOT / script)}
    assert importers == {"check_params"}, f"stages that import cotlab.sections: {sorted(importers)}"


def test_a_planted_missing_dep_is_named(tmp_path):
    """The check itself: a stage whose script imports a module that its deps leave out fails, naming both."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "probe.py").write_text(
        "from cotlab.methods import codi\n\ndef main():\n    from cotlab.evaluation.stats import wilson\n")
    missing = uncovered(tmp_path, "stages/probe.py", ["src/cotlab/methods/codi.py"])
    assert "stages/probe.py" in missing  # the script itself
    assert "src/cotlab/evaluation/stats.py" in missing  # a lazy import inside main()
    assert "src/cotlab/methods/codi.py" not in missing and "src/cotlab/tracking.py" not in missing
    assert "src/cotlab/schema.py" in missing  # codi.py's own imports are followed
    # And the real dvc.yaml check names the stage: drop one dep of a real stage.
    name, script, deps = next(s for s in pipeline_stages(ROOT) if s[0] == "codi@personal_relations")
    dropped = next(d for d in deps if d.startswith("src/cotlab/") and d.endswith(".py"))
    assert dropped in uncovered(ROOT, script, [d for d in deps if d != dropped])


def layer_of(module: str) -> int:
    """The layer of `module`: that of the longest listed name it falls under."""
    best, depth = None, -1
    for i, layer in enumerate(LAYERS):
        for name in layer:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = i, name.count(".")
    assert best is not None, f"{module} is in no layer of tests/test_deps.py LAYERS"
    return best


@pytest.mark.parametrize("path", sorted((SRC / "cotlab").rglob("*.py")), ids=lambda p: p.relative_to(SRC).as_posix())
def test_no_module_imports_from_a_layer_above_it(path):
    module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
    upward = sorted(m for m in imported_modules(path)
                    if layer_of(m) > layer_of(module) and not module.startswith(m + "."))
    assert not upward, f"{module} (layer {layer_of(module)}) imports from a layer above: {upward}"
