# simobs: compare galaxy-formation simulations with observations using generative models.
#
#   snakemake --cores all                 run the study in config/config.yaml locally
#   snakemake --profile slurm             run it on a SLURM cluster (README: "Running on a SLURM cluster")
#   snakemake --report results/report.zip the self-contained report
#
# This file is a table of contents: configuration, validation, the stages, the targets.

import os
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# Jobs inherit this process's environment.  Where PYTHONDONTWRITEBYTECODE is set, each job
# would recompile every module it imports (6.5 s of a 10.8 s ingest job, measured): let
# them cache bytecode like any Python process (Makefile, "--no-compile").
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


# The study config; `--configfile other.yaml` is merged on top of it.
configfile: Path(workflow.basedir) / "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/realism.smk"
include: "workflow/rules/cutouts.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/embedding.smk"
include: "workflow/rules/comparison.smk"
include: "workflow/rules/separation.smk"
include: "workflow/rules/blind.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        TARGETS,


# Opt-in, not in TARGETS: blind separation by Gibbs diffusion (workflow/rules/blind.smk).
rule blind:
    input:
        rules.evaluate_blind.output,


onstart:
    start_tracking_invocation()


onsuccess:
    end_tracking_invocation(success=True)


onerror:
    end_tracking_invocation(success=False)
