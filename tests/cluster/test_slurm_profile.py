"""The project's SLURM profile (slurm/config.yaml) and its layering; no cluster needed.

The profile is a YTE template that reads the site file named by SIMOBS_SLURM_SITE (or
slurm/site.yaml); these tests render it the way Snakemake does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from snakemake.cli import get_argument_parser
from snakemake.profiles import ProfileConfigFileParser

from slurm_helpers import PROJECT_PROFILE, TEST_PROFILE, TEST_SITE

GPU_RULES = ("train_embedding", "train_score_model", "embed", "separate", "train_blind_score_model", "blind_separate")


def render(monkeypatch: pytest.MonkeyPatch, cwd: Path, site: Path | None) -> dict:
    """The profile as Snakemake's parser turns it into command-line values."""
    monkeypatch.chdir(cwd)
    if site is None:
        monkeypatch.delenv("SIMOBS_SLURM_SITE", raising=False)
    else:
        monkeypatch.setenv("SIMOBS_SLURM_SITE", str(site))
    with open(PROJECT_PROFILE / "config.yaml") as fh:
        return dict(ProfileConfigFileParser().parse(fh))


def test_defaults_route_gpu_rules_to_gpu_partition(monkeypatch, tmp_path):
    prof = render(monkeypatch, tmp_path, site=None)
    assert prof["executor"] == "slurm"
    assert prof["slurm-status-command"] == "squeue"
    # No account and no CPU partition by default: the plugin and SLURM choose.
    assert not any(v.startswith(("slurm_account=", "slurm_partition="))
                   for v in prof["default-resources"])
    for rule in GPU_RULES:
        assert f"{rule}:slurm_partition=gpu" in prof["set-resources"]
        assert f"{rule}:gpu=1" in prof["set-resources"]
        assert f"{rule}=8" in prof["set-threads"]
    # GPU model, memory and run time stay the rules' own unless the site sets them.
    assert not any(k in v for v in prof["set-resources"]
                   for k in (":gpu_model=", ":mem_mb=", ":runtime="))
    # A seeded UMAP must stay single-threaded.
    assert not any(v.startswith("project=") for v in prof["set-threads"])
    assert "slurm-qos" not in prof


def test_site_file_sets_account_partitions_model_and_limits(monkeypatch, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("account: astro42\npartition: compute\ngpu_partition: a100q\n"
                    "gpu_model: a100\ngpu_runtime: 12h\nthreads: 16\nqos: long\njobs: 7\n")
    prof = render(monkeypatch, tmp_path, site)
    assert "slurm_account=astro42" in prof["default-resources"]
    assert "slurm_partition=compute" in prof["default-resources"]
    assert "train_embedding:slurm_partition=a100q" in prof["set-resources"]
    assert "separate:gpu_model=a100" in prof["set-resources"]
    assert "embed:runtime=12h" in prof["set-resources"]
    # The account reaches the GPU rules through default-resources.
    assert not any(":slurm_account=" in v for v in prof["set-resources"])
    assert "train_classifier=16" in prof["set-threads"]
    assert prof["slurm-qos"] == "long"
    assert prof["jobs"] == "7"


def test_repo_site_yaml_is_read_from_working_directory(monkeypatch, tmp_path):
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "site.yaml").write_text("account: fromrepo\n")
    prof = render(monkeypatch, tmp_path, site=None)
    assert "slurm_account=fromrepo" in prof["default-resources"]


def test_unknown_site_key_names_file_and_valid_keys(monkeypatch, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("acount: typo\n")
    with pytest.raises(Exception, match=r"site\.yaml: unknown key\(s\) \['acount'\].*account"):
        render(monkeypatch, tmp_path, site)


def test_missing_site_file_is_an_error(monkeypatch, tmp_path):
    with pytest.raises(Exception, match="SIMOBS_SLURM_SITE=.*does not exist"):
        render(monkeypatch, tmp_path, tmp_path / "nope.yaml")


def test_example_site_file_is_valid_and_equals_defaults(monkeypatch, tmp_path):
    example = render(monkeypatch, tmp_path, PROJECT_PROFILE / "site.example.yaml")
    default = render(monkeypatch, tmp_path, site=None)
    assert example == default


def test_second_profile_replaces_top_level_keys(monkeypatch, tmp_path):
    """`--profile slurm --profile tests/cluster/profile`: later top-level keys win."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIMOBS_SLURM_SITE", str(TEST_SITE))
    args = get_argument_parser(profiles=[str(PROJECT_PROFILE), str(TEST_PROFILE)]).parse_args([])
    assert args.executor == "slurm"  # from the project profile
    assert args.slurm_status_command == "squeue"  # from the project profile
    assert args.keep_going is False  # replaced by the test layer
    assert args.slurm_init_seconds_before_status_checks == 2
    assert args.max_threads == 2
    assert args.jobs == 4  # from the test site file
    assert set(args.set_resources) == set(GPU_RULES)


def test_every_rule_of_the_gpu_environment_is_a_gpu_rule_of_the_profile() -> None:
    """A rule declared with `conda: GPU_ENV` gets the GPU partition and a GPU on a cluster."""
    import re

    rules_dir = Path(__file__).resolve().parents[2] / "workflow" / "rules"
    gpu = set()
    for smk in rules_dir.glob("*.smk"):
        for block in re.split(r"\n(?=rule |checkpoint )", smk.read_text()):
            m = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if m and re.search(r"conda:\s*\n\s*GPU_ENV", block):
                gpu.add(m.group(1))
    assert gpu == set(GPU_RULES)
