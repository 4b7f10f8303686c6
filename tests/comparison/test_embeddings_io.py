"""Reading the embed stage's files (docs/contracts.md) and the stages' tables:
vae_split, the typicality_loss rename, non-finite embeddings, ids as strings (issue #13)."""

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import make_universe, write_embedding_file
from simobs.comparison.embeddings import read_embeddings
from simobs.stagekit import read_table


def test_round_trip_keeps_vae_split_and_typicality_loss(tmp_path):
    sets = make_universe(seed=0, n_galaxies=5, n_obs=20)
    obs = sets[-1]
    back = read_embeddings(write_embedding_file(obs, tmp_path / "obs.h5"))
    assert list(back.vae_split) == list(obs.vae_split)
    np.testing.assert_allclose(back.typicality_loss, obs.typicality_loss, rtol=1e-6)
    assert np.array_equal(back.unseen_by_vae, np.asarray(obs.vae_split) != "train")


def _drop(path, name):
    with h5py.File(path, "a") as f:
        del f[name]


def test_files_without_vae_split(tmp_path):
    sets = make_universe(seed=0, n_galaxies=5, n_obs=20)
    sim = write_embedding_file(sets[0], tmp_path / "m0.h5")
    obs = write_embedding_file(sets[-1], tmp_path / "obs.h5")
    _drop(sim, "vae_split")
    _drop(obs, "vae_split")
    assert set(read_embeddings(sim).vae_split) == {"unused"}  # the VAE never sees simulations
    with pytest.raises(ValueError, match=r"obs\.h5.*vae_split.*rerun"):
        read_embeddings(obs)


def test_non_finite_embedding_and_bad_split_fail_loudly(tmp_path):
    s = make_universe(seed=0, n_galaxies=5, n_obs=20)[-1]
    s.embedding[3, 1] = np.nan
    with pytest.raises(ValueError, match="o0003"):
        read_embeddings(write_embedding_file(s, tmp_path / "a.h5"))
    s.embedding[3, 1] = 0.0
    s.vae_split[0] = "training"
    with pytest.raises(ValueError, match="training"):
        read_embeddings(write_embedding_file(s, tmp_path / "b.h5"))


def test_zero_padded_ids_survive_tables(tmp_path):
    p = tmp_path / "t.csv"
    pd.DataFrame({"source": ["a", "a"], "id": ["007", "010"], "galaxy_id": ["0001", "0002"], "x": [1.0, np.nan]}).to_csv(
        p, index=False)
    t = read_table(p, ["id"])
    assert t["id"].tolist() == ["007", "010"] and t["galaxy_id"].tolist() == ["0001", "0002"]
    assert np.isnan(t["x"].iloc[1])
    with pytest.raises(ValueError, match="lacks column.*split.*rerun rule `train_classifier`"):
        read_table(p, ["split"], "predictions", "train_classifier")
