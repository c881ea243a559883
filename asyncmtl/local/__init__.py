"""The local runtime: processes instead of pods, a file instead of the ConfigMap."""
