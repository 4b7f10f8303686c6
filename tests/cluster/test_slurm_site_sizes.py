"""The site file sizes any rule (`rules:` in slurm/site.yaml): rendering, checks, a real job.

Nodes with less memory than a rule declares (`project` and `train_classifier` ask for
16000 MB) or shorter time limits: the site file sets the rule's resources instead of
the user having to know `--set-resources`.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from slurm_helpers import REPO, submitted_job_ids
from test_slurm_profile import GPU_RULES, render


def test_rules_section_sizes_any_rule_and_wins_over_gpu_settings(monkeypatch, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("gpu_runtime: 600\nthreads: 16\nrules:\n"
                    "  project: {mem_mb: 12000, runtime: 90}\n"
                    "  train_classifier: {mem_mb: 12000, threads: 4}\n"
                    "  train_embedding: {runtime: 1d, constraint: a100_80g}\n")
    prof = render(monkeypatch, REPO, site)  # from the repository root: rule names are checked
    res, threads = set(prof["set-resources"]), set(prof["set-threads"])
    assert {"project:mem_mb=12000", "project:runtime=90", "train_classifier:mem_mb=12000"} <= res
    assert "train_embedding:runtime=1d" in res and "train_embedding:runtime=600" not in res
    assert "train_embedding:constraint=a100_80g" in res and "train_embedding:slurm_partition=gpu" in res
    assert "embed:runtime=600" in res  # the other GPU rules keep the GPU settings
    assert "train_classifier=4" in threads and "misspecification=16" in threads
    assert not any(v.startswith("train_classifier:threads") for v in res)
    for rule in GPU_RULES:
        assert f"{rule}:gpu=1" in res


@pytest.mark.parametrize("text, message", [
    ("rules:\n  projcet: {mem_mb: 1}\n", r"site\.yaml: rules: unknown rule 'projcet'.*'project'"),
    ("rules:\n  project: 8000\n", r"site\.yaml: rules: project: expected a mapping"),
    ("rules:\n  project: {mem_mb: [1]}\n", r"site\.yaml: rules: project: bad resource\(s\) \['mem_mb'\]"),
    ("rules: [project]\n", r"site\.yaml: rules: expected a mapping"),
])
def test_rules_section_errors_name_file_rule_and_key(monkeypatch, tmp_path, text, message):
    site = tmp_path / "site.yaml"
    site.write_text(text)
    with pytest.raises(Exception, match=message):
        render(monkeypatch, REPO, site)


def test_shipped_files_size_no_rule(monkeypatch, tmp_path):
    default = render(monkeypatch, REPO, site=None)
    assert not any(v.startswith("project:") for v in default["set-resources"])


def test_command_line_set_resources_replaces_the_gpu_routing(monkeypatch, tmp_path):
    """Why the docs send users to the site file: `--set-resources` on the command line
    replaces the profile's mapping whole, GPU rules included."""
    from snakemake.cli import get_argument_parser

    from slurm_helpers import PROJECT_PROFILE

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SIMOBS_SLURM_SITE", raising=False)
    args = get_argument_parser(profiles=[str(PROJECT_PROFILE)]).parse_args(
        ["--set-resources", "project:mem_mb=12000"])
    assert set(args.set_resources) == {"project"}


BIG_RULE = """
rule project:
    output: "p.txt"
    resources: mem_mb=16000000, runtime=600
    shell: "echo done > {output}"
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_site_file_shrinks_a_rule_too_big_for_the_node(slurm_cluster, tmp_path):
    """A rule asking for more memory than the node has runs once the site file sizes it."""
    (tmp_path / "Snakefile").write_text(BIG_RULE)
    site = tmp_path / "site.yaml"
    site.write_text((REPO / "tests/cluster/profile/site.yaml").read_text()
                    + "rules:\n  project: {mem_mb: 600, runtime: 7}\n")
    cluster = replace(slurm_cluster, env={**slurm_cluster.env, "SIMOBS_SLURM_SITE": str(site)})
    res = cluster.run_snakemake(tmp_path)
    assert res.returncode == 0, res.stdout[-4000:]
    (job,) = submitted_job_ids(res.stdout)
    rows = cluster.wait_for_sacct([job])
    # sacct is the record of what SLURM allocated (the executor plugin drops SLURM_* inside jobs)
    assert rows[job]["State"] == "COMPLETED" and "mem=600M" in rows[job]["AllocTRES"], rows[job]
    assert (tmp_path / "p.txt").read_text().strip() == "done"
