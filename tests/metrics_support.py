"""A ``GET /metrics`` page read with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample_key(name: str, labels: dict[str, str]) -> str:
    """``name{a="x",b="y"}`` (labels in the page's order), or ``name`` when it has none."""
    return name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")


def parse_metrics(text: str) -> dict[str, float]:
    """Every sample of an exposition-format page: ``{'name{labels}': value}``."""
    return {
        sample_key(s.name, s.labels): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


def metric_families(text: str) -> dict[str, tuple[str, set[str]]]:
    """Family name → (type, label names its samples carry, ``le`` included)."""
    return {
        family.name: (family.type, {label for s in family.samples for label in s.labels})
        for family in text_string_to_metric_families(text)
    }
