//! The time service over the Unix-socket transport: offset estimation, bounds, a lying parent
//! caught by an authenticated time source, clock stepping.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers panic on failure by design.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use nitro_net::internal::protocol::{Request, Response};
use nitro_net::time::{
    ClockOffset, LocalClock, StepPolicy, TimeAnchor, TimeClient, TimeConfig, TrustedCheck,
    TrustedObservation,
};
use nitro_net::{Addr, EgressServer, Error, Policy, TimeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A parent whose clock runs `skew` ahead (negative: behind) of the real one.
async fn parent(skew: ClockOffset) -> Chain {
    chain_with(EgressServer::new(Policy::deny_all()).clock(move || skew.apply(SystemTime::now())))
        .await
}

fn secs(s: i64) -> ClockOffset {
    ClockOffset::from_nanos(s * 1_000_000_000)
}

#[tokio::test]
async fn offset_is_estimated_within_the_round_trip() {
    for skew in [secs(5), secs(-3), ClockOffset::ZERO] {
        let c = parent(skew).await;
        let tc = TimeClient::new(c.addr.clone());
        for _ in 0..3 {
            let s = tc.measure().await.unwrap();
            let err = (s.offset.as_nanos() - skew.as_nanos()).unsigned_abs();
            // Both clocks are the same clock here, so the true offset is `skew`: the estimate
            // is within half the round trip (+ a little for reading the clock twice).
            let bound = s.rtt.as_nanos() as u64 / 2 + 200_000;
            assert!(
                err <= bound,
                "skew {skew}: estimated {} (rtt {:?})",
                s.offset,
                s.rtt
            );
            assert!(s.rtt < Duration::from_millis(50), "{:?}", s.rtt);
        }
        let r = tc.sync().await.unwrap();
        assert_eq!(r.trusted, TrustedCheck::NotConfigured);
        assert!(!r.stepped);
    }
}

#[tokio::test]
async fn answers_outside_the_offset_bound_are_refused() {
    let c = parent(secs(600)).await;
    let mut cfg = TimeConfig::default();
    cfg.max_offset = Some(Duration::from_secs(60));
    let e = TimeClient::new(c.addr.clone())
        .config(cfg)
        .sync()
        .await
        .unwrap_err();
    match e {
        Error::Time(TimeError::OffsetOutOfBound { offset, max }) => {
            assert!((offset.as_secs_f64() - 600.0).abs() < 0.1);
            assert_eq!(max, Duration::from_secs(60));
        }
        other => panic!("{other}"),
    }
}

/// A parent that takes `delay` to answer each time request (hand-written with the protocol
/// functions, as a misbehaving parent would be).
async fn slow_parent(
    delay: Duration,
    lie_nonce: bool,
    seconds: Option<i64>,
) -> (tempfile::TempDir, Addr) {
    let dir = tempfile::tempdir().unwrap();
    let addr: Addr = format!("uds:{}:8000", dir.path().display())
        .parse()
        .unwrap();
    let l = addr.bind().await.unwrap();
    tokio::spawn(async move {
        let _keep = &l;
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 14];
                while s.read_exact(&mut buf).await.is_ok() {
                    let Ok(Some((Request::Time { nonce }, _))) = Request::decode(&buf) else {
                        return;
                    };
                    tokio::time::sleep(delay).await;
                    let d = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap();
                    let resp = Response::Time {
                        nonce: if lie_nonce { nonce ^ 1 } else { nonce },
                        unix_seconds: seconds.unwrap_or(d.as_secs() as i64),
                        nanos: d.subsec_nanos(),
                    };
                    if s.write_all(&resp.encode()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (dir, addr)
}

#[tokio::test]
async fn slow_answers_are_refused() {
    let (_d, addr) = slow_parent(Duration::from_millis(60), false, None).await;
    let mut cfg = TimeConfig::default();
    cfg.max_rtt = Duration::from_millis(20);
    cfg.samples = 2;
    let e = TimeClient::new(addr)
        .config(cfg)
        .measure()
        .await
        .unwrap_err();
    match e {
        Error::Time(TimeError::RttTooLarge { rtt, max }) => {
            assert!(rtt >= Duration::from_millis(60));
            assert_eq!(max, Duration::from_millis(20));
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn answers_to_another_request_are_refused() {
    let (_d, addr) = slow_parent(Duration::ZERO, true, None).await;
    let e = TimeClient::new(addr).measure().await.unwrap_err();
    assert!(matches!(e, Error::Time(TimeError::NonceMismatch)), "{e}");
}

#[tokio::test]
async fn absurd_times_are_refused_not_panicked_on() {
    for secs in [i64::MAX, i64::MIN, -1] {
        let (_d, addr) = slow_parent(Duration::ZERO, false, Some(secs)).await;
        let mut cfg = TimeConfig::default();
        cfg.max_offset = Some(Duration::from_secs(60));
        let r = TimeClient::new(addr).config(cfg).sync().await;
        assert!(r.is_err(), "{secs}: {r:?}");
    }
}

#[tokio::test]
async fn a_lying_parent_is_caught_by_the_authenticated_source() {
    // The authenticated source: an HTTP Date header (as received over TLS from KMS), here
    // produced from the real clock with the format servers use.
    let anchor = Arc::new(TimeAnchor::new("kms.test (TLS)"));
    let sent = Instant::now();
    let date = httpdate::fmt_http_date(SystemTime::now());
    anchor
        .record_http_date(&date, sent, sent + Duration::from_millis(30))
        .unwrap();

    let mut cfg = TimeConfig::default();
    cfg.trusted_tolerance = Duration::from_secs(2);

    // A parent lying by 30 s (beyond the Date's 1 s resolution + tolerance): refused.
    let liar = parent(secs(30)).await;
    let e = TimeClient::new(liar.addr.clone())
        .config(cfg.clone())
        .trusted_source(anchor.clone())
        .sync()
        .await
        .unwrap_err();
    match e {
        Error::Time(TimeError::ParentDisagrees {
            source_name,
            disagreement,
            tolerance,
        }) => {
            assert_eq!(source_name, "kms.test (TLS)");
            assert!(disagreement > Duration::from_secs(27), "{disagreement:?}");
            assert_eq!(tolerance, Duration::from_secs(2));
        }
        other => panic!("{other}"),
    }
    // A parent lying within the bound passes (the documented limit of the trust model)...
    let small = parent(ClockOffset::from_nanos(800_000_000)).await;
    let r = TimeClient::new(small.addr.clone())
        .config(cfg.clone())
        .trusted_source(anchor.clone())
        .sync()
        .await
        .unwrap();
    assert!(
        matches!(r.trusted, TrustedCheck::Agrees { .. }),
        "{:?}",
        r.trusted
    );
    // ... and so does an honest one.
    let honest = parent(ClockOffset::ZERO).await;
    let r = TimeClient::new(honest.addr.clone())
        .config(cfg.clone())
        .trusted_source(anchor.clone())
        .sync()
        .await
        .unwrap();
    assert!(
        matches!(r.trusted, TrustedCheck::Agrees { disagreement, .. } if disagreement == Duration::ZERO)
    );

    // Without an observation: accepted and reported as unchecked, or refused when required.
    let empty = Arc::new(TimeAnchor::new("empty"));
    let r = TimeClient::new(liar.addr.clone())
        .config(cfg.clone())
        .trusted_source(empty.clone())
        .sync()
        .await
        .unwrap();
    assert_eq!(r.trusted, TrustedCheck::NoObservation);
    cfg.require_trusted = true;
    let e = TimeClient::new(liar.addr.clone())
        .config(cfg)
        .trusted_source(empty)
        .sync()
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Time(TimeError::NoTrustedObservation(_))),
        "{e}"
    );
}

/// A local clock that can be stepped without touching the machine's clock.
struct FakeClock {
    offset: Mutex<ClockOffset>,
    steps: Mutex<Vec<ClockOffset>>,
}

impl LocalClock for FakeClock {
    fn now(&self) -> SystemTime {
        self.offset.lock().unwrap().apply(SystemTime::now())
    }
    fn step(&self, by: ClockOffset) -> std::io::Result<()> {
        let mut o = self.offset.lock().unwrap();
        *o = ClockOffset::from_nanos(o.as_nanos() + by.as_nanos());
        self.steps.lock().unwrap().push(by);
        Ok(())
    }
}

#[tokio::test]
async fn the_clock_is_stepped_when_allowed_and_only_beyond_the_threshold() {
    let c = parent(ClockOffset::ZERO).await;
    // The enclave's clock starts 42 s behind.
    let clock = Arc::new(FakeClock {
        offset: Mutex::new(secs(-42)),
        steps: Mutex::new(Vec::new()),
    });
    let mut cfg = TimeConfig::default();
    cfg.step = StepPolicy::Step {
        min_offset: Duration::from_millis(100),
    };
    cfg.interval = Duration::from_millis(50);
    let mut sync = TimeClient::new(c.addr.clone())
        .config(cfg)
        .local_clock(clock.clone())
        .spawn();
    sync.next_round().await;
    let first = sync.latest().expect("first round succeeded");
    assert!(first.stepped);
    assert!((first.sample.offset.as_secs_f64() - 42.0).abs() < 0.05);
    assert_eq!(sync.offset(), ClockOffset::ZERO);
    sync.next_round().await;
    let second = sync.latest().unwrap();
    assert!(!second.stepped, "a sub-threshold offset is only reported");
    assert!(second.sample.offset.abs() < Duration::from_millis(50));
    assert_eq!(clock.steps.lock().unwrap().len(), 1);
    let err = ClockOffset::between(sync.now(), SystemTime::now()).abs();
    assert!(err < Duration::from_millis(50), "{err:?}");
}

/// On paused time (the parent is in this process): the hour between rounds passes at once.
#[tokio::test(start_paused = true)]
async fn report_mode_corrects_now_without_stepping() {
    let c = parent(secs(7)).await;
    let mut cfg = TimeConfig::default();
    cfg.interval = Duration::from_secs(3600);
    let mut sync = TimeClient::new(c.addr.clone()).config(cfg).spawn();
    sync.next_round().await;
    let r = sync.latest().unwrap();
    assert!(!r.stepped && r.step_error.is_none());
    let corrected = ClockOffset::between(sync.now(), SystemTime::now());
    assert!((corrected.as_secs_f64() - 7.0).abs() < 0.05, "{corrected}");
    // A failing round keeps the last good offset and reports the error.
    drop(c);
    assert!(sync.last_error().is_none());
    sync.next_round().await;
    let err = sync.last_error().expect("the failed round is reported");
    assert!(err.contains("connect"), "{err}");
    assert_eq!(sync.latest(), Some(r));
    let corrected = ClockOffset::between(sync.now(), SystemTime::now());
    assert!((corrected.as_secs_f64() - 7.0).abs() < 0.05, "{corrected}");
}

/// Stepping the real clock without the right to: reported, never fatal, clock untouched.
/// As root this runs in a child process switched to `nobody` (so the machine's clock is never
/// touched); otherwise in-process.
#[test]
fn stepping_without_permission_is_reported() {
    if std::env::var_os("NITRO_NET_STEP_CHILD").is_some() {
        return step_as_unprivileged();
    }
    if !nix::unistd::geteuid().is_root() {
        return step_as_unprivileged();
    }
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stepping_without_permission_is_reported",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NITRO_NET_STEP_CHILD", "1")
        .env("TMPDIR", "/tmp")
        .current_dir("/tmp")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("step refused as expected"), "{text}");
}

fn step_as_unprivileged() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = parent(secs(3)).await;
        let mut cfg = TimeConfig::default();
        cfg.step = StepPolicy::Step {
            min_offset: Duration::from_millis(1),
        };
        let before = SystemTime::now();
        let r = TimeClient::new(c.addr.clone())
            .config(cfg)
            .sync()
            .await
            .unwrap();
        assert!(!r.stepped);
        let err = r.step_error.expect("step error reported");
        assert!(
            matches!(
                err,
                TimeError::StepFailed {
                    kind: std::io::ErrorKind::PermissionDenied,
                    errno: Some(1)
                }
            ),
            "{err:?}"
        );
        // The clock was not moved by 3 s.
        let drift = ClockOffset::between(SystemTime::now(), before).abs();
        assert!(drift < Duration::from_secs(1));
        println!("step refused as expected: {err}");
    });
}

#[tokio::test]
async fn time_requests_can_be_disabled_on_the_parent() {
    let c = chain_with(EgressServer::new(Policy::deny_all()).time_service(false)).await;
    let e = TimeClient::new(c.addr.clone()).measure().await.unwrap_err();
    assert_eq!(
        e.refusal().unwrap().code,
        nitro_net::RefusalCode::NotSupported
    );
    let _ = TrustedObservation::new(SystemTime::now(), Instant::now(), Duration::ZERO);
}
