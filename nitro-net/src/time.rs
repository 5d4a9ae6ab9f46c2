//! A clock the enclave can rely on: the parent answers time requests over any transport, the
//! enclave measures the round trip, rejects imprecise or implausible answers, cross-checks
//! them against a TLS-authenticated time source when one is configured, and reports the
//! offset or steps the system clock.
//!
//! # Trust model
//!
//! The parent controls the enclave's only channel, so **the parent can lie**. What this module
//! guarantees, and what it does not:
//!
//! - An answer is accepted only if its round trip is below [`TimeConfig::max_rtt`]; the
//!   estimated offset is then exact to within ± RTT/2 *if the parent is honest*.
//! - With [`TimeConfig::max_offset`] set, an answer that would move the clock by more than that
//!   is refused: a lying parent can shift the enclave's time only *within that bound* per sync
//!   (and, over many syncs, further: the bound limits the rate, not the total).
//! - With a [`TrustedTime`] source configured (typically the `Date` header of a response
//!   received over TLS from a server whose certificate the enclave verified, such as AWS KMS;
//!   see [`TimeAnchor::record_http_date`]), every answer is also compared with that source's
//!   time, carried forward with the enclave's monotonic clock: a parent that lies by more than
//!   the source's uncertainty + RTT/2 + [`TimeConfig::trusted_tolerance`] is detected and the
//!   answer refused ([`TimeError::ParentDisagrees`]). The authenticated source bounds the lie
//!   to about a second (the `Date` resolution) plus the request's round trip; the parent
//!   then only adds precision.
//! - The parent can always *delay* answers (RTT check) or refuse them: time becomes
//!   unavailable, never silently wrong beyond the bounds above.
//!
//! The parent side is served by [`EgressServer`](crate::EgressServer) (time service on by
//! default), so the enclave reaches it at the same address as the egress tunnel.
//!
//! ```no_run
//! # async fn f() -> Result<(), nitro_net::Error> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use nitro_net::time::{StepPolicy, TimeAnchor, TimeClient, TimeConfig};
//!
//! let anchor = Arc::new(TimeAnchor::new("kms.us-east-1.amazonaws.com"));
//! let mut config = TimeConfig::default();
//! config.max_offset = Some(Duration::from_secs(300));
//! config.step = StepPolicy::Step { min_offset: Duration::from_millis(100) };
//! let sync = TimeClient::new("vsock:8000".parse()?)
//!     .config(config)
//!     .trusted_source(anchor.clone())
//!     .spawn();
//! // ... the KMS client calls anchor.record_http_date(date, sent, received) on each response.
//! let now = sync.now(); // local clock + the last accepted offset (zero once stepped)
//! # Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::client::read_response;
use crate::egress::from_unix_parts;
use crate::protocol::{Request, Response};
use crate::{Addr, Error, ProtocolError, TimeError};

/// A signed clock offset (reference minus local clock), in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ClockOffset {
    nanos: i64,
}

impl ClockOffset {
    /// Zero offset.
    pub const ZERO: ClockOffset = ClockOffset { nanos: 0 };

    /// An offset of `nanos` nanoseconds (positive: the reference is ahead of the local clock).
    pub const fn from_nanos(nanos: i64) -> Self {
        ClockOffset { nanos }
    }

    /// `reference - local`, saturating at ±292 years.
    pub fn between(reference: SystemTime, local: SystemTime) -> Self {
        let nanos = match reference.duration_since(local) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
        };
        ClockOffset { nanos }
    }

    /// The offset in nanoseconds.
    pub const fn as_nanos(self) -> i64 {
        self.nanos
    }

    /// The offset in seconds.
    pub fn as_secs_f64(self) -> f64 {
        self.nanos as f64 / 1e9
    }

    /// The offset's magnitude.
    pub fn abs(self) -> Duration {
        Duration::from_nanos(self.nanos.unsigned_abs())
    }

    /// Whether the reference is behind the local clock.
    pub const fn is_negative(self) -> bool {
        self.nanos < 0
    }

    /// `t` moved by this offset (`t` unchanged if the result is not representable).
    pub fn apply(self, t: SystemTime) -> SystemTime {
        let moved = if self.nanos >= 0 {
            t.checked_add(self.abs())
        } else {
            t.checked_sub(self.abs())
        };
        moved.unwrap_or(t)
    }
}

impl fmt::Display for ClockOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.nanos < 0 { '-' } else { '+' };
        let a = self.nanos.unsigned_abs();
        write!(f, "{sign}{}.{:09}s", a / 1_000_000_000, a % 1_000_000_000)
    }
}

/// One measurement of the parent's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimeSample {
    /// Parent minus local clock, at the midpoint of the exchange.
    pub offset: ClockOffset,
    /// Round-trip time of the exchange; the offset is exact to ± `rtt / 2` if the parent is
    /// honest.
    pub rtt: Duration,
    /// The time the parent reported.
    pub parent_time: SystemTime,
    /// The local clock at the midpoint of the exchange.
    pub local_time: SystemTime,
    /// The monotonic instant of the midpoint (to compare with other sources).
    pub at: Instant,
}

/// Builds a sample from the raw timestamps of one exchange (pure): the local real-time clock
/// when the request was sent, the monotonic instants of sending and receiving, and the
/// parent's answer.
pub fn sample_from(
    local_at_send: SystemTime,
    sent: Instant,
    received: Instant,
    parent_time: SystemTime,
) -> TimeSample {
    let rtt = received.saturating_duration_since(sent);
    let local_time = local_at_send.checked_add(rtt / 2).unwrap_or(local_at_send);
    TimeSample {
        offset: ClockOffset::between(parent_time, local_time),
        rtt,
        parent_time,
        local_time,
        at: sent + rtt / 2,
    }
}

/// What to do with an accepted offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StepPolicy {
    /// Only report it ([`TimeSync::now`] applies it for the application).
    #[default]
    Report,
    /// Step the system clock (`clock_settime(CLOCK_REALTIME)`) when the offset reaches
    /// `min_offset`; needs `CAP_SYS_TIME` (a failure is reported, the offset still is).
    Step {
        /// Smaller offsets are only reported.
        min_offset: Duration,
    },
}

/// Settings of the time client.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TimeConfig {
    /// Answers whose round trip exceeds this are refused (default 50 ms; vsock round trips
    /// are around 0.1 ms).
    pub max_rtt: Duration,
    /// Answers implying a larger offset from the local clock are refused (default: no bound;
    /// set one once the clock has been set at boot).
    pub max_offset: Option<Duration>,
    /// Exchanges per round; the one with the smallest round trip is used (default 4).
    pub samples: u32,
    /// Time between rounds when scheduled (default 5 minutes).
    pub interval: Duration,
    /// Report only, or step the clock.
    pub step: StepPolicy,
    /// Disagreement allowed between the parent and the trusted source beyond their combined
    /// uncertainty (default 1 s).
    pub trusted_tolerance: Duration,
    /// Trusted observations older than this are not used (default 1 hour).
    pub trusted_max_age: Duration,
    /// Refuse answers when a trusted source is configured but has no recent observation
    /// (default false: they are accepted and reported as unchecked).
    pub require_trusted: bool,
    /// Drift allowed for the enclave's monotonic clock when carrying a trusted observation
    /// forward, in parts per million (default 200).
    pub drift_ppm: u32,
    /// Limit for connecting and for each answer (default 5 s).
    pub request_timeout: Duration,
}

impl Default for TimeConfig {
    fn default() -> Self {
        TimeConfig {
            max_rtt: Duration::from_millis(50),
            max_offset: None,
            samples: 4,
            interval: Duration::from_secs(300),
            step: StepPolicy::Report,
            trusted_tolerance: Duration::from_secs(1),
            trusted_max_age: Duration::from_secs(3600),
            require_trusted: false,
            drift_ppm: 200,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// A time observation from an authenticated source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrustedObservation {
    /// The source's best estimate of the true time at `observed_at`.
    pub time: SystemTime,
    /// Monotonic instant of the observation.
    pub observed_at: Instant,
    /// Half-width of the interval the true time is known to lie in.
    pub uncertainty: Duration,
}

impl TrustedObservation {
    /// An observation.
    pub fn new(time: SystemTime, observed_at: Instant, uncertainty: Duration) -> Self {
        TrustedObservation {
            time,
            observed_at,
            uncertainty,
        }
    }
}

/// A source of authenticated time (the `Date` of TLS-protected responses, a Roughtime client,
/// ...), implemented by the application or fed through [`TimeAnchor`].
pub trait TrustedTime: Send + Sync + 'static {
    /// A name for logs and errors.
    fn name(&self) -> &str;
    /// The most recent observation, if any.
    fn latest(&self) -> Option<TrustedObservation>;
}

/// A [`TrustedTime`] fed by the application: record the `Date` header of each response that
/// arrived over an authenticated TLS connection (for example from AWS KMS through nitro-kms).
#[derive(Debug)]
pub struct TimeAnchor {
    name: String,
    latest: Mutex<Option<TrustedObservation>>,
}

impl TimeAnchor {
    /// An empty anchor named after its source.
    pub fn new(name: impl Into<String>) -> Self {
        TimeAnchor {
            name: name.into(),
            latest: Mutex::new(None),
        }
    }

    /// Records an observation (replacing the previous one).
    pub fn record(&self, obs: TrustedObservation) {
        if let Ok(mut l) = self.latest.lock() {
            *l = Some(obs);
        }
    }

    /// Records the `Date` header (IMF-fixdate, RFC 850 or asctime format) of an HTTP response
    /// received over an authenticated connection. `sent`/`received` are the monotonic instants
    /// of the request and of the response: the server produced the date between them, and the
    /// date is truncated to the second, so the true time at `received` lies in
    /// `[date, date + 1 s + (received - sent)]`.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use nitro_net::time::{TimeAnchor, TrustedTime};
    ///
    /// let anchor = TimeAnchor::new("kms");
    /// let sent = Instant::now();
    /// let received = sent + Duration::from_millis(20);
    /// anchor.record_http_date("Sun, 06 Nov 1994 08:49:37 GMT", sent, received)?;
    /// let obs = anchor.latest().unwrap();
    /// assert_eq!(obs.uncertainty, Duration::from_millis(510));
    /// # Ok::<(), nitro_net::Error>(())
    /// ```
    pub fn record_http_date(
        &self,
        date: &str,
        sent: Instant,
        received: Instant,
    ) -> Result<(), Error> {
        let t = httpdate::parse_http_date(date.trim())
            .map_err(|_| ProtocolError::malformed("HTTP Date header", format!("{date:?}")))?;
        let width = Duration::from_secs(1) + received.saturating_duration_since(sent);
        self.record(TrustedObservation::new(
            t.checked_add(width / 2).unwrap_or(t),
            received,
            width / 2,
        ));
        Ok(())
    }
}

impl TrustedTime for TimeAnchor {
    fn name(&self) -> &str {
        &self.name
    }

    fn latest(&self) -> Option<TrustedObservation> {
        self.latest.lock().ok().and_then(|l| *l)
    }
}

/// Compares a sample with a trusted observation (pure). Returns by how much they disagree
/// beyond their combined uncertainty (zero when consistent).
pub fn trusted_disagreement(
    sample: &TimeSample,
    trusted: &TrustedObservation,
    drift_ppm: u32,
) -> Duration {
    // Carry the trusted time to the sample's instant with the monotonic clock.
    let (expected, elapsed) = if sample.at >= trusted.observed_at {
        let e = sample.at - trusted.observed_at;
        (trusted.time.checked_add(e), e)
    } else {
        let e = trusted.observed_at - sample.at;
        (trusted.time.checked_sub(e), e)
    };
    let Some(expected) = expected else {
        // Not representable: as far from the sample as it gets.
        return Duration::MAX;
    };
    let drift = Duration::from_nanos(
        u64::try_from(elapsed.as_nanos().saturating_mul(u128::from(drift_ppm)) / 1_000_000)
            .unwrap_or(u64::MAX),
    );
    let diff = ClockOffset::between(sample.parent_time, expected).abs();
    diff.saturating_sub(trusted.uncertainty + drift + sample.rtt / 2)
}

/// The local clock, behind a trait so that stepping can be tested without touching the
/// machine's clock.
pub trait LocalClock: Send + Sync + 'static {
    /// The current real time.
    fn now(&self) -> SystemTime;
    /// Moves the clock by `offset`.
    fn step(&self, offset: ClockOffset) -> io::Result<()>;
}

/// The system's `CLOCK_REALTIME` (stepping needs `CAP_SYS_TIME`).
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct SystemClock;

impl LocalClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn step(&self, offset: ClockOffset) -> io::Result<()> {
        let target = offset.apply(SystemTime::now());
        let since = target.duration_since(UNIX_EPOCH).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot set the clock before 1970",
            )
        })?;
        nix::time::clock_settime(
            nix::time::ClockId::CLOCK_REALTIME,
            nix::sys::time::TimeSpec::from(since),
        )
        .map_err(io::Error::from)
    }
}

/// Whether and how a sample was checked against the trusted source.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustedCheck {
    /// No trusted source is configured.
    NotConfigured,
    /// A source is configured but had no recent observation.
    NoObservation,
    /// Consistent with the source (disagreement beyond uncertainties, within tolerance).
    Agrees {
        /// The source's name.
        source: String,
        /// How far apart beyond their combined uncertainty (zero when fully consistent).
        disagreement: Duration,
    },
}

/// The result of one synchronisation round.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// The sample used (smallest round trip of the round).
    pub sample: TimeSample,
    /// The trusted-source check.
    pub trusted: TrustedCheck,
    /// Whether the system clock was stepped by the offset.
    pub stepped: bool,
    /// Why stepping failed, if it was attempted and failed (a [`TimeError::StepFailed`]).
    pub step_error: Option<TimeError>,
}

static NONCE: AtomicU64 = AtomicU64::new(0);

fn next_nonce() -> u64 {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    NONCE
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(seed << 32)
}

/// The enclave side of the time service.
#[derive(Clone)]
pub struct TimeClient {
    parent: Addr,
    config: TimeConfig,
    trusted: Option<Arc<dyn TrustedTime>>,
    clock: Arc<dyn LocalClock>,
}

impl fmt::Debug for TimeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeClient")
            .field("parent", &self.parent)
            .field("config", &self.config)
            .field(
                "trusted",
                &self.trusted.as_ref().map(|t| t.name().to_owned()),
            )
            .finish_non_exhaustive()
    }
}

impl TimeClient {
    /// A client asking the parent at `parent` (the egress server's address), with default
    /// settings, no trusted source and the system clock.
    pub fn new(parent: Addr) -> Self {
        TimeClient {
            parent,
            config: TimeConfig::default(),
            trusted: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// Sets the configuration.
    #[must_use]
    pub fn config(mut self, config: TimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Cross-checks every answer with an authenticated source.
    #[must_use]
    pub fn trusted_source(mut self, source: Arc<dyn TrustedTime>) -> Self {
        self.trusted = Some(source);
        self
    }

    /// Replaces the local clock (default [`SystemClock`]).
    #[must_use]
    pub fn local_clock(mut self, clock: Arc<dyn LocalClock>) -> Self {
        self.clock = clock;
        self
    }

    /// One round of exchanges over one connection; returns the sample with the smallest round
    /// trip that passes the round-trip bound. Does not check the offset bounds.
    pub async fn measure(&self) -> Result<TimeSample, Error> {
        let cfg = &self.config;
        let mut s = self.parent.connect_timeout(cfg.request_timeout).await?;
        let mut best: Option<TimeSample> = None;
        let mut smallest_rtt = None;
        for _ in 0..cfg.samples.max(1) {
            let nonce = next_nonce();
            let req = Request::Time { nonce }.encode()?;
            let local_at_send = self.clock.now();
            let sent = Instant::now();
            let exchange = async {
                s.write_all(&req)
                    .await
                    .map_err(|e| Error::io(format!("time request to {}", self.parent), e))?;
                read_response(&mut s).await
            };
            let resp = tokio::time::timeout(cfg.request_timeout, exchange)
                .await
                .map_err(|_| {
                    Error::timeout(
                        format!("time answer from {}", self.parent),
                        cfg.request_timeout,
                    )
                })??;
            let received = Instant::now();
            let parent_time = match resp {
                Response::Time {
                    nonce: n,
                    unix_seconds,
                    nanos,
                } => {
                    if n != nonce {
                        return Err(TimeError::NonceMismatch.into());
                    }
                    from_unix_parts(unix_seconds, nanos).ok_or_else(|| {
                        ProtocolError::malformed(
                            "time response",
                            format!("{unix_seconds} s since 1970 is not a representable time"),
                        )
                    })?
                }
                Response::Refused { refusal, .. } => return Err(Error::Refused(refusal)),
                other => {
                    return Err(ProtocolError::malformed(
                        "time response",
                        format!("unexpected {other:?}"),
                    )
                    .into());
                }
            };
            let sample = sample_from(local_at_send, sent, received, parent_time);
            smallest_rtt = Some(smallest_rtt.map_or(sample.rtt, |r: Duration| r.min(sample.rtt)));
            if sample.rtt <= cfg.max_rtt && best.is_none_or(|b| sample.rtt < b.rtt) {
                best = Some(sample);
            }
        }
        let _ = s.shutdown().await;
        best.ok_or_else(|| {
            TimeError::RttTooLarge {
                rtt: smallest_rtt.unwrap_or_default(),
                max: cfg.max_rtt,
            }
            .into()
        })
    }

    /// Checks a sample against the configured bounds and the trusted source (pure apart from
    /// reading the trusted source).
    pub fn validate(&self, sample: &TimeSample) -> Result<TrustedCheck, TimeError> {
        let cfg = &self.config;
        if sample.rtt > cfg.max_rtt {
            return Err(TimeError::RttTooLarge {
                rtt: sample.rtt,
                max: cfg.max_rtt,
            });
        }
        if let Some(max) = cfg.max_offset
            && sample.offset.abs() > max
        {
            return Err(TimeError::OffsetOutOfBound {
                offset: sample.offset,
                max,
            });
        }
        let Some(src) = &self.trusted else {
            return Ok(TrustedCheck::NotConfigured);
        };
        let obs = src
            .latest()
            .filter(|o| sample.at.saturating_duration_since(o.observed_at) <= cfg.trusted_max_age);
        let Some(obs) = obs else {
            if cfg.require_trusted {
                return Err(TimeError::NoTrustedObservation(src.name().to_owned()));
            }
            return Ok(TrustedCheck::NoObservation);
        };
        let disagreement = trusted_disagreement(sample, &obs, cfg.drift_ppm);
        if disagreement > cfg.trusted_tolerance {
            return Err(TimeError::ParentDisagrees {
                source_name: src.name().to_owned(),
                disagreement,
                tolerance: cfg.trusted_tolerance,
            });
        }
        Ok(TrustedCheck::Agrees {
            source: src.name().to_owned(),
            disagreement,
        })
    }

    /// One round: measure, validate, and step the clock when the policy says so.
    pub async fn sync(&self) -> Result<SyncReport, Error> {
        let sample = self.measure().await?;
        let trusted = self.validate(&sample)?;
        let mut report = SyncReport {
            sample,
            trusted,
            stepped: false,
            step_error: None,
        };
        if let StepPolicy::Step { min_offset } = self.config.step
            && sample.offset.abs() >= min_offset
        {
            match self.clock.step(sample.offset) {
                Ok(()) => {
                    tracing::info!(offset = %sample.offset, rtt = ?sample.rtt, "time: clock stepped");
                    report.stepped = true;
                }
                Err(e) => {
                    tracing::warn!(offset = %sample.offset, error = %crate::error::chain(&e), "time: stepping the clock failed; reporting the offset only");
                    report.step_error = Some(TimeError::StepFailed {
                        kind: e.kind(),
                        errno: e.raw_os_error(),
                    });
                }
            }
        }
        Ok(report)
    }

    /// Runs [`sync`](Self::sync) now and then every [`TimeConfig::interval`] on a task.
    pub fn spawn(self) -> TimeSync {
        let (tx, rx) = watch::channel(SyncState::default());
        let clock = self.clock.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.config.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let r = self.sync().await;
                tx.send_modify(|st| {
                    st.rounds += 1;
                    match r {
                        Ok(rep) => {
                            tracing::debug!(offset = %rep.sample.offset, rtt = ?rep.sample.rtt, "time: synchronised");
                            st.offset = if rep.stepped {
                                ClockOffset::ZERO
                            } else {
                                rep.sample.offset
                            };
                            st.last = Some(rep);
                            st.last_error = None;
                        }
                        Err(e) => {
                            tracing::warn!(error = %crate::error::chain(&e), "time: synchronisation failed");
                            st.last_error = Some(crate::error::chain(&e).to_string());
                        }
                    }
                });
            }
        });
        TimeSync { rx, task, clock }
    }
}

#[derive(Debug, Default, Clone)]
struct SyncState {
    rounds: u64,
    offset: ClockOffset,
    last: Option<SyncReport>,
    last_error: Option<String>,
}

/// A scheduled time synchronisation (stops when dropped).
#[derive(Debug)]
pub struct TimeSync {
    rx: watch::Receiver<SyncState>,
    task: tokio::task::JoinHandle<()>,
    clock: Arc<dyn LocalClock>,
}

impl fmt::Debug for dyn LocalClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalClock")
    }
}

impl TimeSync {
    /// The last successful round.
    pub fn latest(&self) -> Option<SyncReport> {
        self.rx.borrow().last.clone()
    }

    /// The error of the last round, if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.rx.borrow().last_error.clone()
    }

    /// The offset still to add to the local clock (zero after a step; zero before the first
    /// successful round).
    pub fn offset(&self) -> ClockOffset {
        self.rx.borrow().offset
    }

    /// The local clock corrected by [`offset`](Self::offset).
    pub fn now(&self) -> SystemTime {
        self.offset().apply(self.clock.now())
    }

    /// Waits for the next round to finish (successfully or not).
    pub async fn next_round(&mut self) {
        let _ = self.rx.changed().await;
    }
}

impl Drop for TimeSync {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        let t = UNIX_EPOCH + Duration::from_secs(1000);
        let o = ClockOffset::between(t + Duration::from_millis(1500), t);
        assert_eq!(o.as_nanos(), 1_500_000_000);
        assert_eq!(o.to_string(), "+1.500000000s");
        let n = ClockOffset::between(t, t + Duration::from_nanos(5));
        assert_eq!(n.to_string(), "-0.000000005s");
        assert!(n.is_negative());
        assert_eq!(n.apply(t + Duration::from_nanos(5)), t);
        assert_eq!(o.apply(t), t + Duration::from_millis(1500));
    }

    #[test]
    fn sample_midpoint() {
        let local = UNIX_EPOCH + Duration::from_secs(100);
        let sent = Instant::now();
        let received = sent + Duration::from_millis(10);
        let parent = local + Duration::from_secs(2) + Duration::from_millis(5);
        let s = sample_from(local, sent, received, parent);
        assert_eq!(s.rtt, Duration::from_millis(10));
        assert_eq!(s.offset, ClockOffset::from_nanos(2_000_000_000));
    }

    #[test]
    fn trusted_comparison() {
        let base = Instant::now();
        let truth = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let obs = TrustedObservation::new(truth, base, Duration::from_millis(500));
        let at = base + Duration::from_secs(100);
        let mk = |parent: SystemTime| TimeSample {
            offset: ClockOffset::ZERO,
            rtt: Duration::from_millis(2),
            parent_time: parent,
            local_time: parent,
            at,
        };
        let honest = mk(truth + Duration::from_secs(100));
        assert_eq!(trusted_disagreement(&honest, &obs, 200), Duration::ZERO);
        let liar = mk(truth + Duration::from_secs(130));
        // 30 s off, minus 0.5 s uncertainty, 20 ms drift allowance, 1 ms half round trip.
        assert_eq!(
            trusted_disagreement(&liar, &obs, 200),
            Duration::from_secs(30) - Duration::from_millis(521)
        );
        // An observation made after the sample is carried backwards.
        let later = TrustedObservation::new(
            truth + Duration::from_secs(200),
            base + Duration::from_secs(200),
            Duration::ZERO,
        );
        assert_eq!(trusted_disagreement(&honest, &later, 0), Duration::ZERO);
    }

    #[test]
    fn http_dates() {
        let a = TimeAnchor::new("x");
        let now = Instant::now();
        for d in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            a.record_http_date(d, now, now).unwrap();
            let o = a.latest().unwrap();
            assert_eq!(
                o.time,
                UNIX_EPOCH + Duration::from_secs(784_111_777) + Duration::from_millis(500),
                "{d}"
            );
        }
        assert!(a.record_http_date("yesterday", now, now).is_err());
    }
}
