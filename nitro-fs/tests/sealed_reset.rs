//! Regression tests for the silent reset of a sealed volume (issue 20, finding 7): a parent
//! serving zeros, damaging both header copies or substituting another device must get a typed
//! error, never a freshly created device; creation happens only when the anchor proves a
//! first boot, or never when the identity comes from attested configuration.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

use nitro_fs::sealed::{
    DeviceId, FreshnessAnchor, MemoryAnchor, SealedConfig, SealedDevice, StaticKeyWrap,
};
use nitro_fs::{BlockDevice, Error, MemDevice};

const B: usize = 4096;

fn key() -> StaticKeyWrap {
    StaticKeyWrap::new(&[0x42; 32]).unwrap()
}

fn blank() -> MemDevice {
    MemDevice::new(SealedDevice::<MemDevice>::raw_size_for(64 * B as u64) as usize)
}

fn config(anchor: &MemoryAnchor) -> SealedConfig {
    SealedConfig::default().with_anchor(anchor.clone())
}

/// First boot: creates; writes a record; second boot: opens it.
async fn provisioned() -> (MemDevice, MemoryAnchor, DeviceId) {
    let (raw, anchor) = (blank(), MemoryAnchor::new());
    let (dev, created) = SealedDevice::open_volume(raw.clone(), &key(), config(&anchor), "data")
        .await
        .unwrap();
    assert!(created);
    dev.write_at(0, b"boot 1").await.unwrap();
    dev.flush().await.unwrap();
    let id = dev.device_id();
    drop(dev);
    let (dev, created) = SealedDevice::open_volume(raw.clone(), &key(), config(&anchor), "data")
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(dev.device_id(), id);
    let mut b = [0u8; 6];
    dev.read_at(0, &mut b).await.unwrap();
    assert_eq!(&b, b"boot 1");
    assert_eq!(anchor.bound_device("data").await.unwrap(), Some(id));
    (raw, anchor, id)
}

/// The header pages as the device holds them.
fn headers(raw: &MemDevice) -> Vec<u8> {
    raw.snapshot()[..2 * B].to_vec()
}

#[tokio::test]
async fn a_parent_serving_zeros_cannot_reset_a_bound_volume() {
    let (raw, anchor, id) = provisioned().await;
    raw.with_bytes(|b| b.fill(0));
    let e = SealedDevice::open_volume(raw.clone(), &key(), config(&anchor), "data")
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::SealedDeviceMissing { expected, .. } if expected == id),
        "{e}"
    );
    assert!(e.is_integrity());
    // Nothing was written: no fresh device, and the binding is unchanged.
    assert!(raw.snapshot().iter().all(|&b| b == 0));
    assert_eq!(anchor.bound_device("data").await.unwrap(), Some(id));
    // What made create-on-NotSealed dangerous: without an expectation, plain `open` reports
    // zeros as "not sealed".
    assert!(matches!(
        SealedDevice::open(raw, &key(), config(&anchor)).await,
        Err(Error::NotSealed(_))
    ));
}

#[tokio::test]
async fn damaging_both_header_copies_is_a_typed_error() {
    // Three ways of damaging both copies: the magic (no longer a header), the format version,
    // and a field under the MAC (still a header, no longer authentic).
    for (what, at) in [
        ("magic", 0usize),
        ("version", 11),
        ("root (under the MAC)", 50),
    ] {
        let (raw, anchor, id) = provisioned().await;
        raw.with_bytes(|b| {
            b[at] ^= 0x5a;
            b[B + at] ^= 0x5a;
        });
        let before = headers(&raw);
        let e = SealedDevice::open_volume(raw.clone(), &key(), config(&anchor), "data")
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::SealedDeviceMissing { expected, .. } if expected == id),
            "{what}: {e}"
        );
        assert_eq!(headers(&raw), before, "{what}: headers rewritten");
    }
}

#[tokio::test]
async fn another_device_substituted_for_the_volume_is_refused() {
    let (raw, anchor, id) = provisioned().await;
    // The parent presents another volume of the same enclave (same key).
    let other = blank();
    let (dev, _) = SealedDevice::open_volume(other.clone(), &key(), config(&anchor), "logs")
        .await
        .unwrap();
    let other_id = dev.device_id();
    drop(dev);
    raw.restore(&other.snapshot()).unwrap();
    let e = SealedDevice::open_volume(raw, &key(), config(&anchor), "data")
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::UnexpectedDevice { expected, found } if expected == id && found == other_id),
        "{e}"
    );
}

#[tokio::test]
async fn attested_identity_never_creates_even_on_a_first_boot() {
    let (raw, _, id) = provisioned().await;
    // A restarted enclave: a new (empty) memory anchor, the identity from attested config.
    let anchor = MemoryAnchor::new();
    let attested: DeviceId = id.to_string().parse().unwrap();
    assert_eq!(attested, id);
    let cfg = config(&anchor).expect_device(attested);
    let (dev, created) = SealedDevice::open_volume(raw.clone(), &key(), cfg.clone(), "data")
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(anchor.bound_device("data").await.unwrap(), Some(id));
    drop(dev);
    // Zeros on the next "first boot" (yet another empty anchor): refused, nothing written.
    raw.with_bytes(|b| b.fill(0));
    let anchor = MemoryAnchor::new();
    let cfg = config(&anchor).expect_device(id);
    let e = SealedDevice::open_volume(raw.clone(), &key(), cfg.clone(), "data")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::SealedDeviceMissing { .. }), "{e}");
    assert!(raw.snapshot().iter().all(|&b| b == 0));
    assert_eq!(anchor.bound_device("data").await.unwrap(), None);
    // Plain open and create honour the expectation too.
    assert!(matches!(
        SealedDevice::open(raw.clone(), &key(), cfg.clone()).await,
        Err(Error::SealedDeviceMissing { .. })
    ));
    assert!(matches!(
        SealedDevice::create(raw, &key(), cfg).await,
        Err(Error::InvalidArgument(_))
    ));
    // Configuration and anchor disagreeing is refused.
    let (raw2, anchor2, id2) = provisioned().await;
    let e = SealedDevice::open_volume(raw2, &key(), config(&anchor2).expect_device(id), "data")
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::UnexpectedDevice { expected, found } if expected == id && found == id2),
        "{e}"
    );
}

#[tokio::test]
async fn a_first_boot_creates_only_on_blank_storage() {
    // A damaged header on a volume the anchor has never seen: an error, not a new device.
    let (raw, _, _) = provisioned().await;
    raw.with_bytes(|b| {
        b[50] ^= 1;
        b[B + 50] ^= 1;
    });
    let anchor = MemoryAnchor::new();
    let before = raw.snapshot();
    assert!(
        SealedDevice::open_volume(raw.clone(), &key(), config(&anchor), "data")
            .await
            .is_err()
    );
    assert_eq!(raw.snapshot(), before);
    assert_eq!(anchor.bound_device("data").await.unwrap(), None);
    // An intact device the anchor has not seen (anchor lost): opened and bound, not replaced.
    let (raw, _, id) = provisioned().await;
    let anchor = MemoryAnchor::new();
    let (dev, created) = SealedDevice::open_volume(raw, &key(), config(&anchor), "data")
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(dev.device_id(), id);
    // A binding, once made, cannot be moved to another device.
    assert!(matches!(
        anchor.bind_device("data", DeviceId([1; 16])).await,
        Err(Error::Anchor { .. })
    ));
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An anchor that keeps freshness but no volume bindings.
struct NoBindings(MemoryAnchor);

impl FreshnessAnchor for NoBindings {
    fn load<'a>(
        &'a self,
        device: &'a DeviceId,
    ) -> BoxFuture<'a, nitro_fs::Result<Option<nitro_fs::sealed::AnchorState>>> {
        self.0.load(device)
    }
    fn store<'a>(
        &'a self,
        device: &'a DeviceId,
        state: nitro_fs::sealed::AnchorState,
    ) -> BoxFuture<'a, nitro_fs::Result<()>> {
        self.0.store(device, state)
    }
}

#[tokio::test]
async fn an_anchor_without_bindings_cannot_prove_a_first_boot() {
    let raw = blank();
    let cfg = SealedConfig::default().with_anchor(NoBindings(MemoryAnchor::new()));
    let e = SealedDevice::open_volume(raw.clone(), &key(), cfg, "data")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Anchor { .. }), "{e}");
    assert!(raw.snapshot().iter().all(|&b| b == 0));
}
