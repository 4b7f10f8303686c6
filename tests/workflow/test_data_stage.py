"""The data stage through Snakemake itself: demo universe, sharded ingestion, MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import REPO, TINY_CONFIG, copy_study, run_snakemake

pytestmark = pytest.mark.slow

TINY = yaml.safe_load(TINY_CONFIG.read_text())
CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())
SOURCES = [s["name"] for s in CONFIG["sources"]]
REALISM = [s["name"] for s in CONFIG["sources"] if s.get("realism") is not None]
# The observed survey is cut from SDSS-like frames: 3 of the demo's 5 edge-case catalogue
# rows leave some band's frames and one lies off every frame (simobs.data.demo_frames).
N_OFF_FRAME = 4
N_OBSERVED = TINY["demo"]["n_observed"] - N_OFF_FRAME


def job_runs(workdir: Path):
    c = MlflowClient(f"sqlite:///{workdir}/results/tracking/mlflow.db")
    exp = c.get_experiment_by_name(TINY["study"])
    return c, c.search_runs([exp.experiment_id], max_results=5000)


def test_datasets_carry_their_provenance(tiny_study):
    w = tiny_study.workdir
    for name in SOURCES:
        with h5py.File(w / f"results/datasets/{name}.h5") as h5:
            kind = "observation" if name == "sdss_demo" else "simulation"
            n = N_OBSERVED if kind == "observation" else (
                TINY["demo"]["n_galaxies_per_model"] * TINY["demo"]["n_projections"])
            assert h5["images"].shape == (n, 3, 64, 64) and h5["images"].dtype == "float32"
            assert h5.attrs["source"] == name and h5.attrs["kind"] == kind
            assert json.loads(h5.attrs["bands"]) == ["g", "r", "i"]
            assert json.loads(h5.attrs["normalisation"])["method"] == "asinh"
            ids, gids = h5["ids"].asstr()[:], h5["galaxy_ids"].asstr()[:]
            assert len(set(ids)) == n
            if kind == "simulation" and name in REALISM:
                # TNG SKIRT layout: one image per subhalo, ids from the file names, realism recorded
                assert len(set(gids)) == n and set(h5["projection_ids"][:]) == {-1}
                assert h5["ivar"].shape == h5["images"].shape
                seeing = h5["params/seeing_fwhm_r"][:]
                assert seeing.shape == (n,) and 1.0 < seeing.mean() < 1.7  # SDSS r: 1.356 +- 0.221
                assert (h5["params/pixel_scale_arcsec"][:] == 0.396).all()
            elif kind == "simulation":
                assert len(set(gids)) == TINY["demo"]["n_galaxies_per_model"]
                assert set(h5["projection_ids"][:]) == set(range(TINY["demo"]["n_projections"]))
        manifest = pd.read_csv(w / f"results/datasets/{name}.rejected.tsv", sep="\t")
        assert list(manifest.columns) == ["file", "code", "reason"]
        assert manifest.empty if kind == "simulation" else len(manifest) == N_OFF_FRAME
    truth = pd.read_csv(w / "data/demo/sdss_demo/truth.csv")
    assert (truth["model"] == CONFIG["demo"]["observed_from"]).all() and len(truth) == TINY["demo"]["n_observed"]


def test_observed_survey_is_cut_from_frames_and_a_catalogue(tiny_study):
    """The demo's observed source: frames + catalogue -> cutouts -> the dataset; rejections by id."""
    from astropy.table import Table

    w = tiny_study.workdir
    frames = sorted((w / "data/demo/sdss_demo/frames/756/3").glob("frame-*.fits"))
    assert frames and {f.name.split("-")[1] for f in frames} == {"g", "r", "i"}
    cat = Table.read(w / "data/demo/sdss_demo/catalogue.fits").to_pandas()
    edge = cat["objid"].astype(str).tolist()[-5:]  # the 5 edge cases; the 4th one fits
    manifest = pd.read_csv(w / "results/datasets/sdss_demo.rejected.tsv", sep="\t")
    assert sorted(manifest["file"].str.split("id=").str[1]) == sorted(edge[:3] + edge[4:])
    assert set(manifest["code"]) == {"off_frame"}
    assert manifest["reason"].str.contains("outside every frame").sum() == 1
    with h5py.File(w / "results/datasets/sdss_demo.h5") as h5:
        ids = set(h5["ids"].asstr()[:])
    assert ids == set(cat["objid"].astype(str)) - set(edge[:3] + edge[4:])
    plan = pd.read_csv(w / "results/cutouts/sdss_demo/plan.tsv", sep="\t", dtype=str, keep_default_na=False)
    # rows sorted by their first band's frame (run, camcol, field: a shard needs few frames)
    kept = plan["code"] == ""
    assert plan["frame_g"][kept].is_monotonic_increasing
    # galaxies just past a field boundary are cut from the neighbouring field's frame
    kept = plan[kept]
    frame_field = kept["frame_r"].str.extract(r"-(\d{4})\.fits$")[0].astype(int)
    assert ((frame_field - kept["field"].astype(int)).abs() == 1).sum() > 0


def test_one_mlflow_run_per_job_with_its_tags(tiny_study):
    w = tiny_study.workdir
    counts = tiny_study.job_counts()
    assert counts, "could not read Snakemake's job stats"
    _, runs = job_runs(w)
    # the summary job's run is tagged as the study's summary, not as an ordinary job
    jobs = [r for r in runs if r.data.tags.get("simobs.kind") in ("job", "summary")]
    invocations = [r for r in runs if r.data.tags.get("simobs.kind") == "invocation"]
    expected = sum(n for rule, n in counts.items() if rule != "all")
    assert len(jobs) == expected
    assert len(invocations) == 1 and invocations[0].info.status == "FINISHED"
    by_rule = pd.Series([r.data.tags["simobs.rule"] for r in jobs]).value_counts().to_dict()
    assert {k: by_rule.get(k) for k in counts if k != "all"} == {k: v for k, v in counts.items() if k != "all"}
    for r in jobs:
        t = r.data.tags
        assert r.info.status == "FINISHED"
        assert t["mlflow.parentRunId"] == invocations[0].info.run_id
        assert len(t["mlflow.source.git.commit"]) == 40 and t["simobs.git_dirty"] in ("true", "false")
        for key in ("simobs.config_digest", "simobs.input_digests", "host", "simobs.version", "simobs.wildcards"):
            assert key in t
    merges = {r.data.tags["wildcard.source"]: r for r in jobs if r.data.tags["simobs.rule"] == "ingest_merge"}
    assert set(merges) == set(SOURCES)
    m = merges["sdss_demo"]
    assert m.data.metrics["n_images"] == N_OBSERVED
    assert len(m.data.tags["simobs.parent_runs"].split(",")) == TINY["ingest"]["shards"]
    assert m.inputs.dataset_inputs and m.inputs.dataset_inputs[0].dataset.digest


def test_job_runs_carry_the_lineage_digests_of_their_artefacts(tiny_study):
    """One VAE and one classifier made every number: their digests tag the runs that used them."""
    w = tiny_study.workdir
    _, runs = job_runs(w)
    by_rule: dict[str, list] = {}
    for r in runs:
        by_rule.setdefault(r.data.tags.get("simobs.rule", ""), []).append(r)
    with h5py.File(w / "results/embeddings/sdss_demo.h5") as f:
        vae = str(f.attrs["vae_digest"])
    classifier = json.loads((w / "results/classifier/classifier.json").read_text())["digest"]
    assert len(vae) == 64 and len(classifier) == 64
    for rule in ("train_embedding", "embed", "train_classifier", "ood_scores", "model_posterior", "misspecification"):
        assert by_rule.get(rule), rule
        assert {r.data.tags.get("simobs.vae_digest") for r in by_rule[rule]} == {vae}, rule
    for rule in ("train_classifier", "classifier_replicates", "ood_scores", "model_posterior"):
        assert {r.data.tags.get("simobs.classifier_digest") for r in by_rule[rule]} == {classifier}, rule
    predictions = pd.read_csv(w / "results/classifier/heldout_predictions.csv")
    assert set(predictions["classifier_digest"]) == {classifier}


def test_dry_run_after_success_has_nothing_to_do(tiny_study):
    res = run_snakemake(tiny_study.workdir, "-n")
    assert res.returncode == 0 and "Nothing to be done" in res.output


@pytest.fixture(scope="module")
def corrupted(tiny_study, tmp_path_factory):
    """A copy of the tiny study with one simulated FITS cube truncated (per-file ingestion)."""
    work = copy_study(tiny_study.workdir, tmp_path_factory.mktemp("corrupt") / "study")
    victim = sorted((work / "data/demo/fiducial").glob("*.fits"))[7]
    raw = victim.read_bytes()
    victim.write_bytes(raw[:1000])
    return work, victim


def test_corrupt_file_under_skip_is_listed_in_the_manifest(corrupted):
    work, victim = corrupted
    res = run_snakemake(work, "--forcerun", "index_source", "--until", "ingest_merge")
    assert res.returncode == 0, res.output[-3000:]
    manifest = pd.read_csv(work / "results/datasets/fiducial.rejected.tsv", sep="\t")
    assert manifest["file"].tolist() == [f"data/demo/fiducial/{victim.name}"]
    assert manifest["code"][0] in ("unreadable", "wrong_shape")
    with h5py.File(work / "results/datasets/fiducial.h5") as h5:
        assert h5["images"].shape[0] == TINY["demo"]["n_galaxies_per_model"] * TINY["demo"]["n_projections"] - 1
        assert h5.attrs["n_rejected"] == 1
    _, runs = job_runs(work)
    latest = max((r for r in runs if r.data.tags.get("simobs.rule") == "ingest_merge"
                  and r.data.tags.get("wildcard.source") == "fiducial"), key=lambda r: r.info.start_time)
    assert latest.data.metrics["n_rejected"] == 1


def test_corrupt_file_under_fail_stops_the_job_naming_it(corrupted, tmp_path):
    work, victim = corrupted
    strict = tmp_path / "strict.yaml"
    strict.write_text("ingest:\n  on_bad_file: fail\n")
    res = run_snakemake(work, "--forcerun", "index_source", "--until", "ingest_merge",
                        configfiles=(TINY_CONFIG, strict))
    assert res.returncode != 0
    assert f"{victim.name} rejected: " in res.output or victim.name in _logs(work)
    # The shard holding the bad file (file 7 of 160 is in shard 0) left nothing behind,
    # not even a temporary file.
    shard_dir = work / "results/datasets/shards/fiducial"
    assert not (shard_dir / "0.h5").exists() and not list(shard_dir.glob(".0.h5*"))


def _logs(work: Path) -> str:
    return "\n".join(p.read_text() for p in (work / "results/logs/ingest_shard").glob("fiducial.*.log"))


def test_corrupt_frame_stops_the_frame_index_naming_it(tiny_study, tmp_path):
    work = copy_study(tiny_study.workdir, tmp_path / "study")
    victim = sorted((work / "data/demo/sdss_demo/frames/756/3").glob("frame-i-*.fits"))[0]
    victim.write_bytes(victim.read_bytes()[:1000])
    res = run_snakemake(work, "--forcerun", "frame_index", "--until", "cutout_plan")
    assert res.returncode != 0
    log = (work / "results/logs/frame_index/sdss_demo.log").read_text()
    assert f"frame data/demo/sdss_demo/frames/756/3/{victim.name}: not a readable FITS file" in res.output + log


def test_bad_config_fails_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ingest:\n  shards: two\n")
    res = run_snakemake(tmp_path, "-n", configfiles=(TINY_CONFIG, bad))
    assert res.returncode != 0
    assert "ingest.shards: 'two' should be of type integer" in res.output
    assert not (tmp_path / "results").exists()


def test_all_files_rejected_keeps_the_reasons_where_the_message_says(tmp_path):
    """Snakemake deletes a failed merge's outputs; the manifest the error names must survive."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        (raw / f"galaxy{i}.fits").write_text("not a FITS file\n")
    cfg = tmp_path / "junk.yaml"
    cfg.write_text(yaml.safe_dump({"study": "junk", "tracking": {"enabled": False}, "sources": [
        {"name": "junk", "kind": "observation", "path": "raw/*.fits", "layout": "mef", "bands": ["g", "r", "i"]}]}))
    res = run_snakemake(tmp_path, "results/datasets/junk.h5", configfiles=(cfg,))
    assert res.returncode != 0
    named = "results/logs/ingest_merge/junk.rejected.tsv"
    assert f"none of its 3 files could be ingested; the reasons (unreadable: 3) are in {named}" in res.output
    manifest = pd.read_csv(tmp_path / named, sep="\t")
    assert sorted(manifest["file"]) == [f"raw/galaxy{i}.fits" for i in range(3)]
    assert (manifest["code"] == "unreadable").all()
    assert "rejected files of source 'junk' by reason: unreadable: 3" in (tmp_path / "results/logs/ingest_merge/junk.log").read_text()
    assert not (tmp_path / "results/datasets/junk.h5").exists()
