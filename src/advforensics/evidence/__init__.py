"""Evidence: the adversarial examples an investigator holds (io.py reads and writes them) and what
happens to them on the way (transforms.py: PNG, JPEG, resizing, noise)."""

from advforensics.evidence.io import Evidence, load_evidence, save_evidence, save_images
from advforensics.evidence.transforms import REENCODINGS, gaussian_noise, jpeg, quantise_8bit, reencode, resize_roundtrip

load, save = load_evidence, save_evidence  # advforensics.evidence.load("advs.npz")

__all__ = ["Evidence", "load", "save", "load_evidence", "save_evidence", "save_images",
           "REENCODINGS", "gaussian_noise", "jpeg", "quantise_8bit", "reencode", "resize_roundtrip"]
