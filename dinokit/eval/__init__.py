"""Evaluation protocols on frozen features (DINOv2 §7, DINOv3 §6): k-NN, linear probe, logistic regression,
dense linear segmentation and depth, instance retrieval, keypoint correspondence.

Each protocol has a function on in-memory features or pairs where that makes sense (`knn_eval`,
`linear_probe`, `logreg_eval`) and a `run_*` function that takes a backbone and the dataset paths
(docs/formats.md). All return flat dicts of metric → number.
"""

from .correspondence import run_correspondence
from .depth import run_depth
from .features import GlobalFeatures, extract_global_features
from .knn import knn_eval, knn_features, run_knn
from .linear import linear_probe, run_linear
from .logreg import logreg_eval, run_logreg
from .retrieval import run_retrieval
from .segmentation import run_segmentation

__all__ = [
    "GlobalFeatures",
    "extract_global_features",
    "knn_eval",
    "knn_features",
    "linear_probe",
    "logreg_eval",
    "run_correspondence",
    "run_depth",
    "run_knn",
    "run_linear",
    "run_logreg",
    "run_retrieval",
    "run_segmentation",
]
