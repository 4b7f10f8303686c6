# Cutouts from SDSS corrected frames + a galaxy catalogue (sources with layout: sdss_frames).
# Per source: one frame index (headers only), one plan (catalogue rows -> frames, sorted
# by field), n shard jobs over the plan's rows; their prepared shards feed ingest_shard.
# A dry run reads neither frames nor catalogue.

register_prepared("cutouts", [n for n, s in SOURCES.items() if s["layout"] == "sdss_frames"])


rule frame_index:
    input:
        demo_source_input,
    output:
        index="results/cutouts/{source}/frames.tsv",
        run_id="results/cutouts/{source}/frames.run_id",
    log:
        "results/logs/frame_index/{source}.log",
    params:
        pattern=lambda w: SOURCES[w.source]["path"],
        bands=lambda w: SOURCES[w.source]["bands"],
        # changes when frames are added or removed: reindexes (a listing, no file is opened)
        fingerprint=lambda w: "" if w.source in DEMO_SOURCES else files_fingerprint(SOURCES[w.source]["path"]),
    priority: PRIORITY_VAE_CHAIN
    resources:
        mem_mb=1000,
        runtime=60,
    conda:
        CPU_ENV
    script:
        "../scripts/frame_index.py"


rule cutout_plan:
    input:
        demo_source_input,
        index="results/cutouts/{source}/frames.tsv",
        index_run="results/cutouts/{source}/frames.run_id",
        catalogue=lambda w: [] if w.source in DEMO_SOURCES else [SOURCES[w.source]["catalogue"]["path"]],
    output:
        plan="results/cutouts/{source}/plan.tsv",
        run_id="results/cutouts/{source}/plan.run_id",
    log:
        "results/logs/cutout_plan/{source}.log",
    benchmark:
        "results/benchmarks/cutout_plan/{source}.tsv"
    params:
        source=lambda w: SOURCES[w.source],
        image_size=config["ingest"]["image_size"],
    priority: PRIORITY_VAE_CHAIN
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        CPU_ENV
    script:
        "../scripts/cutout_plan.py"


rule cutout_shard:
    input:
        plan="results/cutouts/{source}/plan.tsv",
        plan_run="results/cutouts/{source}/plan.run_id",
    output:
        shard="results/cutouts/{source}/{shard}.h5",
        manifest="results/cutouts/{source}/{shard}.rejected.tsv",
        run_id="results/cutouts/{source}/{shard}.run_id",
    log:
        "results/logs/cutout_shard/{source}.{shard}.log",
    benchmark:
        "results/benchmarks/cutout_shard/{source}.{shard}.tsv"
    params:
        source=lambda w: SOURCES[w.source],
        image_size=config["ingest"]["image_size"],
        n_shards=lambda w: n_shards(w.source),
    priority: PRIORITY_VAE_CHAIN
    resources:
        mem_mb=3000,
        runtime=240,
    conda:
        CPU_ENV
    script:
        "../scripts/cutout_shard.py"
