"""Wire formats that the router and the replica share: TF Serving's JSON tensors (`tfs_json`,
`tfs_json_response`, on the RapidJSON-compatible `json_parser` and `json_writer`), TF Serving's
proto requests (`tfs_requests`), the Open Inference Protocol's messages (`v2_protos`) and the
direct path's frames (`direct`). Pure Python and protobuf: no TensorFlow runtime, no Ray.
"""
