"""Rule make_demo_source: render one demo source with GalSim (in the layout its config entry names)."""

from simobs.data.demo_universe import generate_from_settings
from simobs.tracking import job_run

settings = dict(snakemake.params.settings)
with job_run(snakemake, params=settings) as run:
    truth = generate_from_settings(snakemake.output[0], source=snakemake.wildcards.source, **settings)
    run.log_metrics({"n_images": len(truth), "n_galaxies": truth["galaxy_id"].nunique()})
    run.log_artifact(f"{snakemake.output[0]}/truth.csv", "truth")
