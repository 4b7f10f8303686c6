"""The schema's defaults of ``separation`` are the shipped config's values (a config without them runs the demo)."""

from __future__ import annotations

import yaml

from tests.conftest import REPO


def _defaults(schema: dict, prefix: str = ""):
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        if sub.get("type") == "object" and "properties" in sub:
            yield from _defaults(sub, path)
        elif "default" in sub:
            yield path, sub["default"]


def test_separation_schema_defaults_equal_the_shipped_config() -> None:
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    checked, differ = 0, []
    for path, default in _defaults(schema["properties"]["separation"]):
        value = config["separation"]
        for part in path.split("."):
            value = value[part]
        checked += 1
        if value != default:
            differ.append(f"separation.{path}: schema {default!r}, config {value!r}")
    assert checked > 30 and not differ, differ
