"""Consuming streams: `agent` (a registered consumer and its consumers), `consumer` (one consumer's
loop: read → handle → commit), `wire` (its own connection), `delivery` (the handler call, Retry and
Skip), `deadletter` (retries and dead letters), `commit` (the committer: outputs, state and acks in
one ownership-checked script), `upkeep` (keepalive, tidying), `partitions` (one owner per
partition), `stats` (counters)."""
