"""Data: image decoding, tensor transforms, datasets, multi-crop and masking."""
