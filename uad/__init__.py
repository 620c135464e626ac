"""uad: reconstruction-based unsupervised anomaly detection in brain MRI (BraTS layout)."""

__version__ = "0.1.0"
