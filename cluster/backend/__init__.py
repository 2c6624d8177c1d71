"""The manager's door to the data plane: the only part of the control plane that imports
`deployments`. It runs in the manager's (and the CLI's) process and never imports TensorFlow.

- `interface`: what the manager asks of a backend (`Backend`, `SharedHosts`), typed.
- `serve_backend.ServeBackend`: loads and unloads versions as Serve applications.
- `shared_hosts.SharedHostLoader`: versions inside shared hosts, hosts opened and closed.
- `serve_apps`: running one Serve application and waiting until it answers.
- `host_registry.HostRegistry`: the shared hosts' manifests.
- `serve_state`: what Serve runs now (applications, replicas), and deleting applications.
- `routers`: the router deployment.
- `remote_files`: remote base paths listed in a worker process (TensorFlow's file systems).
"""
