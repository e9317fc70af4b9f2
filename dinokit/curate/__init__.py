"""Data curation (DINOv2 §3, DINOv3 §3.1): near-duplicate groups and decontamination over embeddings, retrieval
of pool images near seed images, hierarchical k-means and balanced sampling from its clusters."""

from .dedup import decontaminate, groups_json, near_duplicate_groups, representatives
from .kmeans import Tree, assign, hierarchical_kmeans, kmeans
from .retrieval import retrieve_by_clusters, retrieve_per_seed
from .sampling import allocate, balanced_sample, best_cap

__all__ = [
    "Tree",
    "allocate",
    "assign",
    "balanced_sample",
    "best_cap",
    "decontaminate",
    "groups_json",
    "hierarchical_kmeans",
    "kmeans",
    "near_duplicate_groups",
    "representatives",
    "retrieve_by_clusters",
    "retrieve_per_seed",
]
