"""The embedding stage: a k-sparse VAE trained on observed images (Zhou et al. 2025).

Modules: :mod:`~simobs.embedding.model` (the network, top-k mask, ELBO),
:mod:`~simobs.embedding.data` (chunk-aligned HDF5 loading),
:mod:`~simobs.embedding.train` (training with checkpoints and early stopping),
:mod:`~simobs.embedding.encode` (embeddings of a source),
:mod:`~simobs.embedding.traversal` (what a latent looks like),
:mod:`~simobs.embedding.figures` (diagnostic figures).
"""

from simobs.embedding.checkpoint import load_model, save_model
from simobs.embedding.encode import embed_dataset, encode_images
from simobs.embedding.model import KSparseVAE, VAEArchitecture, loss_terms, gaussian_kl, top_k_mask
from simobs.embedding.settings import EmbeddingSettings
from simobs.embedding.train import TrainingResult, train_embedding
from simobs.embedding.traversal import decode_latent_traversal, most_used_latents

__all__ = [
    "EmbeddingSettings",
    "KSparseVAE",
    "TrainingResult",
    "VAEArchitecture",
    "decode_latent_traversal",
    "loss_terms",
    "embed_dataset",
    "encode_images",
    "gaussian_kl",
    "load_model",
    "most_used_latents",
    "save_model",
    "top_k_mask",
    "train_embedding",
]
