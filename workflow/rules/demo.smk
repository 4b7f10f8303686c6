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
        settings=lambda w: demo_settings(w.source),
    threads: lambda w: config["demo"]["workers"]
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        CPU_ENV
    script:
        "../scripts/make_demo_source.py"


def demo_settings(name):
    """Everything that determines a demo source's files (so a change reruns it)."""
    src, demo = SOURCES[name], config["demo"]
    if name not in DEMO_SOURCES:
        raise WorkflowError(f"source {name!r} has no demo_model; its files are not generated")
    observed = src["demo_model"] == "observed"
    return {
        "kind": src["kind"],
        "model": demo["observed_from"] if observed else src["demo_model"],
        "n_galaxies": demo["n_observed"] if observed else demo["n_galaxies_per_model"],
        "n_projections": 1 if observed else demo["n_projections"],
        "seed": source_seed(name),
        "image_size": config["ingest"]["image_size"][0],
        "pixel_scale": src.get("pixel_scale", 0.396),
        "seeing_fwhm": demo["seeing_fwhm"],
        "noise_scale": demo["noise_scale"],
        "band_order": src.get("cube_band_order") or src["bands"],
        "integer": (not observed) and src["demo_model"] in demo["integer_models"],
        "workers": demo["workers"],
    }
