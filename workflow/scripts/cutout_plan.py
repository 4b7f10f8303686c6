"""Rule cutout_plan: catalogue rows -> one frame per band (or a rejection), sorted by field."""

from simobs.data.cutouts import write_cutout_plan
from simobs.tracking import job_run

p = snakemake.params
with job_run(snakemake, params={"catalogue": p.source["catalogue"], "image_size": p.image_size}) as run:
    plan = write_cutout_plan(p.source, p.image_size, index=snakemake.input.index, out=snakemake.output.plan)
    run.log_metrics({"n_rows": len(plan), **{f"rejected.{c}": int(n) for c, n in plan["code"][plan["code"] != ""].value_counts().items()}})
