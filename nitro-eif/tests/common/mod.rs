//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;

use nitro_eif::{BootstrapRamdisk, CpioArchive, EifBuilder, PemSigner, Source};

/// A stand-in x86 kernel: random-looking bytes with a bzImage setup header (`HdrS`, boot
/// protocol 2.15, a kernel_version string).
pub fn fake_bzimage(len: usize, seed: u8) -> Vec<u8> {
    let mut k: Vec<u8> = (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .rotate_left(u32::from(seed)) as u8
        })
        .collect();
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    k[0x20e..0x210].copy_from_slice(&0x0100u16.to_le_bytes());
    let v = b"6.12.12+bpo-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
    k[0x300..0x300 + v.len()].copy_from_slice(v);
    k
}

pub fn bootstrap() -> BootstrapRamdisk {
    BootstrapRamdisk::from_bytes(b"\x7fELF static init".to_vec())
        .module_bytes("vsock.ko", vec![1; 3000])
        .module_bytes("nsm.ko", vec![2; 5000])
}

pub fn customer_archive() -> CpioArchive {
    let mut a = CpioArchive::new();
    a.file("rootfs/bin/app", 0o755, vec![7; 10_000]).unwrap();
    a.file("cmd", 0o644, b"/bin/app\n".to_vec()).unwrap();
    a.file("env", 0o644, b"A=1\n".to_vec()).unwrap();
    a
}

/// A P-384 key and self-signed certificate (PEM), valid now.
pub fn p384_identity() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["enclave-signer.example".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "EIF signer");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "nitro-rs tests");
    let cert = params.self_signed(&key).unwrap();
    (key.serialize_pem(), cert.pem())
}

pub fn builder(kernel: Vec<u8>) -> EifBuilder {
    EifBuilder::with_kernel(Source::bytes(kernel), "console=ttyS0 reboot=k panic=30")
        .ramdisk(bootstrap())
        .ramdisk(customer_archive())
        .name("test")
        .version("1.0")
}

/// A small valid EIF in memory, signed or not.
pub fn small_eif(signed: bool) -> Vec<u8> {
    let mut b = builder(fake_bzimage(20_000, 3));
    if signed {
        let (k, c) = p384_identity();
        b = b.signer(PemSigner::new(k.as_bytes(), c.as_bytes()).unwrap());
    }
    let mut out = Cursor::new(Vec::new());
    b.build(&mut out).unwrap();
    out.into_inner()
}
