"""The model file's content digest (``model_digest``): stable, sensitive to one weight,
checked at load time, and refusing weights of another architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from simobs.embedding.checkpoint import load_model, model_digest, save_model
from simobs.embedding.model import KSparseVAE, VAEArchitecture

ARCH = VAEArchitecture(bands=3, image_size=16, width=8, depth=2, max_width=16, latent_dim=32, k=4)


def _model(seed: int = 0) -> KSparseVAE:
    torch.manual_seed(seed)
    return KSparseVAE(ARCH)


def test_model_digest_is_stable_and_changes_with_one_weight(tmp_path: Path) -> None:
    model = _model()
    digest = model_digest(model.state_dict(), ARCH.to_dict())
    assert len(digest) == 64
    assert model_digest(_model().state_dict(), ARCH.to_dict()) == digest  # same weights, same digest
    reordered = dict(reversed(list(model.state_dict().items())))
    assert model_digest(reordered, ARCH.to_dict()) == digest  # key order does not matter
    save_model(tmp_path / "model.pt", model, alpha=1.0, beta=0.1)
    _, info = load_model(tmp_path / "model.pt")
    assert info["model_digest"] == digest  # recomputed at load time from the weights read
    _, again = load_model(tmp_path / "model.pt")
    assert again["model_digest"] == digest

    name, param = next(iter(model.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] += 1e-6  # one weight, by a tiny amount
    assert model_digest(model.state_dict(), ARCH.to_dict()) != digest, name
    assert model_digest(_model(seed=1).state_dict(), ARCH.to_dict()) != digest
    other = {**ARCH.to_dict(), "k": 5}  # same tensors, another architecture record
    assert model_digest(_model().state_dict(), other) != digest


def test_a_model_file_altered_after_saving_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_model(path, _model(), alpha=1.0, beta=0.1)
    payload = torch.load(path, weights_only=True)
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key].view(-1)[0] += 1.0
    torch.save(payload, path)
    with pytest.raises(ValueError, match="altered after train_embedding wrote it"):
        load_model(path)
    del payload["model_digest"]  # a file from before the digest was stored: computed, accepted
    torch.save(payload, path)
    _, info = load_model(path)
    assert info["model_digest"] == model_digest(payload["state_dict"], payload["architecture"])


def test_weights_of_another_architecture_are_refused_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_model(path, _model(), alpha=1.0, beta=0.1)
    payload = torch.load(path, weights_only=True)
    payload["architecture"]["latent_dim"] = 64  # the record of another model
    payload.pop("model_digest")
    torch.save(payload, path)
    with pytest.raises(ValueError, match="do not fit the architecture it records") as err:
        load_model(path)
    assert "'latent_dim': 64" in str(err.value) and "size mismatch" in str(err.value)
