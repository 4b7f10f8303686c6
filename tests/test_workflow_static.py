"""Static checks of the workflow: lint-clean, every rule has an environment that agrees with pyproject."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.conftest import REPO

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# pyproject name -> conda-forge name in each environment
CONDA_NAMES = {
    "simobs-cpu.yaml": {"torch": "pytorch"},
    "simobs-gpu.yaml": {"torch": "pytorch-gpu"},
}
# Needed by the process that runs Snakemake, not inside the rules' environments.
DRIVER_ONLY = {"snakemake", "snakemake-executor-plugin-slurm"}


def test_snakemake_lint_is_clean():
    proc = subprocess.run([SNAKEMAKE, "--lint", "json", "--cores", "1"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    lints = json.loads(proc.stdout) if proc.stdout.strip() else {}
    problems = [lint for group in lints.values() for entry in group for lint in entry.get("lints", [entry])]
    assert proc.returncode == 0 and not problems, proc.stdout[-4000:] + proc.stderr[-2000:]


def rule_envs() -> dict[str, str | None]:
    """Each rule's conda environment, read from the rule files (rule name -> env or None)."""
    envs: dict[str, str | None] = {}
    for smk in sorted((REPO / "workflow/rules").glob("*.smk")):
        text = smk.read_text()
        for match in re.finditer(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", text, re.M):
            body = match.group(2)
            env = re.search(r"^\s+conda:\s*\n?\s*(\S+)", body, re.M)
            envs[match.group(1)] = env.group(1) if env else None
    return envs


def test_every_rule_that_runs_code_names_an_environment():
    envs = rule_envs()
    assert len(envs) > 10
    missing = [rule for rule, env in envs.items() if env is None]
    assert missing == [], f"rules without conda: {missing}"
    assert {env for env in envs.values()} <= {"CPU_ENV", "GPU_ENV"}


def pyproject_requirements() -> dict[str, Requirement]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = [Requirement(r) for r in data["project"]["dependencies"]]
    return {r.name.lower(): r for r in reqs if r.name.lower() not in DRIVER_ONLY}


def env_requirements(path: Path) -> dict[str, str]:
    """name -> version specifier of an environment file (conda and pip entries)."""
    spec = yaml.safe_load(path.read_text())
    out: dict[str, str] = {}
    for dep in spec["dependencies"]:
        entries = dep["pip"] if isinstance(dep, dict) else [dep]
        for entry in entries:
            if entry.startswith("-"):
                continue
            m = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", entry)
            name, version = m.group(1).lower(), m.group(2).strip()
            if not isinstance(dep, dict) and re.match(r"^=[^=]", version):
                version = "=" + version  # conda's name=1.2 means ==1.2.*; compare as ==
            out[name] = version
    return out


@pytest.mark.parametrize("env_file", sorted(CONDA_NAMES))
def test_environment_agrees_with_pyproject(env_file):
    env = env_requirements(REPO / "envs" / env_file)
    rename = CONDA_NAMES[env_file]
    for name, req in pyproject_requirements().items():
        conda_name = rename.get(name, name)
        assert conda_name in env, f"envs/{env_file} lacks {conda_name} (pyproject: {req})"
        assert env[conda_name].replace(" ", "") == str(req.specifier).replace(" ", ""), (
            f"envs/{env_file}: {conda_name}{env[conda_name]} disagrees with pyproject {req}")
    assert "-e .." in yaml.safe_load((REPO / "envs" / env_file).read_text())["dependencies"][-1]["pip"]
