"""Rule realism: make one shard of a simulation source's idealised mocks survey-like."""

from simobs.data.realism_stage import realism_figure, realism_shard
from simobs.tracking import job_run

p = snakemake.params
with job_run(snakemake, params={"source": p.source, "ingest": p.settings, "seed": p.seed}) as run:
    result = realism_shard(p.source, p.settings, seed=p.seed, index=snakemake.input.index,
                           shard=int(snakemake.wildcards.shard), n_shards=p.n_shards,
                           out=snakemake.output.shard, manifest=snakemake.output.manifest)
    run.log_metrics({"n_files": result.n_files, "n_images": result.n_images, "n_rejected": result.n_rejected})
    if result.example is not None and snakemake.wildcards.shard == "0":
        fig = realism_figure(*result.example, title=f"{snakemake.wildcards.source}: first image of shard 0")
        run.log_figure(fig, "figures/realism-example.png")
