"""Rule cmb_spectra_grid: camb C_ell on a grid over the blind prior, and the interpolator's error on the patch."""

import json
import logging

from simobs.io import atomic_path, write_text_atomic
from simobs.separation.blind import make_spectra_grid
from simobs.tracking import job_run

p = snakemake.params
out = snakemake.output
log = logging.getLogger("cmb_spectra_grid")
with job_run(snakemake, params={**p.settings, "prior": p.prior, "cosmology": p.cosmology}) as run:
    metrics, table = make_spectra_grid(
        out.grid, lower=[p.prior["H0"][0], p.prior["ombh2"][0]], upper=[p.prior["H0"][1], p.prior["ombh2"][1]],
        n_grid=[p.settings["n_H0"], p.settings["n_ombh2"]], cosmology=p.cosmology, npix=p.npix,
        pixel_size_arcmin=p.pixel_size_arcmin, n_heldout=p.settings["n_heldout"], seed=p.seed,
        on_point=lambda i, j: log.info("camb at grid point (%d, %d)", i, j),
    )
    with atomic_path(out.heldout) as tmp:
        table.to_csv(tmp, index=False)
    write_text_atomic(out.metrics, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    run.log_metrics(metrics)
    run.log_table(table, "tables/cmb_spectra_grid_heldout.csv")
    run.log_artifact(out.metrics)
