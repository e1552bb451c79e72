"""Evidence: the adversarial examples an investigator holds, read from and written to files.

    >>> from advforensics.evidence import load_evidence
    >>> ev = load_evidence("advs.npz")   # also .npy, PNG/JPEG/BMP files and folders
    >>> ev.x.shape, ev.summary()         # (N, C, H, W) float32 in [0, 1]
"""

from advforensics.evidence.io import Evidence, load_evidence, save_evidence, save_images

__all__ = ["Evidence", "load_evidence", "save_evidence", "save_images"]
