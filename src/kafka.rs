//! One place that turns the `[kafka]` table into librdkafka configurations, and the topic admin
//! that `init` and `check` use.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::config::{Config, KafkaConfig};

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
    /// Kafka refused this site's login or an operation: waiting will not mend it.
    #[error("kafka: {what}: {refusal}")]
    Refused {
        /// What was being done.
        what: String,
        /// What Kafka said, with the fix.
        refusal: Refusal,
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
            TransportError::Conflict { .. } | TransportError::Refused { .. } => false,
        }
    }

    /// A failure of `what`, named as a refusal when Kafka refused this site (the error itself
    /// says so, or librdkafka's error callback did meanwhile: a failed login shows up as a
    /// transport failure or a timeout otherwise).
    pub fn of(what: impl Into<String>, source: KafkaError) -> TransportError {
        let what = what.into();
        match Refusal::of_error(&source).or_else(refusal) {
            Some(refusal) => TransportError::Refused { what, refusal },
            None => TransportError::Kafka { what, source },
        }
    }
}

/// Kafka refused this site: a login (wrong SASL user or password, mechanism), an ACL, or the
/// TLS handshake. Definite: sitesync stops and says how to fix it instead of retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// SASL authentication failed.
    Authentication(String),
    /// An ACL does not allow the operation.
    Authorization(String),
    /// The TLS handshake failed (certificate not trusted, wrong host, protocol).
    Tls(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Authentication(why) => write!(
                f,
                "Kafka refused this site's login ({why}): check kafka.properties sasl.username and sasl.password \
                 (and sasl.mechanism, security.protocol) against the user made for this site"
            ),
            Refusal::Authorization(why) => write!(
                f,
                "Kafka's ACLs refused this site's user ({why}): grant the ACLs `sitesync check` lists for this site \
                 (runbook section 4b, \"Kafka with SASL_SSL and ACLs\")"
            ),
            Refusal::Tls(why) => write!(
                f,
                "TLS to Kafka failed ({why}): check kafka.properties ssl.ca.location (the CA that signed the brokers' \
                 certificates) and that bootstrap_servers names hosts the certificates name"
            ),
        }
    }
}

impl Refusal {
    /// The refusal an error code stands for, if any.
    pub fn of_code(code: RDKafkaErrorCode, why: &str) -> Option<Refusal> {
        use RDKafkaErrorCode as C;
        let why = if why.is_empty() { code.to_string() } else { why.to_string() };
        match code {
            C::Authentication | C::SaslAuthenticationFailed => Some(Refusal::Authentication(why)),
            C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::DelegationTokenAuthorizationFailed => Some(Refusal::Authorization(why)),
            C::SSL => Some(Refusal::Tls(why)),
            // An idempotent producer refused a write turns fatal; the reason says why.
            C::Fatal => {
                let lower = why.to_ascii_lowercase();
                if lower.contains("authoriz") {
                    Some(Refusal::Authorization(why))
                } else if lower.contains("authenticat") {
                    Some(Refusal::Authentication(why))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// The refusal one of librdkafka's log lines reports, if any: consumers hand a failed login
    /// back as a bare code, and a broker certificate that does not verify only as a log line.
    pub fn of_log_line(message: &str) -> Option<Refusal> {
        if message.contains("SASL authentication error") || message.contains("Authentication failed") {
            Some(Refusal::Authentication(message.to_string()))
        } else if message.contains("certificate verify failed") {
            // OpenSSL's reason for an untrusted or misnamed certificate, worded by librdkafka
            // either as "SSL handshake failed: ...: certificate verify failed: ..." or bare
            // "error:0A000086:SSL routines::certificate verify failed (after 2ms in state
            // SSL_HANDSHAKE)"; not a broker that merely went away mid-handshake.
            Some(Refusal::Tls(message.to_string()))
        } else {
            None
        }
    }

    /// The refusal a client error stands for, if any.
    pub fn of_error(e: &KafkaError) -> Option<Refusal> {
        e.rdkafka_error_code().and_then(|code| Refusal::of_code(code, &e.to_string()))
    }
}

/// The first refusal any Kafka client of this process met. Process-wide on purpose: librdkafka
/// reports a failed login only through its error callback, on its own threads, and one process
/// is one site with one Kafka identity, so the first refusal is the site's.
static REFUSED: Mutex<Option<Refusal>> = Mutex::new(None);
static REFUSED_NOTICE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Records a refusal (the first one stays).
pub fn note_refusal(r: Refusal) {
    let mut slot = REFUSED.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        tracing::error!(refusal = %r, "kafka refused this site");
        *slot = Some(r);
        REFUSED_NOTICE.notify_waiters();
    }
}

/// The first refusal met so far.
pub fn refusal() -> Option<Refusal> {
    REFUSED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Waits until Kafka refuses this site (for `run`'s supervisor: it stops the process).
pub async fn refused() -> Refusal {
    loop {
        let notified = REFUSED_NOTICE.notified();
        if let Some(r) = refusal() {
            return r;
        }
        notified.await;
    }
}

/// The context of every Kafka client sitesync makes: librdkafka's error callback feeds
/// [`note_refusal`]; other errors are logged as librdkafka's default does.
#[derive(Clone, Copy, Default)]
pub struct Reporting;

impl ClientContext for Reporting {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if let Some(r) = Refusal::of_log_line(message) {
            note_refusal(r);
        }
        if fac == "CONFWARN" {
            // "experimental property" notes about settings sitesync makes on purpose.
            tracing::debug!(facility = fac, "librdkafka: {message}");
            return;
        }
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => tracing::error!(facility = fac, "librdkafka: {message}"),
            L::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
            L::Notice | L::Info => tracing::info!(facility = fac, "librdkafka: {message}"),
            L::Debug => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let refused = error.rdkafka_error_code().and_then(|code| Refusal::of_code(code, reason));
        match refused {
            Some(r) => note_refusal(r),
            // After a refusal the process stops, and librdkafka repeats "all brokers down" every
            // half second until it has: the refusal, logged once, is what the operator needs.
            None if refusal().is_some() => tracing::debug!(error = %error, reason, "librdkafka, after a refusal"),
            None => tracing::warn!(error = %error, reason, "librdkafka"),
        }
    }
}

impl ConsumerContext for Reporting {}

/// The producers sitesync uses.
pub type Producer = FutureProducer<Reporting>;
/// The consumers sitesync uses.
pub type StreamingConsumer = StreamConsumer<Reporting>;

/// Creates a client from `config` with the [`Reporting`] context.
pub fn create<T: rdkafka::config::FromClientConfigAndContext<Reporting>>(config: &ClientConfig, what: &str) -> Result<T, TransportError> {
    config.create_with_context(Reporting).map_err(|e| TransportError::of(what, e))
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
    // On `base` itself, defaults only where `kafka.properties` is silent. Never copied through
    // `config_map()`: it replaces `sasl.password` with "[sanitized for safety]".
    let mut c = base(kafka, PRODUCER_GUARANTEES)?;
    for (k, v) in [
        ("linger.ms", "5"),
        ("batch.num.messages", "10000"),
        ("compression.type", "lz4"),
        ("message.max.bytes", &MAX_MESSAGE_BYTES.to_string()),
        ("queue.buffering.max.kbytes", "262144"),
    ] {
        default(&mut c, k, v);
    }
    Ok(c)
}

/// The applier's consumer: manual assignment, offsets stored in the control database only.
pub fn consumer_config(kafka: &KafkaConfig, group: &str) -> Result<ClientConfig, TransportError> {
    let mut c = base(kafka, CONSUMER_GUARANTEES)?;
    // Prefetch is what bounds the applier's memory while it is behind or blocked: librdkafka
    // otherwise queues up to 100,000 messages (and 64 MB) per partition ahead of the applier.
    // The fetch sizes count compressed bytes, and a fetched batch stays decompressed in memory
    // until its last message is consumed: JSON records compress 3-5x with LZ4, so 8 MB fetches
    // held 54 MB (heaptrack, LIMS benchmark at 10,000 rows/s); 1 MB fetches keep the `run`
    // process at 70 MB. A message larger than the fetch sizes is still returned whole (KIP-74).
    c.set("group.id", group);
    for (k, v) in [
        ("auto.offset.reset", "earliest"),
        ("fetch.max.bytes", &(1024 * 1024).to_string()),
        ("max.partition.fetch.bytes", &(1024 * 1024).to_string()),
        ("queued.min.messages", "5000"),
        ("queued.max.messages.kbytes", "8192"),
        // With a bounded queue, librdkafka waits this long after each fetch that filled it
        // (default 1 s): catching up a backlog, apply would idle a second per fetch.
        ("fetch.queue.backoff.ms", "10"),
        ("receive.message.max.bytes", &(2 * MAX_MESSAGE_BYTES + 1_000_000).to_string()),
        ("fetch.wait.max.ms", "10"),
    ] {
        default(&mut c, k, v);
    }
    Ok(c)
}

/// The control channel's producer: small messages, acknowledged by all in-sync replicas, sent
/// at once (requests and answers are few and someone waits for each).
pub fn control_producer_config(kafka: &KafkaConfig) -> Result<ClientConfig, TransportError> {
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
/// Topics that exist are left as they are (a Kafka administrator may have made them: this
/// site's user then needs no CREATE right); a topic this site may not create is "refused"
/// (the caller decides whether that matters, see [`creation_refused`]).
pub async fn create_topics(
    kafka: &KafkaConfig,
    topics: &[String],
    retention_ms: i64,
) -> Result<Vec<(String, &'static str)>, TransportError> {
    let (kafka_c, topics_c) = (kafka.clone(), topics.to_vec());
    let states = tokio::task::spawn_blocking(move || topic_states(&kafka_c, &topics_c, Duration::from_secs(10)))
        .await
        .map_err(|e| TransportError::Kafka { what: format!("looking up topics: {e}"), source: KafkaError::Canceled })??;
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for (topic, state) in states {
        match state {
            TopicState::Present(_) => out.push((topic, "exists")),
            TopicState::Missing | TopicState::Refused(_) => missing.push(topic),
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    let admin: AdminClient<Reporting> = create(&base(kafka, &[])?, "creating the admin client")?;
    let max = MAX_MESSAGE_BYTES.to_string();
    let retention = retention_ms.to_string();
    let new: Vec<NewTopic> = missing
        .iter()
        .map(|t| {
            NewTopic::new(t, kafka.partitions, TopicReplication::Fixed(kafka.replication_factor))
                .set("max.message.bytes", &max)
                .set("retention.ms", &retention)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(new.iter(), &opts).await.map_err(|e| TransportError::of("creating topics", e))?;
    for r in results {
        match r {
            Ok(t) => out.push((t, "created")),
            Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => out.push((t, "exists")),
            Err((t, code)) if Refusal::of_code(code, "").is_some() => out.push((t, "refused")),
            Err((t, code)) => return Err(TransportError::Kafka { what: format!("creating topic {t}"), source: KafkaError::AdminOp(code) }),
        }
    }
    Ok(out)
}

/// The error for topics that do not exist and that this site may not create.
pub fn creation_refused(kafka: &KafkaConfig, topics: &[String], retention_ms: i64) -> TransportError {
    let retention = if retention_ms < 0 { "retention.ms=-1".to_string() } else { format!("retention.ms={retention_ms}") };
    TransportError::Refused {
        what: format!(
            "topic(s) {} do not exist and this site's Kafka user may not create them: have the Kafka administrator \
             create them ({} partition(s), replication factor {}, max.message.bytes={MAX_MESSAGE_BYTES}, {retention}) or \
             grant Create on them, then run `sitesync init` again",
            topics.join(", "),
            kafka.partitions,
            kafka.replication_factor
        ),
        refusal: Refusal::Authorization("TOPIC_AUTHORIZATION_FAILED on CreateTopics".into()),
    }
}

/// The consumer group id of one of `site`'s consumers. Every group of a site starts with
/// `sitesync.<federation>.<site>.`, so one prefixed ACL covers them (no offsets are committed:
/// positions live in the control database).
pub fn group_of(config: &Config, site: &str, part: &str) -> String {
    format!("{}{part}", group_prefix(config, site))
}

fn group_prefix(config: &Config, site: &str) -> String {
    format!("sitesync.{}.{site}.", config.federation.name)
}

/// One ACL a site's Kafka user needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// `topic` or `group`.
    pub resource: &'static str,
    /// The resource's name (a prefix where `prefixed`).
    pub name: String,
    /// Whether `name` is a prefix.
    pub prefixed: bool,
    /// The operations (Kafka's names).
    pub operations: Vec<&'static str>,
    /// What sitesync does with it.
    pub why: &'static str,
}

/// Every ACL `site`'s Kafka user needs, least privilege: write its own topics, read its
/// origins', read and write the control topic, and its own consumer groups. `Create` only where
/// `init` at this site creates the topic (drop it when an administrator creates the topics).
pub fn acls(config: &Config, site: &str) -> Vec<Acl> {
    let topic = |name: String, operations: Vec<&'static str>, why| Acl { resource: "topic", name, prefixed: false, operations, why };
    let mut out = vec![
        topic(config.topic_of(site), vec!["Write", "Describe", "Create"], "capture publishes this site's changes"),
        topic(config.heartbeat_topic_of(site), vec!["Write", "Describe", "Create"], "capture's heartbeats"),
        topic(config.control_topic(), vec!["Read", "Write", "Describe", "Create"], "verify and join requests and answers"),
    ];
    for export in config.export_topics_of(site) {
        out.push(topic(export, vec!["Write", "Describe", "Create"], "the export stream for Kafka Connect sinks ([export])"));
    }
    for origin in config.origins_of(site) {
        out.push(topic(config.topic_of(&origin), vec!["Read", "Describe"], "apply reads an origin's changes"));
        out.push(topic(config.heartbeat_topic_of(&origin), vec!["Read", "Describe"], "apply's lag of an idle origin"));
    }
    out.push(Acl {
        resource: "group",
        name: group_prefix(config, site),
        prefixed: true,
        operations: vec!["Read", "Describe"],
        why: "this site's consumers (no offsets are committed)",
    });
    out
}

impl Acl {
    /// The `kafka-acls.sh` command that grants it to `principal` (`User:<sasl.username>`).
    pub fn command(&self, bootstrap: &str, principal: &str) -> String {
        let ops: String = self.operations.iter().map(|o| format!(" --operation {o}")).collect();
        format!(
            "kafka-acls.sh --bootstrap-server {bootstrap} --command-config admin.properties --add --allow-principal {principal}{ops} --{} {}{}",
            self.resource,
            self.name,
            if self.prefixed { " --resource-pattern-type prefixed" } else { "" }
        )
    }
}

/// `User:<sasl.username>` of the configuration (`User:<this site's user>` when there is none).
pub fn principal(kafka: &KafkaConfig) -> String {
    format!("User:{}", kafka.properties.get("sasl.username").map(String::as_str).unwrap_or("<this site's user>"))
}

/// Whether clients talk to the brokers without TLS, and whether any bootstrap server is not
/// on this host (then the records and any SASL/PLAIN password cross the network in clear).
pub fn plaintext_across_network(kafka: &KafkaConfig) -> (bool, bool) {
    let protocol = kafka.properties.get("security.protocol").map(|p| p.to_ascii_uppercase()).unwrap_or_else(|| "PLAINTEXT".into());
    let plaintext = protocol == "PLAINTEXT" || protocol == "SASL_PLAINTEXT";
    let remote = kafka.bootstrap_servers.split(',').map(str::trim).filter(|s| !s.is_empty()).any(|server| {
        let server = server.rsplit_once("://").map(|(_, s)| s).unwrap_or(server);
        let host = match server.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => server.rsplit_once(':').map(|(h, _)| h).unwrap_or(server),
        };
        let loopback =
            host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false);
        !loopback
    });
    (plaintext, remote)
}

/// What the metadata says about one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicState {
    /// It exists with this many partitions.
    Present(usize),
    /// No such topic.
    Missing,
    /// This site's user may not see it.
    Refused(RDKafkaErrorCode),
}

/// What the metadata says about each of `topics` (blocking; run off the async runtime).
pub fn topic_states(kafka: &KafkaConfig, topics: &[String], timeout: Duration) -> Result<Vec<(String, TopicState)>, TransportError> {
    let consumer: BaseConsumer<Reporting> = create(&base(kafka, &[])?, "creating a metadata client")?;
    let answer = consumer.fetch_metadata(None, timeout);
    // Nothing else polls this client: its error events (a failed login) come out here.
    for _ in 0..1000 {
        match consumer.poll(Duration::ZERO) {
            None => break,
            Some(Err(e)) => {
                if let Some(r) = Refusal::of_error(&e) {
                    note_refusal(r);
                }
            }
            Some(Ok(_)) => {}
        }
    }
    let md = answer.map_err(|e| TransportError::of("fetching metadata", e))?;
    let state = |m: &rdkafka::metadata::MetadataTopic| match m.error().map(RDKafkaErrorCode::from) {
        None => TopicState::Present(m.partitions().len()),
        Some(code) if Refusal::of_code(code, "").is_some() => TopicState::Refused(code),
        Some(_) => TopicState::Missing,
    };
    let mut out = Vec::new();
    for t in topics {
        let found = match md.topics().iter().find(|m| m.name() == t) {
            Some(m) => state(m),
            // The list of every topic leaves out the ones this user may not see: asked by
            // name, Kafka says which.
            None => match consumer.fetch_metadata(Some(t), timeout) {
                Ok(one) => one.topics().iter().find(|m| m.name() == t).map(state).unwrap_or(TopicState::Missing),
                Err(e) => return Err(TransportError::of(format!("fetching the metadata of {t}"), e)),
            },
        };
        out.push((t.clone(), found));
    }
    Ok(out)
}

/// Topic -> partition count, for the topics that exist (blocking; run off the async runtime);
/// a topic this site may not see is an error.
pub fn topic_partitions(kafka: &KafkaConfig, topics: &[String], timeout: Duration) -> Result<Vec<(String, Option<usize>)>, TransportError> {
    topic_states(kafka, topics, timeout)?
        .into_iter()
        .map(|(t, state)| match state {
            TopicState::Present(n) => Ok((t, Some(n))),
            TopicState::Missing => Ok((t, None)),
            TopicState::Refused(code) => Err(TransportError::Refused {
                what: format!("reading the metadata of topic {t}"),
                refusal: Refusal::Authorization(code.to_string()),
            }),
        })
        .collect()
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

    #[test]
    fn the_sasl_password_reaches_librdkafka_in_every_configuration() {
        // config_map() would have turned it into "[sanitized for safety]".
        let k = kafka(&[("sasl.password", "s3cret"), ("compression.type", "zstd")]);
        assert_eq!(producer_config(&k).unwrap().get("sasl.password"), Some("s3cret"));
        assert_eq!(producer_config(&k).unwrap().get("compression.type"), Some("zstd"), "the user's tuning wins");
        assert_eq!(producer_config(&k).unwrap().get("linger.ms"), Some("5"), "defaults where the user is silent");
        assert_eq!(consumer_config(&k, "g").unwrap().get("sasl.password"), Some("s3cret"));
        assert_eq!(control_producer_config(&k).unwrap().get("sasl.password"), Some("s3cret"));
        assert_eq!(control_consumer_config(&k, "g").unwrap().get("sasl.password"), Some("s3cret"));
    }

    #[test]
    fn refusals_are_told_from_transport_failures() {
        use RDKafkaErrorCode as C;
        assert!(matches!(Refusal::of_code(C::Authentication, "x"), Some(Refusal::Authentication(_))));
        assert!(matches!(Refusal::of_code(C::TopicAuthorizationFailed, ""), Some(Refusal::Authorization(_))));
        assert!(matches!(Refusal::of_code(C::GroupAuthorizationFailed, ""), Some(Refusal::Authorization(_))));
        assert!(matches!(Refusal::of_code(C::SSL, "certificate verify failed"), Some(Refusal::Tls(_))));
        assert!(matches!(Refusal::of_code(C::Fatal, "Fatal error: Broker: Topic authorization failed"), Some(Refusal::Authorization(_))));
        assert_eq!(Refusal::of_code(C::Fatal, "Fatal error: Local: Inconsistent state"), None);
        assert_eq!(Refusal::of_code(C::BrokerTransportFailure, ""), None);
        assert!(!TransportError::Refused { what: "x".into(), refusal: Refusal::Authentication("y".into()) }.is_unreachable());
    }

    #[test]
    fn librdkafkas_log_lines_name_a_refusal_in_either_wording() {
        // Both wordings of an untrusted broker certificate, as librdkafka 2.12 logged them.
        let handshake = "[thrd:sasl_ssl://127.0.0.1:9094/bootstrap]: sasl_ssl://127.0.0.1:9094/bootstrap: SSL handshake failed: \
                         error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified";
        let bare = "[thrd:sasl_ssl://127.0.0.1:9094/bootstrap]: sasl_ssl://127.0.0.1:9094/bootstrap: \
                    error:0A000086:SSL routines::certificate verify failed (after 2ms in state SSL_HANDSHAKE)";
        assert!(matches!(Refusal::of_log_line(handshake), Some(Refusal::Tls(_))));
        assert!(matches!(Refusal::of_log_line(bare), Some(Refusal::Tls(_))));
        let login = "sasl_ssl://127.0.0.1:9094/bootstrap: SASL authentication error: Authentication failed during authentication";
        assert!(matches!(Refusal::of_log_line(login), Some(Refusal::Authentication(_))));
        // A broker that went away mid-handshake is unreachable, not a refusal.
        assert_eq!(Refusal::of_log_line("sasl_ssl://127.0.0.1:9094/bootstrap: Disconnected (after 3ms in state SSL_HANDSHAKE)"), None);
        assert_eq!(Refusal::of_log_line("127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused"), None);
    }

    #[test]
    fn plaintext_is_told_apart_on_loopback_and_across_the_network() {
        let mut k = kafka(&[]);
        assert_eq!(plaintext_across_network(&k), (true, false));
        k.bootstrap_servers = "127.0.0.1:9092, localhost:9093,[::1]:9094".into();
        assert_eq!(plaintext_across_network(&k), (true, false));
        k.bootstrap_servers = "127.0.0.1:9092,kafka.example.edu:9092".into();
        assert_eq!(plaintext_across_network(&k), (true, true));
        k.properties.insert("security.protocol".into(), "sasl_ssl".into());
        assert_eq!(plaintext_across_network(&k), (false, true));
        k.properties.insert("security.protocol".into(), "SASL_PLAINTEXT".into());
        assert_eq!(plaintext_across_network(&k), (true, true));
    }
}
