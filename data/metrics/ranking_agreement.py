"""Ranking agreement for K-wise data: Kendall tau and Spearman rho between predicted and reference scores.

Each example is one prompt's list of completions; ``predictions`` are the model's scores for them
(e.g. implicit rewards) and ``references`` the ground-truth scores (higher is better). For
canonical K-wise rows without scores, use ``list(range(K, 0, -1))`` (best first). Correlations are
computed per example with scipy and averaged; examples where a correlation is undefined (all
scores equal on one side) are left out of that average and counted.
"""

import math

import datasets
import evaluate
from scipy.stats import kendalltau, spearmanr

_DESCRIPTION = "Mean per-example Kendall tau and Spearman rho between predicted and reference scores."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of float): predicted scores, one list per example.
    references (list of list of float): reference scores, same shapes.
Returns:
    kendall_tau (float), spearman (float): means over the examples where they are defined.
    top1_accuracy (float): fraction of examples whose highest prediction is a reference-best completion.
    undefined (int): examples left out (constant scores); count (int): examples.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RankingAgreement(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.Value("float64")),
                    "references": datasets.List(datasets.Value("float64")),
                }
            ),
        )

    def _compute(self, predictions, references):
        taus, rhos, top1 = [], [], 0
        for index, (predicted, reference) in enumerate(zip(predictions, references)):
            if len(predicted) != len(reference) or len(predicted) < 2:
                raise ValueError(f"example {index}: needs >= 2 scores and equal lengths, got {len(predicted)} and {len(reference)}")
            # constant scores on either side leave both correlations undefined; skip them before
            # scipy warns, and count them in "undefined"
            if len(set(predicted)) > 1 and len(set(reference)) > 1:
                tau = kendalltau(predicted, reference).statistic
                rho = spearmanr(predicted, reference).statistic
                if math.isfinite(tau) and math.isfinite(rho):
                    taus.append(float(tau))
                    rhos.append(float(rho))
            best = max(reference)
            top1 += reference[max(range(len(predicted)), key=lambda i: predicted[i])] == best
        count = len(predictions)
        if count == 0:
            raise ValueError("ranking_agreement needs at least one example")
        return {
            "kendall_tau": sum(taus) / len(taus) if taus else float("nan"),
            "spearman": sum(rhos) / len(rhos) if rhos else float("nan"),
            "top1_accuracy": top1 / count,
            "undefined": count - len(taus),
            "count": count,
        }
