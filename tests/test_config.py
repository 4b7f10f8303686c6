"""Configuration checks: one clear message naming the key, before any job runs."""

from __future__ import annotations

import copy

import pytest
import yaml

from simobs.config import ConfigError, check_sources, explain_schema_errors
from tests.conftest import REPO

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())


def test_shipped_config_is_valid():
    assert explain_schema_errors(CONFIG, SCHEMA) is None
    check_sources(CONFIG, base=REPO)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["sources"][0].__setitem__("shards", "two"), "sources[0].shards: 'two' should be of type integer"),
        (lambda c: c["ingest"].__setitem__("on_bad_fle", "skip"), "ingest: Additional properties are not allowed"),
        (lambda c: c["sources"][1].pop("kind"), "sources[1]: 'kind' is a required property"),
        (lambda c: c["sources"][0].__setitem__("kind", "mock"), "sources[0].kind: 'mock' is not one of"),
        (lambda c: c.pop("study"), "(top level): 'study' is a required property"),
    ],
)
def test_schema_errors_name_the_key(edit, message):
    config = copy.deepcopy(CONFIG)
    edit(config)
    text = explain_schema_errors(config, SCHEMA, "config/config.yaml")
    assert text is not None and message in text


def test_unknown_key_lists_the_allowed_ones():
    config = copy.deepcopy(CONFIG)
    config["ingest"]["on_bad_fle"] = "skip"
    assert "allowed keys here: chunk_images, image_size, max_rejected_fraction" in explain_schema_errors(config, SCHEMA)


def test_source_path_matching_nothing_is_named(tmp_path):
    config = copy.deepcopy(CONFIG)
    src = config["sources"][1]
    src.pop("demo_model")
    src["path"] = "data/nowhere/*.fits"
    with pytest.raises(ConfigError, match=r"sources\[1\] \(fiducial\)\.path: 'data/nowhere/\*\.fits' matches no file"):
        check_sources(config, base=tmp_path)


def test_cross_source_checks():
    config = copy.deepcopy(CONFIG)
    config["sources"][2]["name"] = "fiducial"
    with pytest.raises(ConfigError, match=r"name\(s\) \['fiducial'\] appear more than once"):
        check_sources(config)
    config = copy.deepcopy(CONFIG)
    config["sources"][1].pop("galaxy_key")
    with pytest.raises(ConfigError, match="galaxy_key: simulations need"):
        check_sources(config)
    config = copy.deepcopy(CONFIG)
    config["sources"][3]["cube_band_order"] = ["i", "r"]
    with pytest.raises(ConfigError, match=r"bands \['g'\] are not in cube_band_order"):
        check_sources(config)


def test_a_simulation_may_take_its_galaxy_id_from_the_file_name():
    config = copy.deepcopy(CONFIG)
    sim = config["sources"][1]
    sim.pop("galaxy_key")
    sim["id_pattern"] = r"broadband_(?P<galaxy>\d+)\.fits"
    check_sources(config)
    sim["id_pattern"] = r"broadband_(\d+)\.fits"
    with pytest.raises(ConfigError, match=r"sources\[1\] \(fiducial\)\.id_pattern: .* needs a named group"):
        check_sources(config)
    sim["id_pattern"] = r"broadband_(?P<galaxy>\d+"
    with pytest.raises(ConfigError, match=r"id_pattern: .* is not a regular expression"):
        check_sources(config)


def test_canonical_config_sorts_keys_but_keeps_list_order():
    from simobs.config import canonical_config

    a = {"b": 1, "a": {"d": [{"y": 1, "x": 2}, 3], "c": 0}}
    out = canonical_config(a)
    assert list(out) == ["a", "b"] and list(out["a"]) == ["c", "d"]
    assert list(out["a"]["d"][0]) == ["x", "y"] and out["a"]["d"][1] == 3
    assert out == a


def test_zhou2025_rgb_example_is_a_valid_study_config():
    """config/examples/zhou2025-rgb.yaml passes the schema and every cross-source check but the files'."""
    import yaml

    from simobs.config import explain_schema_errors

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    example = yaml.safe_load((REPO / "config/examples/zhou2025-rgb.yaml").read_text())
    config = {**CONFIG, **example}
    assert explain_schema_errors(config, schema) is None
    with pytest.raises(ConfigError, match=r"sources\[0\] \(sdss_skyserver\)\.path: 'data/skyserver/\*\.jpg' matches no file"):
        check_sources(config)
    config["ingest"] = {**config["ingest"], "normalisation": {"method": "asinh"}}
    with pytest.raises(ConfigError, match="8-bit RGB cutouts are already colour-stretched; set ingest.normalisation.method: lupton_rgb"):
        check_sources(config)


def test_sdss_frames_source_needs_a_catalogue():
    config = copy.deepcopy(CONFIG)
    config["sources"][0].pop("catalogue")
    with pytest.raises(ConfigError, match=r"sources\[0\] \(sdss_demo\)\.catalogue: layout 'sdss_frames'"):
        check_sources(config)
