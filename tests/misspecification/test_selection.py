"""Issue #13 defect 2: the OOD selection must not bias the aggregate posterior.

(a) The k-NN reference is balanced over models, so with a 10:1 imbalance the held-out
pass rates of two equally shaped models agree (a pooled reference gives the larger model
the denser reference: ~0.98 against ~0.92).
(b) The truncated likelihood's selection term -n_kept log P_k(pass): with exact
likelihoods and a selection that passes the two models at different rates, dropping the
term makes the wrong model win; with it the right one does."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from simobs.comparison.posterior import aggregate_log_bayes_factors, bootstrap_aggregate
from simobs.comparison.splits import grouped_split
from simobs.misspecification.scores import OODScorer

D = 8


class _Classifier:
    """The two things OODScorer uses of a classifier: class names and logits."""

    def __init__(self, names, means):
        self.class_names, self.means = names, means

    def logits(self, x):
        return -0.5 * ((np.asarray(x)[:, None, :] - self.means[None]) ** 2).sum(-1)


def _imbalanced_scorer(seed=0):
    rng = np.random.default_rng(seed)
    means = np.zeros((2, D))
    means[1, 0] = 6.0
    sims, rows = [], []
    from simobs.comparison.embeddings import EmbeddingSet

    for k, (name, n_gal) in enumerate([("big", 5000), ("small", 500)]):
        emb = (means[k] + rng.normal(size=(n_gal, D))).astype(np.float32)
        ids = np.array([f"{i:05d}" for i in range(n_gal)], dtype=object)  # zero-padded numeric ids
        sims.append(EmbeddingSet(name, "simulation", emb, np.ones(n_gal), np.ones(n_gal), ids, ids, np.zeros(n_gal, int)))
    groups = np.concatenate([[f"{s.source}/{g}" for g in s.galaxy_ids] for s in sims])
    labels = np.repeat([0, 1], [len(s) for s in sims])
    split = grouped_split(groups, labels, (0.6, 0.2, 0.2), seed).labels(len(labels))
    pred = pd.DataFrame({"source": np.repeat(["big", "small"], [len(s) for s in sims]),
                         "id": np.concatenate([s.ids for s in sims]), "split": split})
    return OODScorer(_Classifier(["big", "small"], means), sims, pred, knn_k=10, knn_components=8, seed=seed)


def test_balanced_reference_gives_equal_pass_rates_under_imbalance():
    rates = []
    for seed in (0, 1, 2):
        scorer = _imbalanced_scorer(seed)
        rates.append(scorer.pass_rates(scorer.thresholds(0.95))["knn"])
    big, small = np.mean(rates, axis=0)  # s.d. of the difference ~0.01 (200 held-out 'small' images per seed)
    assert abs(big - small) < 0.03, rates


def test_selection_term_removes_the_bias_of_dropping_flagged_galaxies():
    # M0 = N(0, 1), M1 = N(0, 1.2^2); the check keeps |x| < 1, which passes 68 % of M0 and 60 % of M1
    rng = np.random.default_rng(0)
    sd = np.array([1.0, 1.2])
    x = rng.normal(0.0, sd[1], 2_000_000)
    x = x[np.abs(x) < 1.0]  # the kept galaxies of a survey drawn from M1
    logits = norm.logpdf(x[:, None], 0.0, sd[None, :])
    log_pass = np.log(2 * norm.cdf(1.0 / sd) - 1)
    assert aggregate_log_bayes_factors(logits)[1, 0] < 0  # without the term the wrong model (M0) wins
    assert aggregate_log_bayes_factors(logits, log_pass)[1, 0] > 0
    # estimated from held-out images, with the bootstrap carrying its uncertainty
    held = np.concatenate([rng.normal(0, sd[0], 20000), rng.normal(0, sd[1], 20000)])
    lab = np.repeat([0, 1], 20000)
    boot = bootstrap_aggregate(logits[:20000], None, 50, 0, (np.abs(held) < 1.0, lab))
    assert boot.log_bayes_factor_samples[:, 1, 0].std() > 0
    with pytest.raises(ValueError, match="P\\(pass\\) = 0"):
        aggregate_log_bayes_factors(logits, np.array([0.0, -np.inf]))
