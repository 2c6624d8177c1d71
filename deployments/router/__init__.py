"""The router process: who answers HTTP and gRPC.

`deployment.Router` (the Serve deployment) composes `core.RouterCore` (serving map, version
resolution, calls, metrics) with one adapter per API (`tfs_rest`, `tfs_grpc`, `v2_rest`,
`v2_grpc`), the servers that own the ports (`servers`), bearer auth (`auth`) and the direct
path's client to version replicas (`replica_client`). Never imports TensorFlow or replica code.
"""
