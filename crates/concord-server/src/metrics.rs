//! What operators watch: the server's figures, served at `GET /metrics` in the Prometheus
//! text format (OpenMetrics text, which Prometheus scrapes) and listed in `docs/server.md`.
//!
//! Everything counted on a hot path is an atomic: counters and gauges are atomics, and the
//! refusal counters are created up front, one per known error code, so counting a refusal
//! takes no lock. The two histograms (a mutex each) are observed once per store commit,
//! not per operation.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use concord_protocol::{ErrorCode, ServerMessage, ServerPush};

/// The label of a refusal: the error code's name (`seq_gap`, `permission_denied`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refusal {
    reason: String,
}

/// The label of a backup: `written` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackupResult {
    result: &'static str,
}

/// The server's metrics; one per server (tests run several servers in one process).
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Sessions past their handshake, open now.
    pub(crate) sessions: Gauge,
    /// Model tasks holding a loaded model now.
    pub(crate) loaded_models: Gauge,
    /// Acks sent: submissions committed and acknowledged to their client.
    pub(crate) acked_submissions: Counter,
    /// `ResyncPage`s sent.
    pub(crate) resync_pages: Counter,
    /// Store commits by the writer: seconds each took (retries included).
    pub(crate) commit_seconds: Histogram,
    /// Jobs (each a model's writes and the messages waiting on them) per store commit.
    pub(crate) commit_group_jobs: Histogram,
    /// Refusals by error code, indexed like [`ErrorCode::ALL`], then one for unknown codes.
    refused: Vec<Counter>,
    /// Backups asked for, by result.
    backups: Family<BackupResult, Counter>,
    /// When the last backup was written, in Unix seconds (0 before the first).
    last_backup: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("concord");
        let sessions = Gauge::default();
        registry.register("sessions", "WebSocket sessions past their handshake", sessions.clone());
        let loaded_models = Gauge::default();
        registry.register("loaded_models", "Models loaded in memory", loaded_models.clone());
        let acked_submissions = Counter::default();
        registry.register(
            "acked_submissions",
            "Submissions committed and acknowledged (each one version of its model)",
            acked_submissions.clone(),
        );
        let resync_pages = Counter::default();
        registry.register("resync_pages", "Resync pages sent", resync_pages.clone());
        // 50 µs to about 3.3 s.
        let commit_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 17));
        registry.register_with_unit(
            "commit",
            "Duration of each store commit, retries included",
            Unit::Seconds,
            commit_seconds.clone(),
        );
        // 1 to 4,096 jobs.
        let commit_group_jobs = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        registry.register(
            "commit_group_jobs",
            "Jobs (a model's writes and the messages waiting on them) per store commit",
            commit_group_jobs.clone(),
        );
        let family = Family::<Refusal, Counter>::default();
        registry.register("refused", "Requests and submissions refused, by reason", family.clone());
        let names = ErrorCode::ALL.iter().map(|code| code.to_string());
        let refused = names
            .chain(["unknown".to_string()])
            .map(|reason| family.get_or_create(&Refusal { reason }).clone())
            .collect();
        let backups = Family::<BackupResult, Counter>::default();
        registry.register("backups", "Backups of the store asked for, by result", backups.clone());
        for result in ["written", "failed"] {
            let _ = backups.get_or_create(&BackupResult { result });
        }
        let last_backup = Gauge::default();
        registry.register_with_unit(
            "last_backup_time",
            "When the last backup of the store was written, in Unix time",
            Unit::Seconds,
            last_backup.clone(),
        );
        Metrics {
            registry,
            sessions,
            loaded_models,
            acked_submissions,
            resync_pages,
            commit_seconds,
            commit_group_jobs,
            refused,
            backups,
            last_backup,
        }
    }

    /// Counts a backup, written (at `unix_seconds`) or failed.
    pub(crate) fn backed_up(&self, written_at: Option<u64>) {
        let result = if written_at.is_some() { "written" } else { "failed" };
        self.backups.get_or_create(&BackupResult { result }).inc();
        if let Some(at) = written_at {
            self.last_backup.set(i64::try_from(at).unwrap_or(i64::MAX));
        }
    }

    /// Counts a refusal with `code`.
    pub(crate) fn refused(&self, code: ErrorCode) {
        let index = ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(ErrorCode::ALL.len());
        self.refused[index].inc();
    }

    /// Counts what a message going out says: an ack, a resync page, a refusal.
    pub(crate) fn sent(&self, message: &ServerMessage) {
        match message {
            ServerMessage::Push(ServerPush::Ack { .. }) => {
                self.acked_submissions.inc();
            }
            ServerMessage::Push(ServerPush::ResyncPage { .. }) => {
                self.resync_pages.inc();
            }
            ServerMessage::Push(ServerPush::SubmitRejected { error, .. })
            | ServerMessage::Error { error, .. } => self.refused(error.code),
            _ => {}
        }
    }

    /// The metrics in the text format.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
