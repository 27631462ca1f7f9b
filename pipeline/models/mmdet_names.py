"""Explicit state-dict name mapping between our detectors and MMDetection 3.3.

Why: the paper's models were MMDetection models; the fixtures under
``shared/fixtures/mmdet`` list MMDetection's names, and MMDetection checkpoints (or golden
tensors) must load into our modules and vice versa.

The mapping is a list of :class:`NameRule` per detector (:data:`DETECTOR_RULES`). A rule
rewrites a name *prefix*; the rest of the name is kept. The first rule whose pattern
matches the start of a name wins, so put more specific rules before general ones.

Current rules and the facts behind them:

* ``backbone.*`` -> ``backbone.*`` (identity). :class:`~pipeline.models.backbone.ResNetBackbone`
  keeps torchvision's attribute names ``conv1``, ``bn1``, ``layer{1-4}.{j}.conv{1-3}``,
  ``layer{1-4}.{j}.bn{1-3}``, ``layer{1-4}.0.downsample.{0,1}``, which are MMDetection's
  ResNet names too (MMDetection's ``norm1``/``norm2`` are properties over ``bn1``/``bn2``).
* ``neck.*`` -> ``neck.*`` (identity). :class:`~pipeline.models.fpn.FPN` uses MMDetection's
  ``lateral_convs.{i}.conv`` / ``fpn_convs.{i}.conv`` layout.
* GFL: ``head.*`` -> ``bbox_head.*`` (same inner names: ``cls_convs.{i}.conv``,
  ``cls_convs.{i}.gn``, ``reg_convs.{i}.conv``, ``reg_convs.{i}.gn``, ``gfl_cls``, ``gfl_reg``,
  ``scales.{i}.scale``, buffer ``integral.project``).
* Faster R-CNN: our RPN lives at ``head.rpn.*`` and the second stage at ``head.roi_head.*``;
  MMDetection's at ``rpn_head.*`` (``rpn_conv``, ``rpn_cls``, ``rpn_reg``) and
  ``roi_head.bbox_head.*`` (``shared_fcs.{0,1}``, ``fc_cls``, ``fc_reg``). Names map one to
  one and no tensor needs reordering: the background logit is ``fc_cls``'s last row in both,
  and ``fc_reg`` has no background row in both.

Rules: ``ours`` is a
regular expression matched at the start of our name; ``mmdet`` the MMDetection prefix
(an ``re`` replacement template, so ``\\1`` may refer to groups of ``ours``). For the
reverse direction a rule whose ``ours`` is a plain escaped literal is inverted
automatically; otherwise give ``mmdet_regex`` (matched at the start of an MMDetection
name) and ``ours_template`` explicitly.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

__all__ = [
    "NameRule",
    "BACKBONE_NECK_RULES",
    "DETECTOR_RULES",
    "to_mmdet_name",
    "from_mmdet_name",
    "to_mmdet_state_dict",
    "from_mmdet_state_dict",
    "mmdet_names",
]


class NameRule(NamedTuple):
    """One prefix rewrite between our names and MMDetection's.

    Attributes:
        ours: regex matched at the start of our name, e.g. ``r"head\\."``.
        mmdet: replacement for the matched prefix, e.g. ``"bbox_head."``.
        mmdet_regex: regex matched at the start of an MMDetection name for the reverse
            direction; default ``re.escape(mmdet)``.
        ours_template: replacement for the reverse direction; default: ``ours`` unescaped
            (only allowed when ``ours`` is a plain escaped literal).
    """

    ours: str
    mmdet: str
    mmdet_regex: str | None = None
    ours_template: str | None = None

    def forward(self, name: str) -> str | None:
        """Our name -> MMDetection's, or None when the rule does not apply."""
        match = re.match(self.ours, name)
        return None if match is None else match.expand(self.mmdet) + name[match.end():]

    def backward(self, name: str) -> str | None:
        """MMDetection's name -> ours, or None when the rule does not apply."""
        pattern = self.mmdet_regex if self.mmdet_regex is not None else re.escape(self.mmdet)
        match = re.match(pattern, name)
        if match is None:
            return None
        template = self.ours_template
        if template is None:
            literal = re.sub(r"\\(.)", r"\1", self.ours)
            if re.escape(literal) != self.ours:
                raise ValueError(
                    f"NameRule {self.ours!r} is not a plain literal prefix: give mmdet_regex and "
                    "ours_template for the reverse direction"
                )
            return literal + name[match.end():]
        return match.expand(template) + name[match.end():]


#: Rules shared by every detector (backbone and neck names are identical).
BACKBONE_NECK_RULES: list[NameRule] = [
    NameRule(r"backbone\.", "backbone."),
    NameRule(r"neck\.", "neck."),
]

#: Per detector, the rules tried in order (first match wins).
DETECTOR_RULES: dict[str, list[NameRule]] = {
    "gfl": [
        *BACKBONE_NECK_RULES,
        NameRule(r"head\.", "bbox_head."),
    ],
    "faster_rcnn": [
        *BACKBONE_NECK_RULES,
        # torchvision's RPNHead / TwoMLPHead / our predictor -> mmdet's RPNHead / Shared2FCBBoxHead
        NameRule(r"head\.rpn\.head\.conv\.0\.0\.", "rpn_head.rpn_conv."),
        NameRule(r"head\.rpn\.head\.cls_logits\.", "rpn_head.rpn_cls."),
        NameRule(r"head\.rpn\.head\.bbox_pred\.", "rpn_head.rpn_reg."),
        NameRule(r"head\.roi_head\.box_head\.fc6\.", "roi_head.bbox_head.shared_fcs.0."),
        NameRule(r"head\.roi_head\.box_head\.fc7\.", "roi_head.bbox_head.shared_fcs.1."),
        NameRule(r"head\.roi_head\.box_predictor\.cls_score\.", "roi_head.bbox_head.fc_cls."),
        NameRule(r"head\.roi_head\.box_predictor\.bbox_pred\.", "roi_head.bbox_head.fc_reg."),
    ],
}


def _rules(detector: str | None) -> list[NameRule]:
    if detector is None:  # every known rule, each once, in declaration order
        seen: list[NameRule] = []
        for rules in DETECTOR_RULES.values():
            seen.extend(rule for rule in rules if rule not in seen)
        return seen
    if detector not in DETECTOR_RULES:
        raise ValueError(f"unknown detector {detector!r}; known: {sorted(DETECTOR_RULES)}")
    return DETECTOR_RULES[detector]


def to_mmdet_name(name: str, detector: str | None = None) -> str:
    """Our state-dict name -> MMDetection's.

    Args:
        name: e.g. ``"neck.fpn_convs.3.conv.weight"`` or ``"head.gfl_reg.bias"``.
        detector: ``"gfl"`` / ``"faster_rcnn"``; ``None`` tries the rules of all detectors
            (fine for ``backbone.*`` / ``neck.*``, which are shared).

    Raises:
        KeyError: no rule covers ``name``.
    """
    for rule in _rules(detector):
        mapped = rule.forward(name)
        if mapped is not None:
            return mapped
    raise KeyError(f"no MMDetection name rule for {name!r} (detector={detector!r})")


def from_mmdet_name(name: str, detector: str | None = None) -> str:
    """MMDetection's state-dict name -> ours (inverse of :func:`to_mmdet_name`).

    Raises:
        KeyError: no rule covers ``name``.
    """
    for rule in _rules(detector):
        mapped = rule.backward(name)
        if mapped is not None:
            return mapped
    raise KeyError(f"no rule maps MMDetection name {name!r} to ours (detector={detector!r})")


def _convert(state: Mapping[str, Any], convert: Any, detector: str | None, strict: bool,
             what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        try:
            new_key = convert(key, detector)
        except KeyError:
            unmapped.append(key)
            continue
        if new_key in out:
            raise ValueError(f"{what}: two names map to {new_key!r}")
        out[new_key] = value
    if unmapped and strict:
        shown = ", ".join(unmapped[:3]) + (", ..." if len(unmapped) > 3 else "")
        raise ValueError(f"{what}: {len(unmapped)} names have no rule (detector={detector!r}): {shown}")
    return out


def from_mmdet_state_dict(sd: Mapping[str, Any], detector: str | None = None,
                          strict: bool = True) -> dict[str, Any]:
    """Rename an MMDetection state dict (``backbone.*``, ``neck.*``, ``bbox_head.*``...) to ours.

    Args:
        sd: MMDetection names -> tensors. A full checkpoint's ``{"state_dict": ...}``
            wrapper is unwrapped. A sub-module's state dict (e.g. only the neck, with keys
            ``lateral_convs.0.conv.weight``) must be prefixed by the caller first.
        detector: see :func:`to_mmdet_name`.
        strict: raise ValueError when some names have no rule; otherwise drop them.

    Returns:
        A new dict with our names and the same values (tensors are not copied).
    """
    if isinstance(sd.get("state_dict"), Mapping):
        sd = sd["state_dict"]
    return _convert(sd, from_mmdet_name, detector, strict, "from_mmdet_state_dict")


def to_mmdet_state_dict(sd: Mapping[str, Any], detector: str | None = None,
                        strict: bool = True) -> dict[str, Any]:
    """Rename our state dict to MMDetection's names (inverse of :func:`from_mmdet_state_dict`)."""
    return _convert(sd, to_mmdet_name, detector, strict, "to_mmdet_state_dict")


def mmdet_names(names: Iterable[str], detector: str | None = None) -> list[str]:
    """Map many of our names at once (convenience for comparisons with the fixtures)."""
    return [to_mmdet_name(name, detector) for name in names]
