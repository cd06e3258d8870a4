//! The way from the data path to the collector for query spans: a bounded queue the data path
//! appends to under a short lock, and an export thread that takes the queue whole, encodes it
//! and sends it. The data path never waits for the collector: a full queue drops the span and
//! counts it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::metrics::Metrics;
use super::query_spans::{QueryRequests, QuerySpan, WallClock};

/// Why an export request did not reach the collector.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// No answer: connection, TLS or timeout.
    #[error("OTLP export failed: {0}")]
    Unreachable(String),
    /// The collector answered with a failure.
    #[error("the collector refused the spans: {0}")]
    Refused(String),
    /// The request could not be compressed.
    #[error("cannot compress the spans: {0}")]
    Compression(#[source] std::io::Error),
}

/// Where encoded `ExportTraceServiceRequest`s go: the collector over OTLP/HTTP or OTLP/gRPC.
pub trait Collector: Send + Sync + std::fmt::Debug + 'static {
    /// Sends one request and waits for the collector's answer. Called from export threads
    /// only, never from the runtime's.
    ///
    /// # Errors
    /// [`ExportError`] when the spans did not arrive.
    fn send(&self, body: Vec<u8>) -> Result<(), ExportError>;
}

/// Spans allowed in the export pipelines at once (queued or being sent); counts what is
/// dropped for want of room and what the collector got.
#[derive(Debug)]
pub struct ExportBudget {
    in_flight: AtomicUsize,
    limit: usize,
    metrics: Arc<Metrics>,
}

impl ExportBudget {
    /// A budget of `limit` spans.
    #[must_use]
    pub fn new(limit: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            limit,
            metrics,
        }
    }

    /// Takes room for one span, or counts it as dropped when there is none.
    pub fn admit(&self) -> bool {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.metrics.spans_dropped("queue_full", 1);
            return false;
        }
        true
    }

    /// Gives back the room of `count` spans whose export ended, and counts how it ended.
    pub fn settle<E: std::fmt::Display>(&self, count: usize, result: Result<(), &E>) {
        self.in_flight.fetch_sub(count, Ordering::AcqRel);
        match result {
            Ok(()) => self.metrics.spans_exported(count as u64),
            Err(e) => {
                self.metrics.spans_dropped("export_failed", count as u64);
                tracing::debug!(error = %e, spans = count, "OTLP export failed");
            }
        }
    }
}

/// How the export thread batches, from the `OTEL_BSP_*` settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// The longest a span waits in the queue before an export (`OTEL_BSP_SCHEDULE_DELAY`).
    pub delay: Duration,
    /// Spans per request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`); a queue this long is exported at
    /// once.
    pub max_batch: usize,
    /// The longest a flush waits for the export it asked for.
    pub flush_timeout: Duration,
}

/// What the data path and the export thread share.
#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the export thread: a full batch, a flush or the end.
    work: Condvar,
    /// Wakes those waiting for a flush.
    flushed: Condvar,
}

#[derive(Debug)]
struct QueueState {
    spans: Vec<QuerySpan>,
    /// Flushes asked for, and the number of the last one done.
    flushes_asked: u64,
    flushes_done: u64,
    closing: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The state stays consistent at every unlock: a panic elsewhere leaves nothing half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The query spans' queue and its export thread.
#[derive(Debug)]
pub struct SpanLane {
    queue: Arc<Queue>,
    budget: Arc<ExportBudget>,
    settings: BatchSettings,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl SpanLane {
    /// Starts the export thread, sending the requests of `requests` to `collector`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(
        collector: Arc<dyn Collector>,
        requests: QueryRequests,
        settings: BatchSettings,
        budget: Arc<ExportBudget>,
    ) -> std::io::Result<Self> {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                spans: Vec::with_capacity(settings.max_batch),
                flushes_asked: 0,
                flushes_done: 0,
                closing: false,
            }),
            work: Condvar::new(),
            flushed: Condvar::new(),
        });
        let exporter = Exporter {
            queue: Arc::clone(&queue),
            budget: Arc::clone(&budget),
            collector,
            requests,
            settings,
        };
        let thread = std::thread::Builder::new()
            .name("pgsidecar-otlp".into())
            .spawn(move || exporter.run())?;
        Ok(Self {
            queue,
            budget,
            settings,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `span`, or drops and counts it when the pipeline is full.
    pub fn push(&self, span: QuerySpan) {
        if !self.budget.admit() {
            return;
        }
        let mut state = self.queue.lock();
        state.spans.push(span);
        if state.spans.len() == self.settings.max_batch {
            self.queue.work.notify_one();
        }
    }

    /// Exports what is queued now and waits for it, at most the flush timeout. Blocks: call it
    /// from a blocking context.
    pub fn flush(&self) {
        let mut state = self.queue.lock();
        state.flushes_asked += 1;
        let asked = state.flushes_asked;
        self.queue.work.notify_one();
        let _flushed = self
            .queue
            .flushed
            .wait_timeout_while(state, self.settings.flush_timeout, |state| {
                state.flushes_done < asked && !state.closing
            })
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Exports what is queued and stops the export thread. Blocks: call it from a blocking
    /// context.
    pub fn shutdown(&self) {
        self.close();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::warn!("the OTLP export thread panicked");
        }
    }

    fn close(&self) {
        self.queue.lock().closing = true;
        self.queue.work.notify_one();
    }
}

impl Drop for SpanLane {
    /// The thread exports what is left and ends by itself; nobody waits for it here.
    fn drop(&mut self) {
        self.close();
    }
}

/// The export thread's side.
struct Exporter {
    queue: Arc<Queue>,
    budget: Arc<ExportBudget>,
    collector: Arc<dyn Collector>,
    requests: QueryRequests,
    settings: BatchSettings,
}

impl Exporter {
    fn run(mut self) {
        loop {
            let (spans, flush, closing) = self.next_batch();
            for batch in spans.chunks(self.settings.max_batch) {
                let body = self.requests.body(batch, WallClock::now());
                let result = self.collector.send(body);
                self.budget.settle(batch.len(), result.as_ref().map(drop));
            }
            drop(spans);
            let mut state = self.queue.lock();
            state.flushes_done = flush;
            self.queue.flushed.notify_all();
            if closing && state.spans.is_empty() {
                return;
            }
        }
    }

    /// Waits for a full batch, a flush, the end or the delay, then takes everything queued.
    /// Returns the spans, the flush they answer and whether the lane is closing.
    fn next_batch(&self) -> (Vec<QuerySpan>, u64, bool) {
        let max_batch = self.settings.max_batch;
        let (mut state, _) = self
            .queue
            .work
            .wait_timeout_while(self.queue.lock(), self.settings.delay, |state| {
                state.spans.len() < max_batch
                    && state.flushes_done == state.flushes_asked
                    && !state.closing
            })
            .unwrap_or_else(PoisonError::into_inner);
        let spans = std::mem::replace(
            &mut state.spans,
            Vec::with_capacity(self.settings.max_batch),
        );
        (spans, state.flushes_asked, state.closing)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_sdk::Resource;
    use prost::Message as _;

    use super::super::query_spans::EncodedAttributes;
    use super::super::statements::StatementFacts;
    use super::*;

    /// Keeps the span ids of each request it is sent, or refuses them all.
    #[derive(Debug, Default)]
    struct Keeper {
        requests: Mutex<Vec<Vec<u64>>>,
        refuse: bool,
    }

    impl Keeper {
        fn spans(&self) -> Vec<u64> {
            self.requests.lock().unwrap().concat()
        }
    }

    impl Collector for Keeper {
        fn send(&self, body: Vec<u8>) -> Result<(), ExportError> {
            if self.refuse {
                return Err(ExportError::Refused("HTTP 503".into()));
            }
            let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
            let ids = request.resource_spans[0].scope_spans[0]
                .spans
                .iter()
                .map(|s| u64::from_be_bytes(s.span_id.as_slice().try_into().unwrap()));
            self.requests.lock().unwrap().push(ids.collect());
            Ok(())
        }
    }

    fn span(id: u64) -> QuerySpan {
        QuerySpan {
            trace_id: 1,
            span_id: id,
            parent_span_id: None,
            started: Instant::now(),
            elapsed: Duration::from_micros(10),
            session: EncodedAttributes::default(),
            statement: Arc::new(StatementFacts::of(b"SELECT 1")),
            sqlstate: None,
            rows: 1,
            wait: Duration::ZERO,
            server: Duration::from_micros(10),
        }
    }

    fn lane(
        keeper: &Arc<Keeper>,
        limit: usize,
        max_batch: usize,
        metrics: &Arc<Metrics>,
    ) -> SpanLane {
        let settings = BatchSettings {
            // No scheduled export during a test: spans stay queued until a full batch or a flush.
            delay: Duration::from_secs(600),
            max_batch,
            flush_timeout: Duration::from_secs(30),
        };
        let budget = Arc::new(ExportBudget::new(limit, Arc::clone(metrics)));
        let collector: Arc<dyn Collector> = Arc::clone(keeper) as Arc<dyn Collector>;
        let requests = QueryRequests::new(Resource::builder_empty().build());
        SpanLane::start(collector, requests, settings, budget).unwrap()
    }

    #[test]
    fn a_full_pipeline_drops_and_counts_instead_of_queueing() {
        let metrics = Arc::new(Metrics::new());
        let keeper = Arc::new(Keeper::default());
        let lane = lane(&keeper, 3, 100, &metrics);
        for id in 1..=5 {
            lane.push(span(id));
        }
        assert_eq!(metrics.spans_dropped_count("queue_full"), 2);
        assert!(keeper.spans().is_empty(), "nothing sent before a flush");
        lane.flush();
        assert_eq!(keeper.spans(), [1, 2, 3]);
        // Room again once exported.
        lane.push(span(6));
        lane.flush();
        assert_eq!(keeper.spans(), [1, 2, 3, 6]);
        assert_eq!(metrics.spans_dropped_count("queue_full"), 2);
        assert!(
            metrics
                .encode()
                .contains("pgsidecar_spans_exported_total 4")
        );
        lane.shutdown();
    }

    #[test]
    fn a_refused_export_is_counted_and_frees_its_room() {
        let metrics = Arc::new(Metrics::new());
        let keeper = Arc::new(Keeper {
            refuse: true,
            ..Keeper::default()
        });
        let lane = lane(&keeper, 2, 2, &metrics);
        lane.push(span(1));
        lane.push(span(2));
        lane.flush();
        assert_eq!(metrics.spans_dropped_count("export_failed"), 2);
        lane.push(span(3));
        assert_eq!(metrics.spans_dropped_count("queue_full"), 0);
        lane.shutdown();
        assert_eq!(metrics.spans_dropped_count("export_failed"), 3);
    }

    #[test]
    fn a_request_carries_at_most_a_batch_and_spans_keep_their_order() {
        let metrics = Arc::new(Metrics::new());
        let keeper = Arc::new(Keeper::default());
        let lane = lane(&keeper, 100, 2, &metrics);
        for id in 1..=5 {
            lane.push(span(id));
        }
        lane.flush();
        let requests = keeper.requests.lock().unwrap().clone();
        assert!(requests.iter().all(|r| r.len() <= 2), "{requests:?}");
        assert_eq!(requests.concat(), [1, 2, 3, 4, 5]);
        lane.shutdown();
    }

    #[test]
    fn shutting_down_exports_what_is_queued() {
        let metrics = Arc::new(Metrics::new());
        let keeper = Arc::new(Keeper::default());
        let lane = lane(&keeper, 100, 100, &metrics);
        for id in 1..=3 {
            lane.push(span(id));
        }
        lane.shutdown();
        assert_eq!(keeper.spans(), [1, 2, 3]);
    }
}
