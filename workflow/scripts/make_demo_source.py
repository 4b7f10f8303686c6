"""Rule make_demo_source: render one demo source with GalSim."""

from simobs.data.demo_universe import generate_from_settings
from simobs.tracking import job_run

with job_run(snakemake) as run:
    truth = generate_from_settings(snakemake.output[0], source=snakemake.wildcards.source, **snakemake.params.settings)
    run.log_metrics({"n_images": len(truth), "n_galaxies": truth["galaxy_id"].nunique()})
    run.log_artifact(f"{snakemake.output[0]}/truth.csv", "truth")
