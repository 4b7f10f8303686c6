# Configuration checks and the small helpers the rule files share.
# Logic lives in src/simobs; keep this file short.

import re
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# Let the workflow find the library even where it is not installed (e.g. a fresh clone
# on a cluster login node); rule environments install it from envs/*.yaml.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from simobs.config import (  # noqa: E402
    ConfigError,
    canonical_config,
    check_sources,
    demo_source_settings,
    explain_schema_errors,
    merge_extra_sources,
)
from simobs.data.ingest import files_fingerprint  # noqa: E402

SCHEMA = Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"

merge_extra_sources(config)  # sources added by a --configfile overlay
try:
    validate(config, str(SCHEMA))
except WorkflowError:
    raise WorkflowError(explain_schema_errors(config, yaml.safe_load(SCHEMA.read_text())) or "invalid config")
try:
    check_sources(config)
except ConfigError as exc:
    raise WorkflowError(f"Invalid configuration: {exc}")

# Sort every mapping's keys: Snakemake compares `params` as written, so the same settings
# in another key order (another config file, a YAML dump) would otherwise rerun jobs.
_canonical = canonical_config(config)
config.clear()
config.update(_canonical)

SOURCES = {s["name"]: s for s in config["sources"]}
OBSERVATIONS = [n for n, s in SOURCES.items() if s["kind"] == "observation"]

# Scheduling priorities along the critical path: when jobs compete for cores (a
# workstation, or a cluster's queue limit), Snakemake starts the higher ones first.
# 3: the observations' chain up to the VAE (every comparison waits for the embedding);
# 2: the score model's training (long and independent: start it early);
# 1: the simulations and the comparison stages; 0 (the rest: the separate shards, the
# UMAP projection, the evaluation, the summary) fills the gaps.  On 2 cores the other orders were measured
# 15.5-19 minutes for the demo (`make demo`, README "Two commands").
PRIORITY_VAE_CHAIN, PRIORITY_SCORE_MODEL, PRIORITY_IMAGES = 3, 2, 1


def source_priority(wildcards):
    return PRIORITY_VAE_CHAIN if wildcards.source in OBSERVATIONS else PRIORITY_IMAGES
SIMULATIONS = [n for n, s in SOURCES.items() if s["kind"] == "simulation"]
DEMO_SOURCES = [n for n, s in SOURCES.items() if s.get("demo_model")]

# Final targets; each stage's rule file extends this list.
TARGETS = []

CPU_ENV = "../../envs/simobs-cpu.yaml"
GPU_ENV = "../../envs/simobs-gpu.yaml"


wildcard_constraints:
    source="|".join(map(re.escape, SOURCES)) if SOURCES else "NONE",
    shard=r"\d+",


def demo_source_input(w):
    # generated (demo) sources depend on their generation job; real ones on nothing
    return [f"data/demo/{w.source}"] if w.source in DEMO_SOURCES else []


def n_shards(name):
    return int(SOURCES[name].get("shards") or config["ingest"]["shards"])


# Sources a pre-ingestion stage prepares (realism, cutouts): source -> template of its
# prepared shards (docs/contracts.md, "Prepared shards").  A stage's rule file registers
# its sources with register_prepared(); ingest_shard then reads the prepared shard (and
# its .rejected.tsv and .run_id) instead of the raw files.  Plain sources have no entry.
PREPARED_SHARDS = {}


def register_prepared(stage, sources):
    for name in sources:
        PREPARED_SHARDS[name] = f"results/{stage}/{{source}}/{{shard}}"


def prepared_shard(source):
    """Path template (no suffix) of a source's prepared shards; "" for a plain source."""
    return PREPARED_SHARDS.get(source, "")


def ingest_shard_input(w):
    """The file index for a plain source; the prepared shard for one a stage prepares."""
    stem = prepared_shard(w.source).format(source=w.source, shard=w.shard)
    if stem:
        return {"prepared": f"{stem}.h5", "prepared_manifest": f"{stem}.rejected.tsv", "prepared_run": f"{stem}.run_id"}
    return {"index": f"results/datasets/index/{w.source}.files.txt", "index_run": f"results/datasets/index/{w.source}.run_id"}


def start_tracking_invocation():
    from simobs.tracking import start_invocation

    start_invocation(config, repo=workflow.basedir)


def end_tracking_invocation(success):
    from simobs.tracking import end_invocation

    end_invocation(config, success=success)
