"""The AsyncMTL kopf operator: `AsyncMTLRun` custom resources -> training and inference Jobs.

Run with `kopf run -m asyncmtl_operator.handlers` (or `python -m asyncmtl_operator`). Every
decision comes from `asyncmtl.core.reconcile`, the same function the local runtime calls;
this package only observes the cluster (Kubernetes API, Prometheus, S3) and applies actions.
"""
