"""Serve's autoscaling of a version, counting the calls that take the direct data path.

Serve's default policy sizes a deployment from the requests its handles report (running and
queued). Calls on the direct path (deployments/replica/call_service.py) pass no handle, so each
replica reports its own in-flight direct calls (`ServableDeployment.record_autoscaling_stats`,
averaged by Serve over `look_back_period_s`), and this policy adds them to what handles report,
then decides as the default policy does: replicas = total requests / target_ongoing_requests.
Serve applies min/max_replicas and the up- and downscale delays around it, as for its own.

Named in each autoscaled version's Serve config (config/aspire_config.py AUTOSCALING_POLICY) and
imported by Serve's controller: it must stay light (no TensorFlow).
"""

from __future__ import annotations

DIRECT_ONGOING = "aspire_direct_ongoing"  # the metric replicas report


def direct_path_policy(ctx) -> tuple[float, dict]:
    """(desired replicas, policy state) from Serve's AutoscalingContext."""
    replicas = ctx.current_num_replicas
    if replicas == 0:
        return ctx.target_num_replicas, {}
    direct = sum((ctx.aggregated_metrics or {}).get(DIRECT_ONGOING, {}).values())
    total = ctx.total_num_requests + direct
    return total / ctx.config.get_target_ongoing_requests(), {}
