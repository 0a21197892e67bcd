"""Meta-router support: outcome discovery (targets), features, the router file, the routing report."""

from brainstacks_pl.routing.artifact import layer_shapes_hash, load_router, save_router
from brainstacks_pl.routing.discovery import (
    DiscoveryCache,
    DiscoveryRecord,
    RouteLossOracle,
    discover_examples,
    example_key,
    greedy_discovery,
    make_target,
    route_weights,
)
from brainstacks_pl.routing.features import collate_features, compute_features, pad_right
from brainstacks_pl.routing.report import build_routing_report, print_routing_report, route_name, write_routing_report
from brainstacks_pl.routing.spec import DiscoverySettings, RouterFileError, RouterSpec, serving_weights

__all__ = [
    "DiscoveryCache",
    "DiscoveryRecord",
    "DiscoverySettings",
    "RouteLossOracle",
    "RouterFileError",
    "RouterSpec",
    "build_routing_report",
    "collate_features",
    "compute_features",
    "discover_examples",
    "example_key",
    "greedy_discovery",
    "layer_shapes_hash",
    "load_router",
    "make_target",
    "pad_right",
    "print_routing_report",
    "route_name",
    "route_weights",
    "save_router",
    "serving_weights",
    "write_routing_report",
]
