# The demo universe: GalSim-rendered observations and mock simulations (see
# src/simobs/data/demo_universe.py).  Only sources with a `demo_model` key are generated.


rule make_demo_source:
    output:
        directory("data/demo/{source}"),
        run_id="results/demo/{source}.run_id",
    log:
        "results/logs/make_demo_source/{source}.log",
    benchmark:
        "results/benchmarks/make_demo_source/{source}.tsv"
    params:
        settings=lambda w: demo_source_settings(config, w.source),
    threads: lambda w: config["demo"]["workers"]
    priority: source_priority
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        CPU_ENV
    script:
        "../scripts/make_demo_source.py"

