"""The demo's TNG-SKIRT-layout model: idealised files as the TNG data release serves them."""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from simobs.data.demo_skirt import write_tng_skirt_source
from simobs.data.formats import SourceLayout, read_images
from simobs.data.realism import TNG_FLUXMAG0


def test_demo_writes_idealised_tng_files_with_ids_only_in_names(tmp_path):
    truth = write_tng_skirt_source(tmp_path / "compact", source="compact", model="compact", n_galaxies=3,
                                   n_projections=2, seed=5)
    files = sorted((tmp_path / "compact").glob("broadband_*.fits"))
    assert len(files) == 6 == len(truth) and truth["image_id"].is_unique
    sizes = set()
    for path in files:
        with fits.open(path) as h:
            assert len(h) == 1 and h[0].header["BITPIX"] == -32 and h[0].data.shape[0] == 4
            hd = h[0].header
            assert [hd[f"FILTER{k}"] for k in range(4)] == ["sloan/sdss_g", "sloan/sdss_r", "sloan/sdss_i",
                                                            "sloan/sdss_z"]
            assert hd["BUNIT"] == "counts/s/pixel" and hd["CTYPE1"] == "pc" and hd["PIXSCALE"] == 0.396
            assert not {"OBJID", "GALID", "PROJ"} & set(hd)
            assert (h[0].data >= 0).all()  # no noise
            sizes.add(h[0].data.shape[-1])
    assert len(sizes) > 1 and min(sizes) >= 32  # the field of view follows the galaxy
    layout = SourceLayout(layout="skirt_tng", bands=("g", "r", "i"), image_shape=(64, 64), id_key=None,
                          id_pattern=r"broadband_(?P<galaxy>\d+)\.fits")
    row = truth.iloc[0]
    (img,) = read_images(tmp_path / "compact" / row["file"], layout)
    assert img.image_id == row["image_id"] and img.redshift == row["redshift"]
    flux_r = img.pixels[1].sum() / TNG_FLUXMAG0["r"] * 1e9  # back to nanomaggies
    assert 0.85 * row["flux_r"] < flux_r <= 1.001 * row["flux_r"]  # light beyond 15 r_e is not in the file
