//! One place that turns the `[kafka]` table into librdkafka configurations, and the topic admin
//! that `init` and `check` use.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// Largest record sitesync produces and consumes (rows with large BLOBs), in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Settings the delivery guarantees depend on: a user property may not override them.
/// An idempotent producer still leaves a gap when a message times out (librdkafka's
/// "Message timeout considerations"): records never time out, capture waits for Kafka instead.
const PRODUCER_GUARANTEES: &[(&str, &str)] =
    &[("enable.idempotence", "true"), ("acks", "all"), ("message.timeout.ms", "0"), ("enable.gapless.guarantee", "true")];
const CONSUMER_GUARANTEES: &[(&str, &str)] = &[("enable.auto.commit", "false"), ("enable.auto.offset.store", "false")];

/// A Kafka operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A user property contradicts a delivery guarantee.
    #[error("kafka.properties.{key} = {value:?} would break sitesync's delivery guarantee (needs {needed:?})")]
    Conflict {
        /// The property.
        key: String,
        /// The user's value.
        value: String,
        /// What sitesync needs.
        needed: String,
    },
    /// librdkafka refused or failed.
    #[error("kafka: {what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: KafkaError,
    },
}

impl TransportError {
    /// Whether the brokers could not be reached (down, restarting, network): waiting may mend
    /// it, unlike a contradicting property or a refused login.
    pub fn is_unreachable(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode as Code;
        match self {
            TransportError::Kafka { source, .. } => matches!(
                source.rdkafka_error_code(),
                Some(
                    Code::BrokerTransportFailure
                        | Code::AllBrokersDown
                        | Code::OperationTimedOut
                        | Code::RequestTimedOut
                        | Code::Resolve
                        | Code::NetworkException
                )
            ),
            TransportError::Conflict { .. } => false,
        }
    }
}

fn base(kafka: &KafkaConfig, guarantees: &[(&str, &str)]) -> Result<ClientConfig, TransportError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (k, v) in &kafka.properties {
        if let Some((_, needed)) = guarantees.iter().find(|(g, _)| g == k) {
            if v != needed {
                return Err(TransportError::Conflict { key: k.clone(), value: v.clone(), needed: needed.to_string() });
            }
        }
        c.set(k, v);
    }
    for (k, v) in guarantees {
        c.set(*k, *v);
    }
    Ok(c)
}

/// The capture's producer: idempotent, acknowledged by all in-sync replicas, batching.
pub fn producer_config(kafka: &KafkaConfig) -> Result<ClientConfig, TransportError> {
    let mut c = ClientConfig::new();
    // Defaults first, so that `kafka.properties` can tune them.
    c.set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string())
        .set("queue.buffering.max.kbytes", "262144");
    let user = base(kafka, PRODUCER_GUARANTEES)?;
    for (k, v) in user.config_map() {
        c.set(k, v);
    }
    Ok(c)
}

/// The applier's consumer: manual assignment, offsets stored in the control database only.
pub fn consumer_config(kafka: &KafkaConfig, group: &str) -> Result<ClientConfig, TransportError> {
    let mut c = ClientConfig::new();
    // Prefetch is what bounds the applier's memory while it is behind or blocked: librdkafka
    // otherwise queues up to 100,000 messages (and 64 MB) per partition ahead of the applier.
    // The fetch sizes count compressed bytes, and a fetched batch stays decompressed in memory
    // until its last message is consumed: JSON records compress 3-5x with LZ4, so 8 MB fetches
    // held 54 MB (heaptrack, LIMS benchmark at 10,000 rows/s); 1 MB fetches keep the `run`
    // process at 70 MB. A message larger than the fetch sizes is still returned whole (KIP-74).
    c.set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.bytes", (1024 * 1024).to_string())
        .set("max.partition.fetch.bytes", (1024 * 1024).to_string())
        .set("queued.min.messages", "5000")
        .set("queued.max.messages.kbytes", "8192")
        // With a bounded queue, librdkafka waits this long after each fetch that filled it
        // (default 1 s): catching up a backlog, apply would idle a second per fetch.
        .set("fetch.queue.backoff.ms", "10")
        .set("receive.message.max.bytes", (2 * MAX_MESSAGE_BYTES + 1_000_000).to_string())
        .set("fetch.wait.max.ms", "10");
    let user = base(kafka, CONSUMER_GUARANTEES)?;
    for (k, v) in user.config_map() {
        c.set(k, v);
    }
    Ok(c)
}

/// The control channel's producer: small messages, acknowledged by all in-sync replicas, sent
/// at once (requests and answers are few and someone waits for each).
pub fn control_producer_config(kafka: &KafkaConfig) -> Result<ClientConfig, TransportError> {
    // Built on `base` itself, not copied through `config_map()` (which hides secrets such as
    // `sasl.password` behind a placeholder).
    let mut c = base(kafka, &[("acks", "all")])?;
    default(&mut c, "linger.ms", "0");
    default(&mut c, "message.max.bytes", &MAX_MESSAGE_BYTES.to_string());
    Ok(c)
}

/// Sets `key` unless the user's properties did.
fn default(c: &mut ClientConfig, key: &str, value: &str) {
    if c.get(key).is_none() {
        c.set(key, value);
    }
}

/// The control channel's consumer: assigned by hand, never commits (each reader starts where
/// it needs to: a responder at the end, a requester at the offset before its request).
pub fn control_consumer_config(kafka: &KafkaConfig, group: &str) -> Result<ClientConfig, TransportError> {
    let mut c = base(kafka, CONSUMER_GUARANTEES)?;
    c.set("group.id", group);
    default(&mut c, "fetch.wait.max.ms", "50");
    default(&mut c, "receive.message.max.bytes", &(2 * MAX_MESSAGE_BYTES + 1_000_000).to_string());
    Ok(c)
}

/// Creates `topics` if missing (one partition keeps a site's commit order total);
/// `retention_ms` of -1 keeps records forever (site topics); heartbeats need only minutes.
pub async fn create_topics(
    kafka: &KafkaConfig,
    topics: &[String],
    retention_ms: i64,
) -> Result<Vec<(String, &'static str)>, TransportError> {
    let admin: AdminClient<DefaultClientContext> =
        base(kafka, &[])?.create().map_err(|source| TransportError::Kafka { what: "creating the admin client".into(), source })?;
    let max = MAX_MESSAGE_BYTES.to_string();
    let retention = retention_ms.to_string();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            NewTopic::new(t, kafka.partitions, TopicReplication::Fixed(kafka.replication_factor))
                .set("max.message.bytes", &max)
                .set("retention.ms", &retention)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        admin.create_topics(new.iter(), &opts).await.map_err(|source| TransportError::Kafka { what: "creating topics".into(), source })?;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(t) => out.push((t, "created")),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => out.push((t, "exists")),
            Err((t, code)) => return Err(TransportError::Kafka { what: format!("creating topic {t}"), source: KafkaError::AdminOp(code) }),
        }
    }
    Ok(out)
}

/// Topic -> partition count, for the topics that exist (blocking; run off the async runtime).
pub fn topic_partitions(kafka: &KafkaConfig, topics: &[String], timeout: Duration) -> Result<Vec<(String, Option<usize>)>, TransportError> {
    let consumer: BaseConsumer =
        base(kafka, &[])?.create().map_err(|source| TransportError::Kafka { what: "creating a metadata client".into(), source })?;
    let md = consumer.fetch_metadata(None, timeout).map_err(|source| TransportError::Kafka { what: "fetching metadata".into(), source })?;
    Ok(topics
        .iter()
        .map(|t| {
            let found = md.topics().iter().find(|m| m.name() == t && m.error().is_none());
            (t.clone(), found.map(|m| m.partitions().len()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(props: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: "127.0.0.1:9092".into(),
            properties: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            partitions: 1,
            replication_factor: 1,
        }
    }

    #[test]
    fn user_properties_pass_through_but_cannot_weaken_guarantees() {
        let c = producer_config(&kafka(&[("linger.ms", "20"), ("security.protocol", "SASL_SSL")])).unwrap();
        assert_eq!(c.get("linger.ms"), Some("20"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        let err = producer_config(&kafka(&[("acks", "1")])).unwrap_err();
        assert!(err.to_string().contains("kafka.properties.acks"));
        assert!(consumer_config(&kafka(&[("enable.auto.commit", "true")]), "g").is_err());
    }
}
