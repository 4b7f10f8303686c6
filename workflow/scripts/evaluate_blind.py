"""Rule evaluate_blind: convergence (R-hat, ESS), SBC ranks and posterior widths of the blind chains; figures."""

import json

from simobs.io import atomic_path, write_text_atomic
from simobs.separation.blind import blind_figures, evaluate_blind, read_blind_shards, read_observations
from simobs.tracking import job_run

out = snakemake.output
s = snakemake.params.settings
with job_run(snakemake) as run:
    obs = read_observations(snakemake.input.observations)
    shard = read_blind_shards(list(snakemake.input.chains))
    result = evaluate_blind(obs, shard, thin=s["sbc_thin"], n_bins=s["sbc_bins"])
    write_text_atomic(out.metrics, json.dumps(result.metrics, indent=2, sort_keys=True) + "\n")
    run.log_metrics(result.metrics)
    table = result.tables["blind_observations.csv"]
    with atomic_path(out.table) as tmp:
        table.to_csv(tmp, index=False)
    run.log_table(table, "tables/blind_observations.csv")
    figures = blind_figures(obs, shard, result, n_corner=s["n_corner"], thin=s["sbc_thin"], n_bins=s["sbc_bins"])
    for name, path in (("blind_traces.png", out.traces), ("blind_corner.png", out.corner),
                       ("sbc_ranks.png", out.ranks)):
        with atomic_path(path) as tmp:
            figures[name].savefig(tmp, dpi=110)
        run.log_figure(figures[name], f"figures/{name}")
    run.log_artifact(out.metrics)
