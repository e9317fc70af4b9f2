"""dino.txt: DINOv3's text-aligned model (a frozen backbone, a vision head and a text encoder) and CLIP's BPE
tokenizer. `load_dinotxt(file, backbone=..., vocab=...)` reads the released files strictly."""

from .checkpoint import describe_dinotxt, infer_sizes, is_dinotxt_state_dict, load_dinotxt
from .model import DinoTxt
from .tokenizer import Tokenizer, find_vocab

__all__ = [
    "DinoTxt",
    "Tokenizer",
    "describe_dinotxt",
    "find_vocab",
    "infer_sizes",
    "is_dinotxt_state_dict",
    "load_dinotxt",
]
