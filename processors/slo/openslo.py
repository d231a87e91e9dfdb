"""Objectives from OpenSLO v1 files (https://openslo.com), for the `slo` processor.

Supported: ``kind: SLO`` documents with an inline ``indicator`` whose ``ratioMetric`` names one of
this pipeline's SLIs through ``metricSource: {type: agent-sre, spec: {sli: NAME}}`` (on ``good`` and
``total`` alike: an agent-sre SLI is already a good/total pair), rolling ``timeWindow``,
``budgetingMethod: Occurrences``, and ``objectives[].target`` (or ``targetPercent``); each objective
becomes one of ours (named ``metadata.name``, or ``metadata.name/objectives[i].displayName`` when
there are several).  Documents of other kinds in the file are skipped.

Not supported, and refused with the reason: ``indicatorRef`` (put the SLI inline),
``thresholdMetric`` and ``rawMetric`` indicators, metric sources other than ``agent-sre``,
calendar-aligned windows (``isRolling: false``), ``Timeslices`` and ``RatioTimeslices`` budgeting,
and more than one time window.  ``alertPolicies`` are ignored: the processor's burn-rate rules apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class OpenSloError(ValueError):
    pass


def load_openslo(path: str | Path) -> list[dict[str, Any]]:
    """Objective settings (name, sli, target, window) from one OpenSLO file."""
    p = Path(path)
    try:
        docs = list(yaml.safe_load_all(p.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise OpenSloError(f"{p}: cannot read OpenSLO file: {exc}") from exc
    out: list[dict[str, Any]] = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or doc.get("kind") != "SLO":
            continue
        where = f"{p} (document {i + 1})"
        if doc.get("apiVersion") != "openslo/v1":
            raise OpenSloError(f"{where}: apiVersion must be openslo/v1, got {doc.get('apiVersion')!r}")
        out += _slo(doc, where)
    if not out:
        raise OpenSloError(f"{p}: no 'kind: SLO' document")
    return out


def _slo(doc: dict, where: str) -> list[dict[str, Any]]:
    name = (doc.get("metadata") or {}).get("name")
    spec = doc.get("spec") or {}
    if not name:
        raise OpenSloError(f"{where}: metadata.name is required")
    where = f"{where} SLO {name!r}"
    if "indicatorRef" in spec:
        raise OpenSloError(f"{where}: indicatorRef is not supported; put the indicator inline")
    method = spec.get("budgetingMethod", "Occurrences")
    if method != "Occurrences":
        raise OpenSloError(f"{where}: budgetingMethod {method!r} is not supported (only Occurrences)")
    windows = spec.get("timeWindow") or []
    if len(windows) != 1:
        raise OpenSloError(f"{where}: exactly one timeWindow is supported, got {len(windows)}")
    if not windows[0].get("isRolling", False):
        raise OpenSloError(f"{where}: calendar-aligned windows are not supported (use isRolling: true)")
    sli = _indicator(spec.get("indicator") or {}, where)
    objectives = spec.get("objectives") or []
    if not objectives:
        raise OpenSloError(f"{where}: objectives must name at least one target")
    out = []
    for k, obj in enumerate(objectives):
        target = obj.get("target")
        if target is None and obj.get("targetPercent") is not None:
            target = float(obj["targetPercent"]) / 100
        if target is None:
            raise OpenSloError(f"{where}: objectives[{k}] needs target or targetPercent")
        label = name if len(objectives) == 1 else f"{name}/{obj.get('displayName') or k}"
        out.append({"name": label, "sli": sli, "target": float(target), "window": windows[0]["duration"]})
    return out


def _indicator(indicator: dict, where: str) -> str:
    spec = indicator.get("spec") or {}
    for unsupported in ("thresholdMetric", "rawMetric"):
        if unsupported in spec:
            raise OpenSloError(f"{where}: {unsupported} indicators are not supported (use ratioMetric)")
    ratio = spec.get("ratioMetric")
    if not isinstance(ratio, dict):
        raise OpenSloError(f"{where}: indicator.spec.ratioMetric is required")
    names = set()
    for part in ("good", "total"):
        source = ((ratio.get(part) or {}).get("metricSource")) or {}
        if source.get("type") != "agent-sre":
            raise OpenSloError(f"{where}: ratioMetric.{part}.metricSource.type must be agent-sre, "
                               f"got {source.get('type')!r}")
        names.add((source.get("spec") or {}).get("sli"))
    if len(names) != 1 or None in names:
        raise OpenSloError(f"{where}: good and total must name the same SLI (metricSource.spec.sli)")
    return names.pop()
