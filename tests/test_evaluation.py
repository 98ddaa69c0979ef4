"""The one evaluation function agrees with scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support

from ich_keras.evaluation import evaluate


def test_matches_scikit_learn_including_a_class_never_predicted():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=200)
    logits = rng.normal(size=(200, 5)) + 2.0 * np.eye(5)[labels]
    logits[:, 4] -= 10.0  # class 4 is never predicted: its precision is 0 by sklearn's zero_division=0
    result = evaluate(labels, logits, class_names=list("abcde"))

    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    precision, recall, f1, support = precision_recall_fscore_support(labels, logits.argmax(1), zero_division=0)
    assert result["loss"] == pytest.approx(log_loss(labels, probabilities), rel=1e-9)
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, logits.argmax(1)))
    assert result["precision"] == pytest.approx(precision.mean())
    assert result["recall"] == pytest.approx(recall.mean())
    assert result["f1"] == pytest.approx(f1.mean())
    assert result["per_class"]["e"]["precision"] == 0.0
    assert [result["per_class"][c]["f1"] for c in "abcde"] == pytest.approx(f1)
    assert [result["per_class"][c]["support"] for c in "abcde"] == list(support)
    assert result["confusion_matrix"] == confusion_matrix(labels, logits.argmax(1), labels=range(5)).tolist()


def test_bad_shapes_name_the_problem():
    with pytest.raises(ValueError, match="logits.shape=\\(3,\\)"):
        evaluate([0, 1, 2], np.zeros(3))
    with pytest.raises(ValueError, match="max=7"):
        evaluate([0, 7], np.zeros((2, 3)))


def test_macro_means_count_a_class_absent_from_labels_and_predictions():
    # 4 classes; class 3 is neither a label nor a prediction. It counts (P = R = F1 = 0) in the macro means, as in
    # scikit-learn with labels=range(4); sklearn's default labels would drop it and report a higher F1.
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 2, 0])
    result = evaluate(labels, np.eye(4)[predictions])

    precision, recall, f1, _ = precision_recall_fscore_support(labels, predictions, labels=range(4), zero_division=0)
    assert result["precision"] == pytest.approx(precision.mean())
    assert result["recall"] == pytest.approx(recall.mean())
    assert result["f1"] == pytest.approx(f1.mean())
    assert result["per_class"]["3"] == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    default = precision_recall_fscore_support(labels, predictions, average="macro", zero_division=0)[2]
    assert result["f1"] < default  # the default averages over 3 classes only


def test_labels_that_are_not_class_indices_are_refused_not_flattened_or_truncated():
    logits = np.eye(3)
    with pytest.raises(ValueError, match=r"one-hot rows, pass rows.argmax\(-1\).*labels.shape=\(3, 3\)"):
        evaluate(np.eye(3), logits)  # flattened, it read as 9 labels
    with pytest.raises(ValueError, match=r"integer class indices.*\[1.7, 0.0, 1.0\]"):
        evaluate(np.array([1.7, 0.0, 1.0]), logits)  # truncated, 1.7 scored as class 1
    with pytest.raises(ValueError, match="at least one example"):
        evaluate(np.zeros(0, int), np.zeros((0, 3)))  # a NaN loss and a warning before
    # Integer-valued floats and an (n, 1) column are class indices, as are booleans and Python ints in an object array.
    assert evaluate(np.array([[0.0], [1.0], [2.0]]), logits)["accuracy"] == 1.0
    assert evaluate(np.array([0, 1, 2], dtype=object), logits)["accuracy"] == 1.0
    assert evaluate(np.array([True, False]), np.eye(2)[[1, 0]])["accuracy"] == 1.0
    with pytest.raises(ValueError, match=r"labels holding \['NoneType', 'int'\]"):
        evaluate(np.array([0, None, 2], dtype=object), logits)
    with pytest.raises(ValueError, match=r"max=1e\+300"):  # checked before the cast, which wrapped it below 0
        evaluate(np.array([0.0, 1.0, 1e300]), logits)
