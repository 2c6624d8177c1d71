"""The version replica process: who loads and runs a model.

`servable.ServableDeployment` holds one version per replica; `shared_host.HostDeployment` many
small ones. Both load with `loader` (on `tf_runtime`, with `variable_restore`), replay `warmup`,
run requests through `inference` (TF Serving REST), `tfs_grpc_calls` (TF Serving gRPC) and
`v2_calls` (Open Inference Protocol), optionally behind `batching`, and answer the routers on
`call_service`. The only package that imports TensorFlow's runtime.
"""
