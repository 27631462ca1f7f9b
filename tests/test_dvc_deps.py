"""dvc.yaml's code deps against the code each stage really runs.

A stage's outputs are stale when any module its script imports changes, so DVC must see every one
of them: for each stage, the script of its ``cmd`` (``stages/<x>.py``) and everything it imports
inside ``pipeline/`` and ``stages/`` (at module level or inside functions, ``from a.b import c`` with
``c`` a module, relative imports, and each package's ``__init__.py`` that holds code; a stage script
that names another one, ``"train.py"``, runs it and so its code too) must lie under one of the
stage's ``deps``. The closure is derived from the sources with :mod:`ast`, so a new import, module
or stage is checked without editing this file. The other way round, a code dep that holds none of
that code, or does not exist, only reruns the stage for nothing and fails too.
"""
from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from conftest import REPO

#: The project's own top-level packages: imports of anything else are third-party.
PACKAGES = ("pipeline", "stages")
SCRIPT = re.compile(r"(?<![\w/])stages/[a-z0-9_]+\.py\b")
#: A string that names a stage script, e.g. ``"train.py"`` in a stage that runs it as a subprocess.
SCRIPT_NAME = re.compile(r"^(stages/)?[a-z0-9_]+\.py$")


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The file (relative to ``root``) of module ``name`` (``pipeline.engine.runs``), or ``None``
    where it is not a module of this repository."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def has_code(path: Path, root: Path = REPO) -> bool:
    """Whether a package's ``__init__.py`` does anything besides its docstring."""
    body = ast.parse((root / path).read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
               and not (isinstance(node, ast.ImportFrom) and node.module == "__future__") for node in body)


@cache
def direct_imports(path: Path, root: Path = REPO) -> frozenset[Path]:
    """The repository's modules that importing ``path`` executes directly: every ``import`` and
    ``from ... import`` anywhere in the file (function bodies included), the imported name itself
    where it is a submodule, and the ``__init__.py`` with code of every package on the way."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse((root / path).read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (path.parts[0] == "stages" and isinstance(node, ast.Constant) and isinstance(node.value, str)
              and SCRIPT_NAME.match(node.value)):
            names.add(f"stages.{Path(node.value).stem}")
    found: set[Path] = set()
    for name in names:
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):   # the packages on the way are imported first
            file = module_file(".".join(parts[:depth]), root)
            if file is not None and (file.name != "__init__.py" or has_code(file, root)):
                found.add(file)
    return frozenset(found - {path})


def closure(script: Path) -> dict[Path, Path | None]:
    """``script`` and every repository module it imports, transitively, each with the module that
    imports it (``None`` for ``script``)."""
    seen: dict[Path, Path | None] = {script: None}
    todo = [script]
    while todo:
        importer = todo.pop(0)
        for module in sorted(direct_imports(importer)):
            if module not in seen:
                seen[module] = importer
                todo.append(module)
    return seen


def chain(found: dict[Path, Path | None], module: Path) -> str:
    """How the script reaches ``module``: ``stages/x.py -> pipeline/a.py -> module``."""
    links = [module]
    while found[links[-1]] is not None:
        links.append(found[links[-1]])
    return " -> ".join(str(link) for link in reversed(links))


def stage_script(name: str, stage: dict) -> Path:
    found = SCRIPT.findall(stage["cmd"])
    assert len(found) == 1, f"dvc.yaml stage {name}: cmd should run one stages/<x>.py script, found {found}"
    return Path(found[0])


def code_deps(stage: dict) -> list[str]:
    return [d for d in stage.get("deps", []) if d.split("/")[0] in PACKAGES]


def covers(dep: str, module: Path) -> bool:
    return module == Path(dep) or Path(dep) in module.parents


STAGES = dvc_stages()


def test_direct_imports_resolve_relative_and_function_level_imports(tmp_path):
    files = {"pipeline/__init__.py": '"""Docstring only."""\n',
             "pipeline/a/__init__.py": "from pipeline.a.core import run\n",
             "pipeline/a/core.py": "def run():\n    from . import helper\n    from ..b import tool\n",
             "pipeline/a/helper.py": "", "pipeline/b/__init__.py": "", "pipeline/b/tool.py": "import numpy\n",
             "pipeline/c.py": "import pipeline.b.tool\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    # `from . import helper` and `from ..b import tool` inside a function both name modules; the
    # package pipeline.a has an __init__ with code, which the import runs too
    assert direct_imports(Path("pipeline/a/core.py"), tmp_path) == {
        Path("pipeline/a/__init__.py"), Path("pipeline/a/helper.py"), Path("pipeline/b/tool.py")}
    # an empty __init__ (pipeline.b) or a docstring-only one (pipeline) runs nothing; numpy is not ours
    assert direct_imports(Path("pipeline/c.py"), tmp_path) == {Path("pipeline/b/tool.py")}
    assert direct_imports(Path("pipeline/b/tool.py"), tmp_path) == frozenset()


def test_closure_follows_function_level_relative_and_submodule_imports():
    # the script itself, a function-level import (methods.py imports bmfi inside a builder), a
    # package __init__ that holds code (pipeline.metrics re-exports evaluate_detections) and
    # `from pipeline.engine import distributed`, where the imported name is a module
    assert Path("pipeline/distill/bmfi.py") in closure(Path("stages/kd_settings.py"))
    assert Path("pipeline/metrics/__init__.py") in closure(Path("stages/evaluate.py"))
    assert Path("pipeline/engine/distributed.py") in closure(Path("stages/distill.py"))
    # an __init__ with a docstring only changes nothing and is left out
    assert Path("pipeline/__init__.py") not in closure(Path("stages/distill.py"))
    # a stage that runs other stage scripts as subprocesses (the seed replicas) runs their code
    assert Path("pipeline/engine/trainer.py") in closure(Path("stages/replica.py"))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_every_module_its_script_imports(name):
    stage = STAGES[name]
    deps = code_deps(stage)
    found = closure(stage_script(name, stage))
    missing = [chain(found, m) for m in sorted(found) if not any(covers(d, m) for d in deps)]
    assert not missing, (f"dvc.yaml stage {name}: its deps miss modules its script runs; add each (or its "
                         "package folder) to the stage's deps:\n  " + "\n  ".join(missing))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_exist_and_are_used(name):
    stage = STAGES[name]
    gone = [d for d in code_deps(stage) if not (REPO / d).exists()]
    assert not gone, f"dvc.yaml stage {name}: deps {', '.join(gone)} do not exist; fix or drop them"
    found = closure(stage_script(name, stage))
    unused = [d for d in code_deps(stage) if not any(covers(d, m) for m in found)]
    assert not unused, (f"dvc.yaml stage {name}: deps {', '.join(unused)} hold no code its script runs; "
                        "an edit there would rerun the stage for nothing: drop them")


# --- params: a settings stage lists every key it reads, and its detector's weights only ----------

SETTINGS_STAGES = ("kd_settings", "qat_kd_settings")
DETECTORS = ("gfl", "faster_rcnn")


def resolved_params(stage: dict, item: dict[str, str]) -> list[str]:
    """The stage's ``params`` entries with ``${item.<key>}`` filled in from ``item``."""
    return [re.sub(r"\$\{item\.(\w+)\}", lambda m: item[m.group(1)], key) for key in stage.get("params", [])]


def param_leaves(data: dict, prefix: str) -> dict[str, object]:
    """``{"distill.gkd.gfl.beta": 0.001, ...}``: every non-mapping value under ``data``."""
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(param_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def literal_choices(model: type, path: list[str]) -> list:
    """The values a ``Literal`` field at ``path`` of pydantic ``model`` allows (inside tuples too)."""
    from typing import Literal, get_args, get_origin

    from pydantic import BaseModel

    annotation: object = model
    for part in path:
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)) or part not in annotation.model_fields:
            return []
        annotation = annotation.model_fields[part].annotation
    found, todo = [], [annotation]
    while todo:
        node = todo.pop()
        if get_origin(node) is Literal:
            found += list(get_args(node))
        else:
            todo += list(get_args(node))
    return found


def perturbations(value: object, choices: list) -> list:
    """Other values of the same kind as ``value``; the caller keeps those the schema accepts."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if isinstance(value, float):
        return [value * 2 + 0.01, value / 2]
    if isinstance(value, str):
        return [c for c in choices if c != value] + [value + "x"]
    if isinstance(value, list):
        return [v for v in (value[::-1], value[:-1], [*value, *[c for c in choices if c not in value][:1]], [*value, 7])
                if v != value]
    if value is None:
        return [1, 1.0, True]
    return []


def distill_section() -> dict:
    """params.yaml's distill section, with an override for every baseline and detector, so the
    per-method settings are there to be edited too."""
    from pipeline.distill.methods import BASELINES

    distill = yaml.safe_load((REPO / "params.yaml").read_text())["distill"]
    distill["baselines"] = {name: {det: dict(load()[1].get(det, {})) for det in DETECTORS}
                            for name, load in BASELINES.items()}
    return distill


def edited(data: dict, dotted: str, value: object) -> dict:
    import copy

    out = copy.deepcopy(data)
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return out


@pytest.mark.parametrize("name", SETTINGS_STAGES)
@pytest.mark.parametrize("detector", DETECTORS)
def test_settings_stage_lists_every_distill_key_its_method_settings_read(name, detector):
    """Each distill key a settings stage does not list is edited in turn: the resolved settings of
    every method (on a dataset with and one without per-dataset weights) must not change, or the
    stage's output would go stale without DVC noticing. And another detector's weights are not
    listed, so editing them leaves this detector's stages up to date."""
    from pydantic import ValidationError

    from pipeline.config import DistillParams
    from pipeline.distill.methods import METHODS, method_settings

    distill = distill_section()
    base = DistillParams.model_validate(distill)
    listed = resolved_params(STAGES[name], {"detector": detector, "dataset": "any", "method": "any"})
    unlisted = {key: value for key, value in param_leaves(distill, "distill.").items()
                if not any(key == entry or key.startswith(entry + ".") for entry in listed)}
    for other in set(DETECTORS) - {detector}:
        assert f"distill.gkd.{other}.gkd_weight" in unlisted, f"dvc.yaml {name} lists {other}'s GKD weights"
    for key, value in unlisted.items():
        path = key.split(".")[1:]
        tried = []
        for candidate in perturbations(value, literal_choices(DistillParams, path)):
            try:
                params = DistillParams.model_validate(edited(distill, ".".join(path), candidate))
            except ValidationError:
                continue
            tried.append(candidate)
            for dataset in ("synthetic", "coco_traffic"):
                for method in METHODS:
                    before = method_settings(method, detector, base, dataset)
                    assert method_settings(method, detector, params, dataset) == before, (
                        f"dvc.yaml stage {name}: method_settings({method}, {detector}, {dataset}) reads {key}, "
                        "which the stage's params do not list; add it")
            break
        assert tried, f"no valid edit of {key}={value!r} to check with; extend perturbations()"
