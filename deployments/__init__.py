"""The data plane: what runs in Ray Serve's replicas, one subpackage per process.

- `deployments.router`: the router deployment. Its replicas own the REST and gRPC ports and
  answer every request: TF Serving's REST and gRPC APIs, the Open Inference Protocol's, bearer
  auth, and the direct path's client to the version replicas. No TensorFlow.
- `deployments.replica`: what runs in a version replica (one version in its own process, or many
  small ones in a shared host): the loader, TensorFlow's runtime, warmup, batching, the request
  core and the direct path's call service.
- `deployments.wire`: the formats both sides share: TF Serving's JSON (the RapidJSON-compatible
  parser and writer), its proto requests, the Open Inference Protocol's messages, and the direct
  path's frames. No TensorFlow runtime, no Ray.

Imports run one way: router -> wire <- replica; the router and the replica never import each
other (tests/unit/test_layers.py). The manager reaches this package only through
cluster/backend/.
"""
