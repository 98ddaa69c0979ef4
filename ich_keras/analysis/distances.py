"""The paper's cross-entropy distance between models, and metric MDS of that distance matrix to 2-D (Fig. 4).

For two models f and g with softmax outputs p_i^f, p_i^g on the same n examples,

    H(p, q)    = -sum_k p_k log q_k                                   (cross-entropy)
    Dist(f, g) = (1/n) sum_i [ H(p_i^f, p_i^g) + H(p_i^g, p_i^f) ]     (symmetric by construction)

Since H(p, q) = H(p) + KL(p || q), Dist(f, g) = mean_i [H(p_i^f) + H(p_i^g) + KL(p^f||p^g) + KL(p^g||p^f)]: the
entropies of both models count as well as how much they disagree, so two confident models sit closer than two
unsure ones that agree. The diagonal is Dist(f, f) = 2 mean_i H(p_i^f), not zero.

MDS needs a dissimilarity that is zero on the diagonal (a point is at distance 0 from itself in any embedding).
`mds_embedding` offers two readings; the analysis uses "subtract":
    diagonal="subtract"  Dist(f, g) - (Dist(f, f) + Dist(g, g)) / 2 = mean_i [KL(p^f||p^g) + KL(p^g||p^f)], the
                         symmetrised KL, whose diagonal is 0 by itself. Two models with identical outputs (a greedy
                         soup that kept one ingredient) then land on the same point, as they should.
    diagonal="zero"      keep the paper's off-diagonal distances and set the diagonal to 0. Identical models are
                         then 2H(p, p) apart from each other but 0 from themselves, which MDS cannot draw
                         faithfully: they show up as separate points.
The paper's matrix itself (diagonal included) is what `cross_entropy_distances` returns and what the analysis
saves; only the MDS input differs.
"""

from __future__ import annotations

import numpy as np

from ich_keras.errors import UserError
from ich_keras.evaluation import check_log_probabilities

DIAGONALS = ("zero", "subtract")


def _check_log_probs(log_probs) -> np.ndarray:
    log_probs = np.asarray(log_probs, dtype=np.float64)
    if log_probs.ndim != 3:
        raise ValueError(
            f"Expected log-probabilities of shape (models, examples, classes). Received: shape={log_probs.shape}"
        )
    check_log_probabilities(log_probs)
    return log_probs


def cross_entropy_distances(log_probs) -> np.ndarray:
    """The paper's symmetric cross-entropy distance between every pair of models.

    Args:
        log_probs: (M, n, K) log-probabilities (log-softmax outputs) of M models on the same n examples. Logs,
            not probabilities, so a probability that underflows to 0 still has a finite log.

    Returns:
        (M, M) float64 matrix D with D[f, g] = mean_i [H(p_i^f, p_i^g) + H(p_i^g, p_i^f)]; symmetric, and its
        diagonal is 2 mean_i H(p_i^f) (see the module docstring).
    """
    log_probs = _check_log_probs(log_probs)
    probs = np.exp(log_probs)
    # A class f rules out adds 0 log p^g = 0 whatever g says; as written, 0 * -inf would make the sum NaN.
    ruled_out = np.isneginf(log_probs)  # (M, n, K)
    finite_logs = np.where(ruled_out, 0.0, log_probs)
    # cross[f, g] = mean_i H(p_i^f, p_i^g) = -(1/n) sum_{i,k} p^f_ik log p^g_ik; (M, n, K) x (M, n, K) -> (M, M)
    cross = -np.einsum("fik,gik->fg", probs, finite_logs) / log_probs.shape[1]
    if ruled_out.any():  # g rules out a class f gives mass: H(p^f, p^g) is infinite
        cross[np.einsum("fik,gik->fg", probs, ruled_out.astype(np.float64)) > 0] = np.inf
    return cross + cross.T


def mds_dissimilarities(distances, diagonal: str = "subtract") -> np.ndarray:
    """The dissimilarity matrix MDS embeds, from the paper's distance matrix (see the module docstring).

    Args:
        distances: (M, M) symmetric matrix from `cross_entropy_distances`.
        diagonal: "subtract" (symmetrised KL) or "zero" (paper's distances, diagonal set to 0).

    Returns:
        (M, M) float64 symmetric matrix with a zero diagonal.
    """
    distances = np.asarray(distances, dtype=np.float64)
    if distances.ndim != 2 or distances.shape[0] != distances.shape[1]:
        raise ValueError(f"Expected a square (M, M) distance matrix. Received: shape={distances.shape}")
    if not np.allclose(distances, distances.T, rtol=1e-10, atol=1e-10):
        raise ValueError("Expected a symmetric distance matrix. Received: a matrix with D != D.T")
    if diagonal == "zero":
        out = distances.copy()
    elif diagonal == "subtract":
        self_terms = np.diag(distances)
        out = distances - (self_terms[:, None] + self_terms[None, :]) / 2
        # The symmetrised KL is >= 0; float round-off can leave -1e-16 where two models are identical.
        out = np.maximum(out, 0.0)
    else:
        raise UserError(f"diagonal must be one of {DIAGONALS}. Received: diagonal={diagonal!r}")
    np.fill_diagonal(out, 0.0)
    return out


def mds_embedding(distances, diagonal: str = "subtract", seed: int = 0) -> tuple[np.ndarray, float]:
    """Metric MDS of a precomputed distance matrix to 2-D (scikit-learn's SMACOF, classical-MDS start).

    Args:
        distances: (M, M) symmetric matrix, e.g. from `cross_entropy_distances`.
        diagonal: how the non-zero diagonal is treated, see `mds_dissimilarities`.
        seed: random state passed to scikit-learn (the classical-MDS start makes the result deterministic).

    Returns:
        ((M, 2) coordinates, normalised stress: Kruskal's stress-1 as scikit-learn computes it,
        sqrt(sum (d - δ)² / sum d²) over the pairs, d the map's distances and δ the dissimilarities; 0 is a perfect
        fit, below ~0.1 reads as good). Coordinates are defined up to rotation, reflection and translation.
    """
    from sklearn.manifold import MDS

    dissimilarities = mds_dissimilarities(distances, diagonal)
    if dissimilarities.shape[0] < 2:
        raise ValueError(f"MDS needs at least 2 models. Received: {dissimilarities.shape[0]}")
    if not np.isfinite(dissimilarities).all():
        f, g = np.argwhere(~np.isfinite(dissimilarities))[0]
        raise ValueError(f"MDS needs finite distances. Received: distance[{f}, {g}] = {dissimilarities[f, g]} (one "
                         f"model gives probability 0 to a class the other gives mass)")
    if not dissimilarities.any():
        # The same predictions from every model (one checkpoint and its soups): one point, and scikit-learn's
        # normalised stress would divide 0 by 0 at every iteration.
        return np.zeros((dissimilarities.shape[0], 2)), 0.0
    if dissimilarities.shape[0] == 2:
        # Two points: the exact answer, and scikit-learn's classical start fails on a rank-1 problem.
        half = dissimilarities[0, 1] / 2
        return np.array([[-half, 0.0], [half, 0.0]]), 0.0
    mds = MDS(n_components=2, metric_mds=True, metric="precomputed", init="random", n_init=1, random_state=seed,
              normalized_stress=True, max_iter=1000, eps=1e-9)
    coordinates = mds.fit_transform(dissimilarities, init=classical_mds(dissimilarities))
    return coordinates, float(mds.stress_)


def classical_mds(dissimilarities: np.ndarray, dimensions: int = 2) -> np.ndarray:
    """Torgerson's classical MDS, used as SMACOF's start; negative eigenvalues count as 0.

    KL-type dissimilarities are not Euclidean, so the double-centred matrix can have fewer than `dimensions`
    positive eigenvalues (e.g. when a soup equals one ingredient); scikit-learn's own classical start takes the
    square root of those and returns NaN.

    Returns:
        (M, dimensions) coordinates.
    """
    m = dissimilarities.shape[0]
    centring = np.eye(m) - np.ones((m, m)) / m
    gram = -0.5 * centring @ (dissimilarities**2) @ centring  # (M, M), symmetric
    eigenvalues, eigenvectors = np.linalg.eigh(gram)  # ascending
    top = np.argsort(eigenvalues)[::-1][:dimensions]
    return eigenvectors[:, top] * np.sqrt(np.clip(eigenvalues[top], 0.0, None))
