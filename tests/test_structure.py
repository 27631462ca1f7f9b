"""The code's shape: the import graph of pipeline/ has no loop, artifact paths come from one
torch-free module, and those paths are the ones dvc.yaml declares."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import artifacts
from pipeline.engine.runs import QATRun, RunId

from conftest import REPO


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the ``pipeline`` package under ``root``: dotted name -> file (a package is
    named by its ``__init__.py``)."""
    out = {}
    for path in sorted((root / "pipeline").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the ``pipeline`` modules it imports, anywhere in the file (inside functions too,
    relative imports resolved; ``from pipeline.deploy import cuda`` is the module ``cuda``)."""
    modules = module_files(root)

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str | None] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {owner(a.name) for a in node.names if a.name.split(".")[0] == "pipeline"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = package
                    for _ in range(node.level - 1):
                        here = here.rpartition(".")[0]
                    base = f"{here}.{base}".rstrip(".")
                if base.split(".")[0] != "pipeline":
                    continue
                found |= {owner(f"{base}.{a.name}") if f"{base}.{a.name}" in modules else owner(base)
                          for a in node.names}
        graph[name] = {m for m in found if m is not None and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One loop of ``graph`` as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}      # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (loop := visit(nxt)):
                return loop
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (loop := visit(start)):
            return loop
    return None


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same graph between ``pipeline``'s subpackages and top-level modules
    (``pipeline.deploy.runtime`` -> ``pipeline.deploy``)."""
    def group(name: str) -> str:
        return ".".join(name.split(".")[:2])

    out: dict[str, set[str]] = {}
    for name, targets in graph.items():
        out.setdefault(group(name), set()).update(group(t) for t in targets if group(t) != group(name))
    return out


def test_the_cycle_finder_reports_a_loop_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_sees_imports_inside_functions_and_relative_ones(tmp_path):
    package = tmp_path / "pipeline"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("def f():\n    from pipeline.sub import b\n")
    (package / "sub" / "b.py").write_text("from . import a\nfrom pipeline import top\n")
    (package / "top.py").write_text("import pipeline.sub.a\n")
    graph = import_graph(tmp_path)
    assert graph["pipeline.sub.a"] == {"pipeline.sub.b"}
    assert graph["pipeline.sub.b"] == {"pipeline.sub.a", "pipeline.top"}
    assert find_cycle(graph) == ["pipeline.sub.a", "pipeline.sub.b", "pipeline.sub.a"]


def test_no_module_of_pipeline_imports_itself_back():
    loop = find_cycle(import_graph(REPO))
    assert loop is None, "import loop: " + " -> ".join(loop)


def test_no_subpackage_of_pipeline_imports_itself_back():
    loop = find_cycle(package_graph(import_graph(REPO)))
    assert loop is None, "import loop between packages: " + " -> ".join(loop)


def test_quantization_imports_nothing_from_deployment():
    graph = import_graph(REPO)
    offending = {m: sorted(t for t in targets if t.startswith("pipeline.deploy"))
                 for m, targets in graph.items() if m.startswith("pipeline.quant")}
    assert not any(offending.values()), offending


@pytest.mark.parametrize("module", ["pipeline.artifacts", "pipeline.engine.runs", "pipeline.deploy.locate"])
def test_artifact_paths_and_run_names_import_without_torch(module):
    code = f"import {module}, sys; assert 'torch' not in sys.modules, 'torch imported'; " \
           "assert 'onnxruntime' not in sys.modules, 'onnxruntime imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1]


def dvc_paths(stage: str, item: dict[str, str]) -> set[str]:
    """The outs, metrics and plots of ``stage`` in dvc.yaml with ``${item.<key>}`` filled in."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    paths = set()
    for kind in ("outs", "metrics", "plots"):
        for entry in spec.get(kind, []):
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            for key, value in item.items():
                path = path.replace(f"${{item.{key}}}", value)
            paths.add(path)
    return paths


def test_the_paths_the_stages_write_are_the_paths_dvc_yaml_declares():
    ds, det = "kitti", "gfl"
    run = RunId(ds, det, "gkd_bmfi-resnet18")
    train = dvc_paths("train", {"dataset": ds, "detector": det, "model": run.model})
    assert {str(run.model_path), str(run.live_dir / "metrics.json")} <= train
    assert str(run.checkpoint_dir) not in train   # resumable scratch, not a DVC output
    distill = dvc_paths("distill", {"dataset": ds, "detector": det, "student": "resnet18", "method": "gkd_bmfi"})
    assert {str(run.model_path), str(run.gradmap_dir), str(run.balance_log_path)} <= distill
    assert str(artifacts.kd_settings_path(ds, det, "gkd_bmfi")) in dvc_paths(
        "kd_settings", {"dataset": ds, "detector": det, "method": "gkd_bmfi"})
    assert str(artifacts.kd_settings_path(ds, det, "none", qat=True)) in dvc_paths(
        "qat_kd_settings", {"dataset": ds, "detector": det, "method": "none"})
    evaluate = dvc_paths("evaluate", {"dataset": ds, "detector": det, "model": run.model})
    assert {str(run.metrics_path), str(run.detections_path), str(run.pictures_dir),
            str(artifacts.score_path(ds, det, run.model))} == evaluate
    assert str(artifacts.curated_path(ds, "val")) in dvc_paths("curate", {"dataset": ds})
    assert dvc_paths("export", {"dataset": ds, "detector": det, "model": run.model}) == {str(run.export_dir)}
    assert dvc_paths("benchmark", {"dataset": ds, "detector": det, "model": run.model}) == {
        str(run.benchmark_metrics_path), str(run.benchmark_detections_dir),
        str(artifacts.latency_scores_dir(ds, det, run.model))}

    qat = QATRun(ds, det, "gkd_bmfi-resnet18", "none")
    item = {"dataset": ds, "detector": det, "model": qat.parent, "method": qat.method}
    assert {str(qat.model_path), str(qat.live_dir / "metrics.json")} <= dvc_paths("qat", item)
    assert str(qat.checkpoint_dir) not in dvc_paths("qat", item)
    assert dvc_paths("qat_export", item) == {str(qat.export_dir), str(qat.detections_path), str(qat.metrics_path),
                                            str(artifacts.score_path(ds, det, qat.parent, qat.method))}
    assert dvc_paths("benchmark_qat", item) == {str(qat.benchmark_metrics_path), str(qat.benchmark_detections_dir),
                                               str(artifacts.latency_scores_dir(ds, det, qat.parent, qat.method))}

    pair = {"dataset": ds, "detector": det}
    assert {str(p) for p in artifacts.table_paths("distill", ds, det)} == dvc_paths("distill_tables", pair)
    assert {str(p) for p in artifacts.table_paths("qat", ds, det)} == dvc_paths("qat_tables", pair)
    assert dvc_paths("benchmark_plot", pair) == {str(artifacts.benchmark_plot_path(ds, det))}
    assert dvc_paths("ship", {}) == {str(artifacts.SHIP_PATH)}
    assert dvc_paths("report", {}) == {str(artifacts.SUMMARY_PATH)}
    replica = dvc_paths("replica", {"dataset": ds, "detector": det, "student": "resnet18", "seed": "1"})
    assert {str(artifacts.replica_copy(run.metrics_path.parent, 1, "resnet18")),
            str(artifacts.replica_copy(run.detections_path.parent, 1, "resnet18"))} == replica


def test_a_benchmark_records_detections_sit_beside_it_under_detections():
    run = QATRun("kitti", "gfl", "baseline-resnet18", "gkd_bmfi")
    assert artifacts.benchmark_detections_of(run.benchmark_metrics_path, "onnxruntime-cpu-int8") == \
        run.benchmark_detections_dir / "onnxruntime-cpu-int8.npz"


def test_every_stage_script_is_named_after_a_dvc_stage():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    scripts = {p.stem for p in (REPO / "stages").glob("*.py")} - {"__init__"}
    commanded = {Path(word).stem for spec in stages.values() for word in spec["cmd"].split() if word.endswith(".py")}
    assert scripts == commanded
    # each stage runs the script of its name; three run a sibling's script with other arguments
    sibling = {"qat_kd_settings": "kd_settings", "benchmark_qat": "benchmark", "evaluate_distilled": "evaluate"}
    for name, spec in stages.items():
        script = next(Path(w).stem for w in spec["cmd"].split() if w.endswith(".py"))
        assert script == sibling.get(name, name), f"stage {name} runs stages/{script}.py"
