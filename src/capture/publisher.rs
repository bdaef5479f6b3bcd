//! Publishing to Kafka with the checkpoint rule: the resume position becomes durable only after
//! Kafka acknowledged every record before it.
//!
//! Records are handed to librdkafka asynchronously (it batches them); their delivery futures go,
//! in order, into a bounded channel together with transaction boundaries. A tracker task awaits
//! the futures in that order and advances the acknowledged position at each boundary. A full
//! channel blocks the binlog reader: a slow Kafka slows reading, memory stays bounded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::CaptureError;
use crate::control::Control;

pub use crate::control::Checkpoint;

enum InFlight {
    Record(DeliveryFuture, Instant),
    Boundary { checkpoint: Checkpoint, published: bool },
}

#[derive(Default)]
struct Acked {
    checkpoint: Option<Checkpoint>,
    /// Whether records were acknowledged since the checkpoint was last written.
    published_since_write: bool,
}

/// The Kafka side of capture.
pub struct Publisher {
    producer: crate::kafka::Producer,
    topic: String,
    tx: Option<mpsc::Sender<InFlight>>,
    tracker: Option<JoinHandle<Result<(), CaptureError>>>,
    acked: Arc<Mutex<Acked>>,
    writer: Option<JoinHandle<()>>,
    writer_stop: Option<tokio::sync::oneshot::Sender<()>>,
    control: Control,
    site: String,
}

/// How long stopping waits for Kafka to acknowledge what is in flight.
const FLUSH_ON_STOP: Duration = Duration::from_secs(10);

/// An idle site still writes its position this often, so it never falls behind retention.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(60);

impl Publisher {
    /// Starts the tracker and the checkpoint writer.
    pub fn start(
        producer: crate::kafka::Producer,
        topic: String,
        publish_duration: prometheus::Histogram,
        max_in_flight: usize,
        control: Control,
        site: String,
        checkpoint_every: Duration,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<InFlight>(max_in_flight.max(1));
        let acked = Arc::new(Mutex::new(Acked::default()));
        let tracker_acked = acked.clone();
        let tracker = tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                match item {
                    InFlight::Record(fut, sent) => match fut.await {
                        Ok(Ok(_)) => publish_duration.observe(sent.elapsed().as_secs_f64()),
                        Ok(Err((e, _))) => return Err(CaptureError::Delivery(e)),
                        Err(_) => return Err(CaptureError::Delivery(KafkaError::Canceled)),
                    },
                    InFlight::Boundary { checkpoint, published } => {
                        let mut a = tracker_acked.lock().expect("acked lock");
                        a.checkpoint = Some(checkpoint);
                        a.published_since_write |= published;
                    }
                }
            }
            Ok(())
        });
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
        let writer_acked = acked.clone();
        let writer_control = control.clone();
        let writer_site = site.clone();
        let writer = tokio::spawn(async move {
            let mut last_written: Option<Checkpoint> = None;
            let mut last_write = Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(checkpoint_every) => {}
                    _ = &mut stop_rx => return,
                }
                let (cp, published) = {
                    let a = writer_acked.lock().expect("acked lock");
                    (a.checkpoint.clone(), a.published_since_write)
                };
                let Some(cp) = cp else { continue };
                if Some(&cp) == last_written.as_ref() {
                    continue;
                }
                // Writing the checkpoint is itself a binlog transaction: without this rule an
                // idle site would write one every interval forever.
                if !published && last_write.elapsed() < IDLE_CHECKPOINT {
                    continue;
                }
                match writer_control.save_checkpoint(&writer_site, &cp).await {
                    Ok(()) => {
                        writer_acked.lock().expect("acked lock").published_since_write = false;
                        last_written = Some(cp);
                        last_write = Instant::now();
                    }
                    Err(e) => tracing::warn!(error = %e, "could not write the capture checkpoint; will retry"),
                }
            }
        });
        Self {
            producer,
            topic,
            tx: Some(tx),
            tracker: Some(tracker),
            acked,
            writer: Some(writer),
            writer_stop: Some(stop_tx),
            control,
            site,
        }
    }

    async fn push(&mut self, item: InFlight) -> Result<(), CaptureError> {
        let tx = self.tx.as_ref().expect("publisher used after finish");
        if tx.send(item).await.is_err() {
            return Err(self.tracker_error().await);
        }
        Ok(())
    }

    async fn tracker_error(&mut self) -> CaptureError {
        match self.tracker.take() {
            Some(handle) => match handle.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => CaptureError::Internal("delivery tracker stopped".into()),
                Err(e) => CaptureError::Internal(format!("delivery tracker panicked: {e}")),
            },
            None => CaptureError::Internal("delivery tracker stopped".into()),
        }
    }

    /// Hands one record to Kafka; waits while librdkafka's queue is full.
    pub async fn send(&mut self, key: &[u8], payload: &[u8]) -> Result<(), CaptureError> {
        loop {
            match self.producer.send_result(FutureRecord::to(&self.topic).key(key).payload(payload)) {
                Ok(fut) => return self.push(InFlight::Record(fut, Instant::now())).await,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(CaptureError::Kafka(e)),
            }
        }
    }

    /// Sends a record to another topic (the export stream), tracked like the site's records:
    /// the checkpoint passes it only once Kafka has it. `payload` None is a tombstone.
    pub async fn send_to(&mut self, topic: &str, key: &[u8], payload: Option<&[u8]>) -> Result<(), CaptureError> {
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(topic).key(key);
            if let Some(p) = payload {
                record = record.payload(p);
            }
            match self.producer.send_result(record) {
                Ok(fut) => return self.push(InFlight::Record(fut, Instant::now())).await,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(CaptureError::Kafka(e)),
            }
        }
    }

    /// Tells appliers that capture has read everything the server has (the binlog is idle):
    /// best effort, outside the checkpointed stream.
    pub fn heartbeat(&self, topic: &str, payload: &[u8]) {
        match self.producer.send_result(FutureRecord::<[u8], [u8]>::to(topic).payload(payload)) {
            Ok(delivery) => drop(delivery),
            Err((e, _)) => tracing::debug!(error = %e, "heartbeat not sent"),
        }
    }

    /// Marks a transaction boundary: once every record before it is acknowledged, reading may
    /// resume after it.
    pub async fn boundary(&mut self, checkpoint: Checkpoint, published: bool) -> Result<(), CaptureError> {
        self.push(InFlight::Boundary { checkpoint, published }).await
    }

    /// Waits for every record to be acknowledged, then writes the final checkpoint.
    ///
    /// Records never time out in the producer, so with Kafka unreachable the flush would never
    /// end: after [`FLUSH_ON_STOP`] what is still unacknowledged is purged. Nothing is lost: the
    /// checkpoint stays before it, and the next start publishes it again.
    pub async fn finish(mut self) -> Result<(), CaptureError> {
        drop(self.tx.take());
        let producer = self.producer.clone();
        // Flushing is blocking in librdkafka: keep it off the async workers.
        let flushed = tokio::task::spawn_blocking(move || producer.flush(FLUSH_ON_STOP)).await;
        let purged = !matches!(flushed, Ok(Ok(())));
        if purged {
            tracing::warn!(site = %self.site, "Kafka did not acknowledge every record in time; they will be published again at the next start");
            self.producer.purge(PurgeConfig::default().queue().inflight());
        }
        let tracked = match self.tracker.take() {
            Some(h) => h.await.unwrap_or_else(|e| Err(CaptureError::Internal(e.to_string()))),
            None => Ok(()),
        };
        // Purged records fail their delivery: expected when stopping, not an error.
        let tracked = if purged { Ok(()) } else { tracked };
        if let Some(stop) = self.writer_stop.take() {
            let _ = stop.send(());
        }
        if let Some(w) = self.writer.take() {
            let _ = w.await;
        }
        let cp = self.acked.lock().expect("acked lock").checkpoint.clone();
        if let Some(cp) = cp {
            self.control.save_checkpoint(&self.site, &cp).await.map_err(CaptureError::Control)?;
        }
        tracked
    }
}
