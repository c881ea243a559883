"""AsyncMTL trainer: shared encoder + one head per task, KD from converged tasks.

Knows nothing of Kubernetes: it reads a control file and exports Prometheus metrics.
Entry points: `asyncmtl-train` (train.py) and `asyncmtl-infer` (inference.py).
"""
