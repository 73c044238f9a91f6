"""Searchable encryption over the span store: keywords, trapdoors, the EDB, the span block
format, the query executor, and the query API (enclave sessions, host relay, client).

    client = QueryClient.connect("127.0.0.1:16685", key_file="otrace-data/analyst.cred")
    data = client.get_trace(bytes.fromhex("5b8efff798038103d269b633813fc60c"))
"""

from query._blocks import (
    PackedBlock,
    SpanRecord,
    pack_blocks,
    records_from_body,
    records_from_request,
    traces_data,
    unpack_blocks,
)
from query._client import QueryClient, TraceAnswer
from query._credential import AnalystCredential
from query._edb import EdbCodec, EdbRow, EdbTable, Postings, bucket_count, slot_of
from query._executor import QueryBudget, QueryExecutor, QueryResult, SearchRequest
from query._index import (
    EpochSpans,
    Indexer,
    IndexState,
    MaintenancePlan,
    Segment,
    decode_index,
    encode_index,
)
from query._keywords import (
    attr_keyword,
    duration_cover,
    name_keyword,
    service_keyword,
    span_keywords,
    time_cover,
    trace_keyword,
)
from query._server import QueryServer
from query._session import QuerySessions
from query._trapdoor import locate, trapdoor_for

__all__ = [
    "AnalystCredential",
    "EdbCodec",
    "EdbRow",
    "EdbTable",
    "EpochSpans",
    "IndexState",
    "Indexer",
    "MaintenancePlan",
    "PackedBlock",
    "Postings",
    "QueryBudget",
    "QueryClient",
    "QueryExecutor",
    "QueryResult",
    "QueryServer",
    "QuerySessions",
    "SearchRequest",
    "Segment",
    "SpanRecord",
    "TraceAnswer",
    "attr_keyword",
    "bucket_count",
    "decode_index",
    "duration_cover",
    "encode_index",
    "locate",
    "name_keyword",
    "pack_blocks",
    "records_from_body",
    "records_from_request",
    "service_keyword",
    "slot_of",
    "span_keywords",
    "time_cover",
    "trace_keyword",
    "traces_data",
    "trapdoor_for",
    "unpack_blocks",
]
