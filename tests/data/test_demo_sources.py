"""Every demo source of the shipped config is generated in the layout its config entry names.

The rule script passes `demo_source_settings` to `generate_from_settings` unchanged, so this
is the path `make demo` takes (a dropped `layout` once wrote the TNG-layout model as cubes).
"""

from __future__ import annotations

import glob
import os

import pytest
import yaml

from simobs.config import demo_source_settings
from simobs.data.demo_universe import generate_from_settings
from tests.conftest import REPO

CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())


@pytest.mark.parametrize("source", [s["name"] for s in CONFIG["sources"] if s.get("demo_model")])
def test_demo_source_is_written_where_its_config_entry_looks(source, tmp_path):
    entry = next(s for s in CONFIG["sources"] if s["name"] == source)
    settings = {**demo_source_settings(CONFIG, source), "n_galaxies": 3, "n_projections": 1}
    out = tmp_path / "data/demo" / source
    generate_from_settings(out, source=source, **settings)
    pattern = str(tmp_path / entry["path"])
    files = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    if entry["layout"] == "sdss_frames":
        assert files and all(os.path.basename(p).startswith("frame-") for p in files)
        assert (tmp_path / entry["catalogue"]["path"]).is_file()
    else:
        assert len(files) == 3, (entry["layout"], sorted(os.listdir(out))[:5])
