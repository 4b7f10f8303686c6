"""Rule evaluate_separation: diffusion posterior vs truth and vs the Wiener filter; metrics and figures."""

import json

from simobs.io import atomic_path, write_text_atomic
from simobs.separation.dataset import read_field_dataset, read_posterior_shards
from simobs.separation.evaluate import GaussianBaseline, evaluate_separation
from simobs.separation.sde import LinearBetaSchedule
from simobs.tracking import job_run

out = snakemake.output
p = snakemake.params
baseline = GaussianBaseline(LinearBetaSchedule(p.sde["beta_min"], p.sde["beta_max"]), p.sampling["n_steps"],
                            p.sampling["time_power"], p.seed, p.sampling["batch_size"])
with job_run(snakemake) as run:
    fields = read_field_dataset(snakemake.input.fields)
    indices, summary = read_posterior_shards(list(snakemake.input.posteriors))
    result = evaluate_separation(fields, indices, summary, n_examples=p.settings["n_examples"],
                                 baseline=baseline)
    write_text_atomic(out.metrics, json.dumps(result.metrics, indent=2, sort_keys=True) + "\n")
    run.log_metrics(result.metrics)
    tables = {"dust_power_spectra.csv": out.dust_spectra, "cmb_power_spectra.csv": out.cmb_spectra,
              "coverage.csv": out.coverage_table}
    for name, path in tables.items():
        with atomic_path(path) as tmp:
            result.tables[name].to_csv(tmp, index=False)
        run.log_artifact(path, "tables")
    figures = {"dust_examples.png": out.dust_examples, "cmb_examples.png": out.cmb_examples,
               "power_spectra.png": out.power_spectra, "cross_correlation.png": out.cross_correlation,
               "coverage.png": out.coverage}
    for name, path in figures.items():
        with atomic_path(path) as tmp:
            result.figures[name].savefig(tmp, dpi=110)
        run.log_artifact(path, "figures")
    run.log_artifact(out.metrics)
