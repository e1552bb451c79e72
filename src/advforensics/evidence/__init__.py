"""Evidence: the adversarial examples an investigator holds, and what happens to them on the way."""

from advforensics.evidence.transforms import REENCODINGS, gaussian_noise, jpeg, quantise_8bit, reencode, resize_roundtrip

__all__ = ["REENCODINGS", "gaussian_noise", "jpeg", "quantise_8bit", "reencode", "resize_roundtrip"]
