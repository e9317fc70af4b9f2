"""Data curation (DINOv3 §3.1): hierarchical k-means over embeddings and balanced sampling from its clusters."""

from .kmeans import Tree, assign, hierarchical_kmeans, kmeans
from .sampling import allocate, balanced_sample, best_cap

__all__ = ["Tree", "allocate", "assign", "balanced_sample", "best_cap", "hierarchical_kmeans", "kmeans"]
