"""`fusionrank config show`: the effective merged settings, each value with the file it
came from (the last layer that sets it; `default` when no file does), and the digest
every run logs and records (`config_digest` in each stage's run record)."""

from __future__ import annotations

import json
from typing import Any

from fusionrank.core.config import Settings, _has_key


def _leaves(node: Any, prefix: tuple = ()):
    if isinstance(node, dict) and node:
        for key in sorted(node):
            yield from _leaves(node[key], prefix + (key,))
    else:
        yield prefix, node


def effective_values(settings: Settings) -> list[tuple[str, Any, str]]:
    """[(dotted key, value, source)] for every leaf of the effective settings."""
    layers = settings._layers or []
    rows = []
    for loc, value in _leaves(settings.model_dump(mode="json")):
        source = "default"
        for path, data in reversed(layers):
            # A whole mapping replaced by a layer counts for every key under it.
            if any(_has_key(data, loc[:n]) and not isinstance(_value_at(data, loc[:n]), dict)
                   for n in range(1, len(loc))) or _has_key(data, loc):
                source = str(path)
                break
        rows.append((".".join(str(p) for p in loc), value, source))
    return rows


def _value_at(data: Any, loc: tuple) -> Any:
    for part in loc:
        data = data[part]
    return data


def render(settings: Settings) -> str:
    rows = effective_values(settings)
    width = max(len(key) for key, _, _ in rows)
    lines = [
        f"# effective configuration, digest {settings.digest()}",
        f"# layers (later wins): {' + '.join(settings.source_files) or '(defaults only)'}",
        f"# project root (relative paths resolve from it): {settings.project_root}",
    ]
    for key, value, source in rows:
        lines.append(f"{key:<{width}} = {json.dumps(value)}  # {source}")
    return "\n".join(lines)
