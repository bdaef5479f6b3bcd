//! The control channel: requests and answers between sites on the topic
//! `<topic_prefix>.control` (one partition), so that no site ever opens another's database.
//!
//! Every message is one JSON object `{"v": 1, "id", "from", "to", "kind", ...}`: `id` names the
//! request (its answers carry the same id), `from`/`to` are site ids, `kind` says what the rest
//! holds ([`Body`]). A reader skips messages not addressed to it, messages of a newer version
//! and messages it cannot parse (with a warning naming the offset): the channel is shared by
//! every site of the federation, and one bad message must not stop anyone.
//!
//! Requests (verify, repair) are answered by the running `sitesync run` of the site they are
//! addressed to ([`crate::verify::responder`]); long answers come in parts, the last one marked.

use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::kafka::{self, TransportError};

/// The version this build writes and reads.
pub const VERSION: u32 = 1;

/// One message of the channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlMessage {
    /// Format version ([`VERSION`]).
    pub v: u32,
    /// The request this message is (or answers).
    pub id: String,
    /// Sending site.
    pub from: String,
    /// Site it is meant for.
    pub to: String,
    /// What it says.
    #[serde(flatten)]
    pub body: Body,
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// Publish the history of `entities` (empty: every entity routed from the asked site to the
    /// asking one) for the asking site only: a site joining the federation.
    SnapshotRequest {
        /// Entities.
        entities: Vec<String>,
    },
    /// Where an asked snapshot stands (sent as it progresses, the last one `done` or `failed`).
    SnapshotProgress {
        /// The snapshot request at the answering site.
        request: u64,
        /// `requested`, `running`, `done` or `failed`.
        status: String,
        /// Rows published so far.
        rows_done: i64,
        /// Rows to publish.
        rows_total: i64,
        /// What it did, or why it failed.
        message: Option<String>,
    },
    /// Checksums of the rows of `entity` that the asking site should hold from the asked one,
    /// in `buckets` buckets by natural key.
    BucketsRequest {
        /// Entity.
        entity: String,
        /// Bucket count (a power of two).
        buckets: u32,
    },
    /// The digests of every row of `entity` in the buckets `which` (of `buckets`).
    RowsRequest {
        /// Entity.
        entity: String,
        /// Bucket count of the pass.
        buckets: u32,
        /// Which buckets.
        which: Vec<u32>,
    },
    /// Republish the current rows whose local primary keys are `rows` through the pipeline.
    RepairRequest {
        /// Entity.
        entity: String,
        /// The answering site's own primary keys (as text), from its rows answer.
        rows: Vec<String>,
    },
    /// Answer to [`Body::BucketsRequest`]: the non-empty buckets.
    Buckets {
        /// Part number, from 0.
        part: u32,
        /// The last part.
        last: bool,
        /// (bucket, rows, checksum as hex).
        sums: Vec<(u32, u64, String)>,
    },
    /// Answer to [`Body::RowsRequest`].
    Rows {
        /// Part number, from 0.
        part: u32,
        /// The last part.
        last: bool,
        /// The rows.
        rows: Vec<RowDigest>,
    },
    /// Answer to [`Body::RepairRequest`]: the rows were published (as snapshot records of
    /// request `request` at the answering site).
    Repaired {
        /// The snapshot request at the answering site.
        request: u64,
        /// Rows published.
        rows: u64,
    },
    /// The request could not be answered.
    Failed {
        /// Why.
        message: String,
    },
}

/// One row as verify compares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowDigest {
    /// Natural key, canonical text.
    pub key: String,
    /// The site's own primary key (text), for a repair request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pk: Option<String>,
    /// Digest of the compared columns (hex).
    pub digest: String,
    /// Short hashes of each compared column, in name order (names which columns differ).
    pub columns: Vec<(String, String)>,
    /// The row is the answering site's to publish (its own, passing the filter).
    pub owned: bool,
    /// The row passes the entity's filter.
    pub replicated: bool,
}

/// Why the channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Kafka refused or failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// No answer in time.
    #[error("no answer from site `{site}` within {seconds} s on {topic}: is `sitesync run` running there, and did `sitesync init` create the topic?")]
    Timeout {
        /// The silent site.
        site: String,
        /// Waited this long.
        seconds: u64,
        /// The control topic.
        topic: String,
    },
}

fn kafka_err(what: &str) -> impl Fn(rdkafka::error::KafkaError) -> ChannelError + '_ {
    move |source| ChannelError::Transport(TransportError::of(what, source))
}

/// One site's end of the channel.
pub struct Channel {
    producer: kafka::Producer,
    consumer: kafka::StreamingConsumer,
    topic: String,
    site: String,
}

impl Channel {
    /// Opens the channel for `site`, reading from the current end of the topic (what is sent
    /// from now on).
    pub async fn open(config: &Config, site: &str) -> Result<Self, ChannelError> {
        let topic = config.control_topic();
        let producer: kafka::Producer = kafka::create(&kafka::control_producer_config(&config.kafka)?, "creating the control producer")?;
        let group = kafka::group_of(config, site, &format!("control.{}", std::process::id()));
        let consumer: kafka::StreamingConsumer =
            kafka::create(&kafka::control_consumer_config(&config.kafka, &group)?, "creating the control consumer")?;
        // The end as it is now, fetched, not `Offset::End` (resolved later, after a request's
        // answer may already be there).
        let (topic_c, consumer_c) = (topic.clone(), consumer);
        let (consumer, end) = tokio::task::spawn_blocking(move || {
            let end = consumer_c.fetch_watermarks(&topic_c, 0, Duration::from_secs(10)).map(|(_, high)| high);
            (consumer_c, end)
        })
        .await
        .expect("watermark task");
        let end = end.map_err(kafka_err("reading the control topic's end (did `sitesync init` create it?)"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(end)).map_err(kafka_err("assigning the control topic"))?;
        consumer.assign(&tpl).map_err(kafka_err("assigning the control topic"))?;
        Ok(Self { producer, consumer, topic, site: site.to_string() })
    }

    /// The control topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The end offset of partition 0 of `topic` now (a site topic has one partition).
    pub async fn end_of(&self, topic: &str) -> Result<i64, ChannelError> {
        // librdkafka's call blocks: off the runtime's worker.
        tokio::task::block_in_place(|| self.consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)))
            .map(|(_, high)| high)
            .map_err(kafka_err("reading a topic's end"))
    }

    /// Sends `body` to `to` under request `id`.
    pub async fn send(&self, id: &str, to: &str, body: Body) -> Result<(), ChannelError> {
        let message = ControlMessage { v: VERSION, id: id.to_string(), from: self.site.clone(), to: to.to_string(), body };
        let payload = serde_json::to_vec(&message).expect("messages serialize");
        self.producer
            .send(FutureRecord::to(&self.topic).key(id).payload(&payload), Duration::from_secs(30))
            .await
            .map_err(|(source, _)| ChannelError::Transport(TransportError::of(format!("sending to {}", self.topic), source)))?;
        Ok(())
    }

    /// The next message addressed to this site, waiting at most `timeout` (`None`: none came).
    pub async fn next(&self, timeout: Duration) -> Result<Option<ControlMessage>, ChannelError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.consumer.recv()) => match r {
                    Err(_) => return Ok(None),
                    Ok(r) => r.map_err(kafka_err("reading the control topic"))?,
                },
                // A refused login never fails `recv`: it only never answers.
                refusal = kafka::refused() => {
                    return Err(ChannelError::Transport(TransportError::Refused { what: format!("reading {}", self.topic), refusal }))
                }
            };
            let Some(payload) = received.payload() else { continue };
            match parse(payload) {
                Ok(m) if m.to == self.site => return Ok(Some(m)),
                Ok(_) => {}
                Err(why) => tracing::warn!(topic = %self.topic, offset = received.offset(), reason = %why, "skipping a control message"),
            }
        }
    }

    /// The next answer to request `id` from `from`, or [`ChannelError::Timeout`].
    pub async fn answer(&self, id: &str, from: &str, timeout: Duration) -> Result<Body, ChannelError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Some(m) if m.id == id && m.from == from => return Ok(m.body),
                Some(_) => {}
                None => {
                    return Err(ChannelError::Timeout { site: from.to_string(), seconds: timeout.as_secs(), topic: self.topic.clone() })
                }
            }
        }
    }
}

/// A message off the wire, or why it is skipped.
pub fn parse(payload: &[u8]) -> Result<ControlMessage, String> {
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let v = value.get("v").and_then(serde_json::Value::as_u64).ok_or("no version `v`")?;
    if v > VERSION as u64 {
        return Err(format!("version {v} is newer than this build's {VERSION}"));
    }
    serde_json::from_value(value).map_err(|e| format!("malformed: {e}"))
}

/// A new request id: unique across sites and restarts.
pub fn request_id(site: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{site}-{}-{}-{}", std::process::id(), crate::record::now_ms(), NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_strangers_are_refused_with_a_reason() {
        let m = ControlMessage {
            v: VERSION,
            id: "t-1".into(),
            from: "b".into(),
            to: "a".into(),
            body: Body::RowsRequest { entity: "user".into(), buckets: 64, which: vec![3, 9] },
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains("\"kind\":\"rows_request\""), "{text}");
        assert_eq!(parse(text.as_bytes()).unwrap(), m);
        assert!(parse(b"{\"v\":2,\"id\":\"x\",\"from\":\"a\",\"to\":\"b\",\"kind\":\"new_thing\"}").unwrap_err().contains("newer"));
        assert!(parse(b"{\"v\":1,\"id\":\"x\",\"from\":\"a\",\"to\":\"b\",\"kind\":\"nonsense\"}").unwrap_err().contains("malformed"));
        assert!(parse(b"not json").unwrap_err().contains("not JSON"));
        assert!(parse(b"{\"id\":\"x\"}").unwrap_err().contains("version"));
    }
}
