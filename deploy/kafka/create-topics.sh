#!/usr/bin/env bash
# Create every topic of care-router on Apache Kafka before the workers start (compose's
# topic-init service runs this with the broker image's kafka-topics.sh).
#
# One line per topic: "topic NAME [compact]". Every topic gets $PARTITIONS partitions: topics
# keyed by customer must share one count, so must those keyed by case (co-partitioned state).
# tests/unit/test_deploy.py checks this list against pipeline/topics.py and the workflow's
# departments, so a topic added to the code and not here fails the tests.
set -euo pipefail
BOOTSTRAP="${KAFKA_BOOTSTRAP_SERVERS:?set KAFKA_BOOTSTRAP_SERVERS}"
PREFIX="${PIPELINE_TOPIC_PREFIX:-care.}"
PARTITIONS="${PIPELINE_PARTITIONS:-6}"
REPLICATION="${PIPELINE_REPLICATION_FACTOR:-1}"
KAFKA_TOPICS="${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}"

topic() {
  local name="$PREFIX$1" config=()
  if [ "${2:-}" = compact ]; then
    config=(--config cleanup.policy=compact)
  fi
  "$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists --topic "$name" \
    --partitions "$PARTITIONS" --replication-factor "$REPLICATION" "${config[@]}"
}

# the stream
topic inbound
topic classified
topic classifications
topic incident-signals
topic external
topic replies
topic task-updates
topic case-events
topic outcomes
topic dlq
topic deliveries
topic quality
topic case-commands
topic case-status
# compacted: directories, configuration, the newest snapshot of every case
topic case-state compact
topic customers compact
topic kb compact
topic config compact
# one task topic per internal department of the workflow (pipeline rules current --departments)
topic tasks.account
topic tasks.billing
topic tasks.customer-care
topic tasks.logistics
topic tasks.loyalty-it
topic tasks.marketing
topic tasks.orders
topic tasks.payments
topic tasks.refunds
topic tasks.store-ops
topic tasks.triage
