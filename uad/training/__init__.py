"""Training: a run's settings (``config``), the trainer (``trainer``) and its data-parallel plumbing."""
