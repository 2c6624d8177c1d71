"""Aspire's shared vocabulary, imported by every other package and importing none of them:
errors and their status table, name rules and the names Aspire gives its parts on Ray, the
serving map's types (the contract between the planes), the metrics core, byte units and NVML
reads. No Ray Serve and no TensorFlow."""
