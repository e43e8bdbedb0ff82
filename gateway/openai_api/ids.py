"""The ids the gateway gives the answers it serves.

The gateway names each answer itself (vLLM takes the name), so the id is known before the
answer is, and the interaction log, the rating and the headers all agree on it. A
Responses API answer's id also names the replica that made it:

    resp_<8 hex: a hash of the replica's URL><32 hex>

because vLLM keeps stored responses in that replica's memory only: `previous_response_id`,
`GET /v1/responses/{id}` and cancel must reach it, and with the replica in the id every
gateway replica (sharing the upstream list) finds it without a shared table. This needs
each vLLM server listed as an upstream of its own, not one load-balanced URL in front of
several.
"""

from __future__ import annotations

import hashlib

from adapters.fleet import Fleet, Replica

ID_PREFIX = {"chat": "chatcmpl-", "completions": "cmpl-", "responses": "resp_"}
TAG_CHARS = 8


def replica_tag(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:TAG_CHARS]


def answer_id(kind: str, replica: Replica, request_id: str) -> str:
    """The id of the answer to `request_id` (32 hex) of `kind`, served by `replica`."""
    if kind == "responses":
        return ID_PREFIX[kind] + replica_tag(replica.url) + request_id
    return ID_PREFIX[kind] + request_id


def replica_of(fleet: Fleet, response_id: str) -> Replica | None:
    """The replica whose store holds `response_id`, if it is still in the fleet."""
    prefix = ID_PREFIX["responses"]
    if not response_id.startswith(prefix):
        return None
    tag = response_id[len(prefix):len(prefix) + TAG_CHARS]
    return next((r for r in fleet.replicas if replica_tag(r.url) == tag), None)
