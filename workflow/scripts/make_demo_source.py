"""Rule make_demo_source: render one demo source with GalSim."""

from simobs.data.demo_frames import generate_frames_from_settings
from simobs.data.demo_universe import generate_from_settings
from simobs.tracking import job_run

settings = dict(snakemake.params.settings)
# observed surveys of layout sdss_frames are generated as SDSS frames + a catalogue
generate = generate_frames_from_settings if settings.pop("layout") == "sdss_frames" else generate_from_settings
with job_run(snakemake, params=settings) as run:
    truth = generate(snakemake.output[0], source=snakemake.wildcards.source, **settings)
    run.log_metrics({"n_images": len(truth), "n_galaxies": truth["galaxy_id"].nunique()})
    run.log_artifact(f"{snakemake.output[0]}/truth.csv", "truth")
