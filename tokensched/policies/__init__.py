"""Scheduling policies: plug-ins that order admission and choose preemption victims."""

from tokensched.policies.base import KeyDependence, Policy, PolicyContext, SortKey, key_dependence
from tokensched.policies.fcfs import FCFSPolicy
from tokensched.policies.prefix_aware import PrefixAwarePolicy
from tokensched.policies.priority import PriorityPolicy
from tokensched.policies.slo import SLOPolicy

POLICIES: dict[str, type[Policy]] = {
    "fcfs": FCFSPolicy,
    "priority": PriorityPolicy,
    "prefix-aware": PrefixAwarePolicy,
    "slo": SLOPolicy,
}

__all__ = [
    "POLICIES",
    "FCFSPolicy",
    "KeyDependence",
    "Policy",
    "PolicyContext",
    "PrefixAwarePolicy",
    "PriorityPolicy",
    "SLOPolicy",
    "SortKey",
    "key_dependence",
]
