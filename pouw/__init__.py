"""pouw: a Proof-of-Useful-Work chain where miners train segmentation models."""

__version__ = "0.1.0"
