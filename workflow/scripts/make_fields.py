"""Rule make_fields: CMB (camb) and dust maps, train/test split, observations y = dust + sigma * cmb."""

from simobs.separation.dataset import FieldSettings, make_field_dataset, read_field_dataset
from simobs.separation.figures import fields_overview_figure
from simobs.io import atomic_path
from simobs.tracking import job_run

p = snakemake.params
out = snakemake.output
settings = FieldSettings.from_mapping({**p.settings, "seed": p.seed})

with job_run(snakemake) as run:
    summary = make_field_dataset(settings, out.fields, rejected_path=out.rejected, on_bad_file=p.on_bad_file,
                                 max_rejected_fraction=p.max_rejected_fraction)
    run.log_metrics(summary)
    if summary["n_rejected_dust_files"]:
        run.log_artifact(out.rejected, "manifests")
    fields = read_field_dataset(out.fields, with_train=False)
    fig = fields_overview_figure(fields)
    with atomic_path(out.overview) as tmp:
        fig.savefig(tmp, dpi=110)
    run.log_artifact(out.overview, "figures")
    run.log_input_dataset(out.fields, "separation-fields", context="output")
