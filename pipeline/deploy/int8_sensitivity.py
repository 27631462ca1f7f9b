"""Which layer groups int8 hurts: the sensitivity table and the ``auto`` float32 set.

The network's Conv/Gemm nodes fall into layer groups by their exported module path
(:data:`GROUP_RULES`: backbone stem and stages, FPN, GFL's towers and logit convs, Faster R-CNN's
RPN conv and logits, RoI box head and predictors). Given the int8 graph with *every* Conv/Gemm
quantized (one calibration), :func:`keep_float32` puts any set of nodes back in float32 by graph
surgery (their input and weight read the float tensors again; unused Q/DQ are pruned), which is
the graph ``quantize_static`` writes with those nodes excluded, without calibrating again.

* :func:`sensitivity_table`: per group, the mAP50 drop against fp32 with that group alone in int8
  (every other group float32) and with that group alone kept float32 (every other group int8),
  plus the drop with everything int8.
* :func:`choose_float32`: the ``auto`` float32 set. Start from the score-layer groups (the fixed
  rule, :func:`pipeline.quant.placement.score_layers`); while the measured drop exceeds the bound
  add the remaining group whose int8 alone costs most (ties: the one whose float32 recovers most,
  then table order); then drop each chosen group, least costly first, whose removal keeps the drop
  within the bound. Every set tried is measured, never estimated from the table. At least one
  group stays int8: when even that cannot meet the bound, the export stops with one line.

Drops are ``fp32 mAP50 - variant mAP50`` in mAP50 points (positive = int8 worse), measured by a
caller-given function of a float32 set, so the greedy choice is testable with known drops.
"""
from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import onnx

from pipeline.data.dataset import CuratedDataset, spread_indices
from pipeline.errors import UserError
from pipeline.quant.placement import QUANTIZED_OPS

#: ``(group, pattern)`` on Conv/Gemm node names (the exporter's module paths; a per-level copy of a
#: shared head layer ends in ``_<n>``); the first match wins, an unmatched node goes to
#: ``other.<first path part>``.
GROUP_RULES: tuple[tuple[str, str], ...] = (
    ("backbone.stem", r"^/backbone/conv1/"),
    *((f"backbone.layer{i}", rf"^/backbone/layer{i}/") for i in range(1, 5)),
    ("fpn", r"^/neck/"),
    ("gfl.cls_tower", r"^/head/cls_convs\.\d+/"),
    ("gfl.reg_tower", r"^/head/reg_convs\.\d+/"),
    ("gfl.cls_logits", r"^/head/gfl_cls(_\d+)?/"),
    ("gfl.reg_logits", r"^/head/gfl_reg(_\d+)?/"),
    ("rpn.conv", r"^/head/conv/"),
    ("rpn.logits", r"^/head/(cls_logits|bbox_pred)(_\d+)?/"),
    ("roi.box_head", r"^/box_head/"),
    ("roi.cls_score", r"^/box_predictor/cls_score/"),
    ("roi.bbox_pred", r"^/box_predictor/bbox_pred/"),
)


def group_of(node_name: str) -> str:
    """The layer group of one Conv/Gemm node name (:data:`GROUP_RULES`)."""
    for group, pattern in GROUP_RULES:
        if re.search(pattern, node_name):
            return group
    first = node_name.strip("/").split("/")[0] or "unnamed"
    return f"other.{first}"


def layer_groups(graph: onnx.ModelProto) -> dict[str, list[str]]:
    """Group name -> its Conv/Gemm node names, groups in :data:`GROUP_RULES` order (then others)."""
    groups: dict[str, list[str]] = {}
    for node in graph.graph.node:
        if node.op_type in QUANTIZED_OPS:
            groups.setdefault(group_of(node.name), []).append(node.name)
    order = {g: i for i, (g, _) in enumerate(GROUP_RULES)}
    return dict(sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def keep_float32(int8: onnx.ModelProto, fp32: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of the all-int8 graph ``int8`` with the nodes ``names`` back in float32: each takes
    the inputs of its namesake in ``fp32`` (float activation, float weight and bias, whose
    initializers are copied over), then Q/DQ nodes and initializers nothing reads are removed."""
    names = set(names)
    out = onnx.ModelProto()
    out.CopyFrom(int8)
    g = out.graph
    source = {n.name: n for n in fp32.graph.node}
    fp32_inits = {t.name: t for t in fp32.graph.initializer}
    have = {t.name for t in g.initializer}
    for node in g.node:
        if node.name not in names:
            continue
        del node.input[:]
        node.input.extend(source[node.name].input)
        for name in node.input:
            if name in fp32_inits and name not in have:
                g.initializer.append(fp32_inits[name])
                have.add(name)
    outputs = {o.name for o in g.output}
    changed = True
    while changed:      # drop nodes whose outputs nothing reads (orphaned Q/DQ chains)
        read = {i for n in g.node for i in n.input} | outputs
        keep = [n for n in g.node if any(o in read for o in n.output)]
        changed = len(keep) != len(g.node)
        if changed:
            del g.node[:]
            g.node.extend(keep)
    read = {i for n in g.node for i in n.input}
    kept_inits = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    del g.value_info[:]
    return out


def val_subset(val: CuratedDataset, count: int) -> CuratedDataset:
    """``count`` val images spread evenly over the split (all of val when it has no more)."""
    if count >= len(val):
        return val
    coco = val.coco
    images = [val.images[i] for i in spread_indices(len(val), count)]
    ids = {im["id"] for im in images}
    split = {**coco, "images": images, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
    return CuratedDataset(split, val.input, train=False)


DropOf = Callable[[frozenset[str]], float]


def graph_drop(int8_path: Path, fp32_path: Path, groups: dict[str, list[str]], fp32_map50: float,
               map50_of: Callable[[Path], float]) -> DropOf:
    """``drop(float32 groups)``: the all-int8 graph at ``int8_path`` with those groups back in float32
    (:func:`keep_float32`), scored by ``map50_of(onnx file)``, as ``fp32_map50 - mAP50``; memoized."""
    int8, fp32 = onnx.load(str(int8_path)), onnx.load(str(fp32_path))
    cache: dict[frozenset[str], float] = {}

    def drop(float32: frozenset[str]) -> float:
        if float32 not in cache:
            names = [n for g in float32 for n in groups[g]]
            with tempfile.TemporaryDirectory(prefix="int8-sensitivity-") as tmp:
                path = Path(tmp) / "variant.onnx"
                onnx.save(keep_float32(int8, fp32, names), str(path))
                cache[float32] = fp32_map50 - map50_of(path)
        return cache[float32]

    return drop


def sensitivity_table(groups: Iterable[str], drop: DropOf) -> dict[str, Any]:
    """``{"all_int8_drop": d, "rows": [{group, int8_alone_drop, float32_alone_drop}, ...]}``: one row
    per group, in the given order; drops in mAP50 points against fp32."""
    groups = list(groups)
    every = frozenset(groups)
    rows = [{"group": g, "int8_alone_drop": drop(every - {g}), "float32_alone_drop": drop(frozenset({g}))}
            for g in groups]
    return {"all_int8_drop": drop(frozenset()), "rows": rows}


def choose_float32(table: dict[str, Any], start: Iterable[str], drop: DropOf, max_drop: float) -> dict[str, Any]:
    """The ``auto`` float32 set (module docstring): ``{"float32_groups": [...], "drop": d,
    "max_drop": max_drop, "steps": [{"action", "group", "float32_groups", "drop"}, ...]}``; groups
    in table order. Raises :class:`UserError` when every group but one in float32 still drops more
    than ``max_drop`` (an int8 file with nothing in int8 is the fp32 graph)."""
    order = [r["group"] for r in table["rows"]]
    cost = {r["group"]: (r["int8_alone_drop"], table["all_int8_drop"] - r["float32_alone_drop"]) for r in table["rows"]}
    chosen = [g for g in order if g in set(start)]
    steps = [{"action": "start", "group": None, "float32_groups": chosen, "drop": drop(frozenset(chosen))}]
    while steps[-1]["drop"] > max_drop and len(chosen) < len(order) - 1:
        rest = [g for g in order if g not in chosen]
        worst = max(rest, key=lambda g: (*cost[g], -order.index(g)))
        chosen = [g for g in order if g in chosen or g == worst]
        steps.append({"action": "add", "group": worst, "float32_groups": chosen, "drop": drop(frozenset(chosen))})
    current = steps[-1]["drop"]
    if current > max_drop:
        int8 = [g for g in order if g not in chosen]
        raise UserError(f"deploy.int8_max_drop = {max_drop}: no int8 layer group meets it (with only "
                        f"{', '.join(int8) or 'nothing'} in int8 the mAP50 drop is {current:.2f}); raise "
                        "deploy.int8_max_drop or set deploy.int8_float32: score_layers")
    for g in sorted(chosen, key=lambda g: (*cost[g], order.index(g))):
        fewer = [x for x in chosen if x != g]
        d = drop(frozenset(fewer))
        if d <= max_drop:
            chosen, current = fewer, d
            steps.append({"action": "remove", "group": g, "float32_groups": chosen, "drop": d})
    return {"float32_groups": chosen, "drop": current, "max_drop": max_drop, "steps": steps}


def groups_of_nodes(groups: dict[str, list[str]], names: Iterable[str]) -> list[str]:
    """The groups holding any of the node ``names`` (the score layers' groups: auto's start)."""
    names = set(names)
    return [g for g, members in groups.items() if names & set(members)]
