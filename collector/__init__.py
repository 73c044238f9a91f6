"""OTLP receivers, the ingest pipeline and the node that runs them (see docs/ARCHITECTURE.md)."""

from collector._cluster import ClusterStatus, MemberInfo, TermCommits, cluster_status
from collector._election import ElectionStore, LeaseState, check_fence
from collector._group_commit import GroupCommitter, Overloaded
from collector._grpc_receiver import GrpcReceiver, TlsFiles
from collector._http_receiver import HttpReceiver
from collector._node import Node

__all__ = [
    "ClusterStatus",
    "ElectionStore",
    "GroupCommitter",
    "GrpcReceiver",
    "HttpReceiver",
    "LeaseState",
    "MemberInfo",
    "Node",
    "Overloaded",
    "TermCommits",
    "TlsFiles",
    "check_fence",
    "cluster_status",
]
