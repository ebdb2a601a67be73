"""A soak benchmark (not a test): N seconds of mixed load, one topic family per slow-consumer
policy, reporting delivered/expected per policy, the broker's RSS and task count over time,
and whether memory stayed flat after warm-up.

    python -m benchmarks.soak [--seconds 60] [--url URL --ws-url WSURL [--broker-pid PID]]

For each policy, a family of topics `soak.<family>.<tag>.t0 .. tK` (`soak.disconnect.*`,
`soak.drop.*` for drop-oldest, `soak.block.*`) carries:

- a steady publisher per topic: bulk `POST /v1/publish` of `--batch` messages at a fixed
  pace (`--rate` messages/s per policy, spread over the family's topics), one keep-alive
  connection each. A 503 (`topic_busy`: not accepted, by the contract) is counted as
  refused, not as lost; a request cut by our own timeout is counted as unknown.
- long-lived healthy subscribers (`--healthy` per topic, one exact topic each, all read by
  one `SubscriberGroup` task) that check order and count: every offset the topic assigned
  must be received, in order, or (drop-oldest only) be inside a `gap` frame. Expected is the
  topic's `next_offset` at the end, cross-checked against the publisher's 202 answers.
- churn subscribers (`--churners` per family): connect, subscribe, read a little, leave,
  about once a second each, round-robin over the family's topics (and, with
  `--wildcard-churn`, every other cycle on the pattern `soak.<family>.<tag>.*`).
- ONE stalled subscriber on t0: a raw socket with a tiny SO_RCVBUF that completes the
  handshake and then never reads. Its fate is watched in the presence listing; once the
  broker drops it (disconnect) it reads, to learn the close code. At the end the ones still
  subscribed read everything: drop-oldest must account for every offset (received or
  inside a gap frame), block must have everything, in order. Stalled subscribers are
  excluded from delivered/expected.

After `--seconds` the publishers stop, the stalled subscribers are released (read, then
closed), every topic gets one more single `POST /v1/topics/{topic}` (the block topic must
take it again), and the healthy subscribers must account for every offset within
`--drain-timeout`.

Every `--sample-interval` the broker's GET /metrics is read; every 5 s a progress line shows
elapsed time, RSS, `broker_tasks` and connections. At the end: RSS and tasks over time, and
the memory verdict: mean RSS over the last third of the run against the middle third (the
first third is warm-up); growth under 10% is "flat".

Unless `--url`/`--ws-url` are given, the broker is started here with `quick.BrokerProcess`
(`python -m gateways serve --port 0 --ws-port 0`), its per-topic policies in a temporary
TOML file (handed over as `BROKER_CONFIG`, the env twin of `--config`), plus
`BROKER_OUTBOX_SIZE` and `BROKER_PUBLISH_TIMEOUT`; it is stopped with SIGTERM. As in
benchmarks.quick, on two or more cores the broker and this load generator are pinned to
different cores, and both processes' CPU time is reported.

Every wait is bounded. Exit status 1 if a healthy subscriber lost a message (or saw one
out of order, or was closed), and for every other entry of the PROBLEMS list: memory not
flat, a policy not keeping its promise to the stalled subscriber, publishes left without an
answer or refused on a policy that never waits, /metrics not answering (a wedged broker),
no clean exit on SIGTERM, warnings or errors on the broker's stderr. 0 otherwise.

The broker's tasks include one actor per topic, kept until `topic_idle_seconds`; a stalled
`block` topic's mailbox fills up with withdrawn (503) publishes, up to `mailbox_size`, which
shows as RSS growth until it is full (the `mailbox max` column).
"""

# The package (this docstring is `--help`'s description, so the layout is told here):
# `state` (families, counts, samples), `subscribers` (healthy and stalled), `load` (`Soak`:
# the run and its phases), `report` (delivered/expected per policy, the memory verdict,
# PROBLEMS), `errors` (the first ten of each), `cli` (flags, the broker, exit status).

from .cli import main, parse_args

__all__ = ["main", "parse_args"]
