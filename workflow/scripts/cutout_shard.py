"""Rule cutout_shard: cut one slice of the plan's rows into a prepared shard."""

from simobs.data.cutouts import cut_source_shard
from simobs.tracking import job_run

p = snakemake.params
with job_run(snakemake, params={"catalogue": p.source["catalogue"], "n_shards": p.n_shards}) as run:
    stats = cut_source_shard(p.source, p.image_size, plan=snakemake.input.plan, shard=int(snakemake.wildcards.shard),
                             n_shards=p.n_shards, out=snakemake.output.shard, manifest=snakemake.output.manifest)
    run.log_metrics(stats)
