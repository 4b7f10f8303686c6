"""Rule frame_index: the WCS footprint of every frame of a source, from the headers."""

from simobs.data.cutouts import write_frame_index
from simobs.tracking import job_run

p = snakemake.params
with job_run(snakemake, params={"pattern": p.pattern, "bands": p.bands}) as run:
    run.log_metrics({"n_frames": write_frame_index(p.pattern, p.bands, snakemake.output.index)})
