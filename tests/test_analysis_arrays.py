"""The analysis' pure functions on small synthetic predictions whose answers are known."""

import warnings

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform
from scipy.special import log_softmax
from scipy.stats import ortho_group
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from ich_keras.analysis import (against_reference, cross_entropy_distances, linear_cka, log_loss_decomposition,
                                main_prediction, mds_dissimilarities, mds_embedding, per_class_markdown,
                                per_class_table, zero_one_decomposition)
from ich_keras.analysis import report
from ich_keras.analysis.html import markdown_to_html
from ich_keras.evaluation import evaluate
from ich_keras.markdown import row_cells
from ich_keras.soups import report as soups_report


def random_log_probs(models=5, n=40, classes=4, seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    return log_softmax(scale * rng.normal(size=(models, n, classes)), axis=-1)


def test_distance_matrix_follows_the_formula_loop_by_loop():
    log_probs = random_log_probs(models=4, n=7, classes=3)
    distances = cross_entropy_distances(log_probs)
    probs = np.exp(log_probs)
    expected = np.zeros((4, 4))
    for f in range(4):
        for g in range(4):
            per_example = [-(probs[f, i] * log_probs[g, i]).sum() - (probs[g, i] * log_probs[f, i]).sum()
                           for i in range(7)]
            expected[f, g] = np.mean(per_example)
    np.testing.assert_allclose(distances, expected, rtol=1e-12)
    np.testing.assert_array_equal(distances, distances.T)
    entropy = -(probs * log_probs).sum(-1).mean(-1)  # (M,) mean entropy per model
    np.testing.assert_allclose(np.diag(distances), 2 * entropy, rtol=1e-12)
    assert np.all(np.diag(distances) > 0)


def test_mds_dissimilarities_zero_keeps_paper_distances_and_subtract_gives_symmetric_kl():
    log_probs = random_log_probs(models=3, n=20, classes=5, seed=1)
    distances = cross_entropy_distances(log_probs)
    zero = mds_dissimilarities(distances, "zero")
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_array_equal(zero[off], distances[off])
    assert np.all(np.diag(zero) == 0)
    subtract = mds_dissimilarities(distances, "subtract")
    p = np.exp(log_probs)
    kl = lambda a, b: (p[a] * (log_probs[a] - log_probs[b])).sum(-1).mean()  # noqa: E731
    np.testing.assert_allclose(subtract[0, 2], kl(0, 2) + kl(2, 0), rtol=1e-10)
    with pytest.raises(ValueError, match="diagonal"):
        mds_dissimilarities(distances, "ignore")
    with pytest.raises(ValueError, match="symmetric"):
        mds_dissimilarities(distances + np.triu(np.ones((3, 3)), 1))


def test_mds_subtract_puts_identical_models_on_one_point():
    log_probs = random_log_probs(models=4, n=30, classes=4, seed=2)
    log_probs = np.concatenate([log_probs, log_probs[2:3]])  # model 4 = model 2, like a greedy soup of one
    distances = cross_entropy_distances(log_probs)
    assert distances[2, 4] > 0  # the paper's distance between identical models is 2H(p,p), not 0
    coordinates, _ = mds_embedding(distances)  # default: diagonal="subtract"
    assert np.linalg.norm(coordinates[2] - coordinates[4]) < 1e-6 * np.ptp(coordinates)


def test_mds_is_finite_when_fewer_than_two_directions_are_euclidean():
    # Three models, two identical: the double-centred symmetrised-KL matrix has at most one positive eigenvalue,
    # where a classical start that takes square roots of negative eigenvalues gives NaN.
    log_probs = random_log_probs(models=2, n=20, classes=3, seed=3)
    log_probs = np.concatenate([log_probs, log_probs[1:2]])
    coordinates, stress = mds_embedding(cross_entropy_distances(log_probs))
    assert np.isfinite(coordinates).all() and np.isfinite(stress)
    assert np.linalg.norm(coordinates[1] - coordinates[2]) < 1e-6 * np.ptp(coordinates)


def test_mds_of_models_that_all_predict_alike_is_one_point_without_warnings():
    # One checkpoint and its soups (uniform, greedy of one): the same function three times.
    log_probs = np.repeat(random_log_probs(models=1, n=20, classes=3, seed=4), 3, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's stress would divide 0 by 0
        coordinates, stress = mds_embedding(cross_entropy_distances(log_probs))
    assert not coordinates.any() and stress == 0.0


def _align(found, truth):
    """Orthogonal Procrustes: the rotation/reflection of centred `found` closest to centred `truth`."""
    found, truth = found - found.mean(0), truth - truth.mean(0)
    u, _, vt = np.linalg.svd(found.T @ truth)
    return found @ u @ vt, truth


def test_mds_recovers_a_known_configuration_up_to_rotation_and_reflection():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(8, 2)) * [3.0, 1.0]
    distances = squareform(pdist(truth)) + np.diag(rng.uniform(1, 2, 8))  # a non-zero diagonal, as the paper's
    coordinates, stress = mds_embedding(distances, diagonal="zero")
    aligned, centred = _align(coordinates, truth)
    np.testing.assert_allclose(aligned, centred, atol=1e-4)
    assert stress < 1e-6
    two, _ = mds_embedding(np.array([[1.0, 4.0], [4.0, 1.0]]))
    assert np.linalg.norm(two[0] - two[1]) == pytest.approx(4.0 - (1.0 + 1.0) / 2)  # "subtract": D - mean self


def test_log_loss_decomposition_sums_to_member_cross_entropy():
    log_probs = random_log_probs(models=6, n=50, classes=5, seed=4)
    labels = np.random.default_rng(5).integers(0, 5, 50)
    out = log_loss_decomposition(log_probs, labels)
    expected_total = np.mean([-log_probs[m, np.arange(50), labels].mean() for m in range(6)])
    assert out["total"] == pytest.approx(expected_total, abs=1e-12)
    assert out["bias"] + out["variance"] == pytest.approx(out["total"], abs=1e-6)
    per = out["per_example"]
    np.testing.assert_allclose(per["bias"] + per["variance"], per["total"], atol=1e-6)
    assert out["variance"] > 0
    # Identical members: no variance, and the centre is the member.
    same = log_loss_decomposition(np.repeat(log_probs[:1], 3, axis=0), labels)
    assert same["variance"] == pytest.approx(0.0, abs=1e-12)
    assert same["bias"] == pytest.approx(same["total"], abs=1e-12)


def test_zero_one_decomposition_domingos_sums_to_mean_error():
    rng = np.random.default_rng(6)
    predictions = rng.integers(0, 4, size=(7, 60))
    labels = rng.integers(0, 4, 60)
    out = zero_one_decomposition(predictions, labels, 4)
    assert out["total"] == pytest.approx((predictions != labels).mean(), abs=1e-12)
    assert out["bias"] + out["net_variance"] == pytest.approx(out["total"], abs=1e-6)
    per = out["per_example"]
    np.testing.assert_allclose(per["bias"] + per["coefficient"] * per["variance"], per["total"], atol=1e-6)
    assert out["net_variance"] == pytest.approx(out["unbiased_variance"] - out["biased_variance"], abs=1e-12)


def test_main_prediction_is_the_mode_with_ties_to_the_lowest_class():
    predictions = np.array([[2, 1, 0], [2, 3, 1], [0, 3, 1], [0, 1, 2]])
    np.testing.assert_array_equal(main_prediction(predictions, 4), [0, 1, 1])


def test_against_reference_excess_averages_to_the_variance_over_members():
    log_probs = random_log_probs(models=5, n=30, classes=3, seed=7)
    labels = np.random.default_rng(8).integers(0, 3, 30)
    ensemble = log_loss_decomposition(log_probs, labels)
    placed = [against_reference(log_probs, labels, member) for member in log_probs]
    assert np.mean([p["log_loss"]["excess"] for p in placed]) == pytest.approx(ensemble["variance"], abs=1e-6)
    assert np.mean([p["log_loss"]["kl_from_centre"] for p in placed]) == pytest.approx(ensemble["variance"],
                                                                                       abs=1e-6)
    zero_one = zero_one_decomposition(log_probs.argmax(-1), labels, 3)
    assert np.mean([p["zero_one"]["excess"] for p in placed]) == pytest.approx(zero_one["net_variance"], abs=1e-6)
    for p in placed:
        assert p["log_loss"]["loss"] == pytest.approx(p["log_loss"]["bias"] + p["log_loss"]["excess"], abs=1e-12)


def test_bias_variance_of_one_ingredient_says_so_without_negative_zero():
    # A run that kept one checkpoint: "Ensemble of the 1 ingredients" and a KL of -0.0000 from round-off.
    member = random_log_probs(models=1, n=30, classes=3, seed=10)
    labels = np.random.default_rng(11).integers(0, 3, 30)
    result = {"ingredients": {"members": 1, "log_loss": log_loss_decomposition(member, labels),
                              "zero_one": zero_one_decomposition(member.argmax(-1), labels, 3)},
              "models": [{"name": "epoch_001", "kind": "ingredient", **against_reference(member, labels, member[0])}]}
    text = report.bias_variance_markdown(result)
    assert text.startswith("One ingredient: its own centre, no variance (") and "-0.0000" not in text


def test_mean_distance_between_ingredients_in_words_with_one_and_two():
    # One ingredient gave "Mean distance between ingredients: nan".
    from ich_keras.analysis.runner import _mean_distance_sentence

    distances = cross_entropy_distances(random_log_probs(models=2, n=30, classes=3, seed=12))
    assert _mean_distance_sentence(distances, [0]) == "One ingredient, no distance between ingredients"
    assert _mean_distance_sentence(distances, [0, 1]) == f"Mean distance between ingredients: {distances[0, 1]:.4f}"


def test_per_class_numbers_equal_scikit_learn():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 4, 80)
    names = ["arch", "dome", "gargoyle", "vault"]
    models = {"best": rng.normal(size=(80, 4)), "soup": rng.normal(size=(80, 4))}
    table = per_class_table(labels, models, names)
    for name, logits in models.items():
        predicted = logits.argmax(-1)
        precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=range(4),
                                                                         zero_division=0)
        for c, cls in enumerate(names):
            row = table["classes"][cls][name]
            assert row["precision"] == pytest.approx(precision[c])
            assert row["recall"] == pytest.approx(recall[c])
            assert row["accuracy"] == pytest.approx(recall[c])  # per-class accuracy is the class's recall
            assert row["f1"] == pytest.approx(f1[c])
            assert row["support"] == support[c]
        assert table["macro"][name]["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
        assert table["macro"][name]["f1"] == pytest.approx(f1.mean())
    markdown = per_class_markdown(table)
    assert markdown.count("\n") == 4 + 1 + 1  # header, rule, 4 classes, macro
    assert "gargoyle" in markdown and "Δ F1 (soup − best)" in markdown
    assert "Acc" not in markdown.splitlines()[0]  # a class's accuracy is its recall: no column repeats it


def test_a_class_name_with_a_pipe_keeps_its_table_columns():
    names = ["dance | music", "craft"]
    labels = np.array([0, 1, 0, 1])
    table = per_class_table(labels, {"best": np.eye(2)[labels] * 3.0}, names)
    rows = per_class_markdown(table).splitlines()
    assert [len(row_cells(row)) for row in rows] == [5] * 5  # class, support, P, R, F1 in every row
    assert row_cells(rows[2])[0] == "dance | music"
    page = markdown_to_html("\n".join(rows), ".")
    assert "<td>dance | music</td>" in page and page.count("<tr>") == 4  # the rule line is no row
    report = soups_report.checkpoint_per_class_markdown(evaluate(labels, np.eye(2)[labels], names))
    assert all(len(row_cells(row)) == 5 for row in report.splitlines()[:4])
    assert row_cells(report.splitlines()[-2])[0] == "dance | music"  # the confusion matrix's first row


def test_linear_cka_properties():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(50, 6))
    y = x @ rng.normal(size=(6, 4)) + 0.3 * rng.normal(size=(50, 4))
    assert linear_cka(x, x) == pytest.approx(1.0)
    q = ortho_group.rvs(6, random_state=11)
    assert linear_cka(x @ q * 3.7, y) == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert linear_cka(x, y * 0.01) == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), rel=1e-12)
    assert 0 < linear_cka(x, y) < 1
    # The Gram-matrix path (wide feature maps, d > n) gives the same number as the feature path.
    wide = rng.normal(size=(10, 4, 4, 8))
    wide2 = wide * 2 + rng.normal(size=wide.shape)
    feature_space = np.sum((lambda a, b: (b.T @ a) ** 2)(*(m.reshape(10, -1) - m.reshape(10, -1).mean(0)
                                                             for m in (wide, wide2))))
    a, b = (m.reshape(10, -1) - m.reshape(10, -1).mean(0) for m in (wide, wide2))
    expected = feature_space / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
    assert linear_cka(wide, wide2) == pytest.approx(expected, rel=1e-10)
    assert linear_cka(np.ones((5, 3)), x[:5]) == 0.0


def test_input_errors_name_the_shape():
    with pytest.raises(ValueError, match="Received: shape"):
        cross_entropy_distances(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="Received"):
        log_loss_decomposition(random_log_probs(n=5), np.zeros(6, int))
    with pytest.raises(ValueError, match="Received"):
        linear_cka(np.zeros((4, 2)), np.zeros((5, 2)))


def test_without_soups_the_best_single_checkpoint_breaks_ties_on_val_loss_as_the_soups_do(tmp_path):
    from types import SimpleNamespace

    from ich_keras.analysis import runner

    preds = SimpleNamespace(names=["epoch_003", "epoch_007", "soft_voting"],
                            rows=lambda kind: [0, 1] if kind == "ingredient" else [2])
    val = {"epoch_003": {"accuracy": 0.9, "loss": 0.40}, "epoch_007": {"accuracy": 0.9, "loss": 0.35},
           "soft_voting": {"accuracy": 0.95, "loss": 0.30}}
    assert runner._best_single(preds, {"val": val}, tmp_path / "soups", analysed=set()) == "epoch_007"


def test_models_table_says_its_averages_and_what_the_deltas_compare_with():
    labels = np.array([0, 1, 2, 0, 1, 2])
    log_probs = random_log_probs(models=2, n=6, classes=3)
    metrics = {split: {name: evaluate(labels, lp) for name, lp in zip(("epoch_002", "uniform"), log_probs)}
               for split in ("val", "test")}
    text = report.metrics_markdown(["epoch_002", "uniform"], ["ingredient", "soup"], metrics, "epoch_002")
    caption = text.split("\n| Model")[0]
    assert "macro-averaged precision (P), recall (R) and F1 in %" in caption
    assert "Δ = accuracy − that of the best single checkpoint (**epoch_002**, in bold), in percentage points" in caption
    assert "| **epoch_002** | ingredient |" in text


def test_ingredient_table_names_the_split_of_every_column():
    """In a soup's results.md the ingredients' table follows the test table: a bare "Accuracy" read as test."""
    metrics = evaluate(np.array([0, 1, 1]), np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])))
    table = soups_report.checkpoint_table([{"name": "epoch_001.weights.h5", "val": metrics}], "val")
    assert row_cells(table.splitlines()[0]) == ["Checkpoint", "val loss", "val accuracy", "val precision",
                                               "val recall", "val F1"]
    assert row_cells(table.splitlines()[2])[2] == "66.67"


def test_logits_or_probabilities_given_for_log_probabilities_are_refused():
    # The natural mistake: a model's logits (or probabilities) gave negative "distances" and a negative total loss.
    logits = np.random.default_rng(0).normal(size=(2, 5, 3)) * 4
    labels = np.array([0, 1, 2, 0, 1])
    for wrong in (logits, np.exp(log_softmax(logits, axis=-1))):
        with pytest.raises(ValueError, match="Expected log-probabilities .* logsumexp 0"):
            cross_entropy_distances(wrong)
        with pytest.raises(ValueError, match="Expected log-probabilities .* logsumexp 0"):
            log_loss_decomposition(wrong, labels)
    assert cross_entropy_distances(log_softmax(logits, axis=-1)).min() >= 0


def test_a_class_every_model_rules_out_adds_nothing_and_one_ruled_out_by_one_model_is_infinite():
    # np.log of probabilities with exact zeros: 0 log 0 = 0, where the formulas as written gave NaN.
    with np.errstate(divide="ignore"):
        both = np.log(np.array([[[0.5, 0.5, 0.0]], [[0.25, 0.75, 0.0]]]))  # class 2 ruled out by both
        one = np.log(np.array([[[0.5, 0.5, 0.0]], [[0.25, 0.0, 0.75]]]))  # each rules out a class the other allows
    labels = np.array([0])
    entropy = [-(p * np.log(p)).sum() for p in (np.array([0.5, 0.5]), np.array([0.25, 0.75]))]
    cross = -(0.5 * np.log(0.25) + 0.5 * np.log(0.75)) - (0.25 * np.log(0.5) + 0.75 * np.log(0.5))
    np.testing.assert_allclose(cross_entropy_distances(both), [[2 * entropy[0], cross], [cross, 2 * entropy[1]]])
    decomposition = log_loss_decomposition(both, labels)
    log_z = np.log(np.sqrt(0.5 * 0.25) + np.sqrt(0.5 * 0.75))  # the variance is -log Z
    assert decomposition["variance"] == pytest.approx(-log_z)
    assert decomposition["total"] == pytest.approx(decomposition["bias"] + decomposition["variance"])
    assert np.isfinite(against_reference(both, labels, both[0])["log_loss"]["kl_from_centre"])
    distances = cross_entropy_distances(one)
    assert np.isinf(distances[0, 1]) and np.isfinite(np.diag(distances)).all()
    with pytest.raises(ValueError, match=r"MDS needs finite distances.*distance\[0, 1\] = inf"):
        mds_embedding(np.pad(distances, (0, 1), mode="edge"))


def test_zero_one_decomposition_refuses_labels_and_predictions_outside_the_classes():
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\)\. Received: min=1, max=7"):
        zero_one_decomposition([[0, 1], [0, 1]], [7, 1], 3)  # counted as an error before
    with pytest.raises(ValueError, match=r"Predictions must lie in \[0, 3\)\. Received: min=0, max=5"):
        zero_one_decomposition([[0, 5], [0, 1]], [0, 1], 3)  # an IndexError before
    for empty in (lambda: zero_one_decomposition(np.zeros((2, 0), int), [], 2),
                  lambda: log_loss_decomposition(np.zeros((3, 0, 2)), [])):
        with pytest.raises(ValueError, match="at least one example"):  # NaN and warnings before
            empty()
