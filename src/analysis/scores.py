"""What `src.evaluate` reports for each task: its scores of a model's outputs, and the figure that shows them."""

from typing import Dict, Tuple

import numpy as np

BCE_EPSILON = 1e-7  # Keras's clip of probabilities in its cross-entropies


def scores(y: np.ndarray, probability: np.ndarray) -> Tuple[Dict[str, float], Tuple[np.ndarray, np.ndarray]]:
    """Binary cross-entropy, accuracy and ROC AUC of probabilities against 0/1 labels; and the ROC curve."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y, p = y.reshape(-1).astype(np.float64), probability.reshape(-1).astype(np.float64)
    clipped = np.clip(p, BCE_EPSILON, 1 - BCE_EPSILON)
    bce = float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
    accuracy = float(np.mean((p > 0.5) == (y == 1)))
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
    fpr, tpr, _ = roc_curve(y, p) if 0 < y.sum() < len(y) else (np.array([0, 1]), np.array([0, 1]))
    return {"binary_crossentropy": bce, "accuracy": accuracy, "auc": auc, "rows": float(len(y))}, (fpr, tpr)


def multiclass_scores(y: np.ndarray, probabilities: np.ndarray) -> Tuple[Dict[str, float], np.ndarray]:
    """Sparse categorical cross-entropy and accuracy of class probabilities against labels 0..K-1; and the
    confusion matrix (rows: the true class, columns: the predicted one)."""
    from sklearn.metrics import confusion_matrix

    labels = y.reshape(-1).astype(np.int64)
    p = np.clip(probabilities.astype(np.float64), BCE_EPSILON, 1 - BCE_EPSILON)
    cross_entropy = float(-np.mean(np.log(p[np.arange(len(labels)), labels])))
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, labels=np.arange(probabilities.shape[1]))
    values = {"sparse_categorical_crossentropy": cross_entropy, "accuracy": float(np.mean(predicted == labels)),
              "rows": float(len(labels))}
    return values, matrix


def regression_scores(y: np.ndarray, predicted: np.ndarray) -> Tuple[Dict[str, float], np.ndarray]:
    """Mean squared and mean absolute error of predictions; and the residuals (prediction - target)."""
    residuals = predicted.reshape(-1).astype(np.float64) - y.reshape(-1).astype(np.float64)
    values = {"mean_squared_error": float(np.mean(residuals**2)), "mean_absolute_error": float(np.mean(np.abs(residuals))),
              "rows": float(len(residuals))}
    return values, residuals


def task_scores(task: str, y: np.ndarray, outputs: np.ndarray, title: str):
    """The task's scores of the logged model's outputs, and its figure keyed by artifact file."""
    from src.analysis import plots

    if task == "multiclass":
        values, matrix = multiclass_scores(y, outputs)
        return values, {"confusion_matrix.png": plots.confusion_figure(matrix, f"confusion matrix: {title}")}
    if task == "regression":
        values, residuals = regression_scores(y, outputs)
        return values, {"residuals.png": plots.residuals_figure(y.reshape(-1), residuals, f"residuals: {title}")}
    values, (fpr, tpr) = scores(y, outputs)
    return values, {"roc.png": plots.roc_figure(fpr, tpr, values["auc"], f"ROC: {title}")}
