//! Graviton (aarch64) images from Debian's arm64 kernel package (`$NITRO_CACHE/arm64/Image`,
//! downloaded by scripts/install.sh): the PCRs equal the format crate's (nitro-cli's) for the
//! same inputs, the header carries the arm64 flag, and the x86_64 and aarch64 paths refuse each
//! other's kernels and inits with a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::path::PathBuf;

use aws_nitro_enclaves_image_format::defs::{EIF_HDR_ARCH_ARM64, EifBuildInfo, EifIdentityInfo};
use aws_nitro_enclaves_image_format::utils::EifBuilder as AwsBuilder;
use aws_nitro_enclaves_image_format::utils::eif_reader::EifReader as AwsReader;
use nitro_eif::{
    Arch, BootstrapRamdisk, CpioArchive, EifBuilder, EifReader, Error, FLAG_ARM64, Source,
};
use sha2::Digest as _;

fn arm64_image() -> Option<PathBuf> {
    let cache = std::env::var_os("NITRO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/nitro-rs")
        });
    let p = cache.join("arm64/Image");
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and {} is missing (scripts/install.sh downloads it)",
        p.display()
    );
    eprintln!("SKIPPED: {} missing (run scripts/install.sh)", p.display());
    None
}

/// A 64-bit little-endian ELF header for `machine` (62 x86_64, 183 aarch64) and some code.
fn elf(machine: u16) -> Vec<u8> {
    let mut e = vec![0u8; 4096];
    e[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&machine.to_le_bytes());
    for (i, b) in e.iter_mut().enumerate().skip(64) {
        *b = (i * 31 % 256) as u8;
    }
    e
}

fn customer() -> CpioArchive {
    let mut a = CpioArchive::new();
    a.file("rootfs/bin/app", 0o755, elf(183)).unwrap();
    a.file("cmd", 0o644, b"/bin/app\n".to_vec()).unwrap();
    a
}

fn identity() -> EifIdentityInfo {
    EifIdentityInfo {
        img_name: "graviton".into(),
        img_version: "1.0".into(),
        build_info: EifBuildInfo {
            build_time: "2024-05-06T07:08:09+00:00".into(),
            build_tool: "eif_build".into(),
            build_tool_version: "0.2.1".into(),
            img_os: "OS".into(),
            img_kernel: "kernel".into(),
        },
        docker_info: serde_json::Value::Null,
        custom_info: serde_json::Value::Null,
    }
}

#[test]
fn aarch64_images_measure_like_nitro_cli() {
    let Some(kernel) = arm64_image() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cmdline = "console=ttyS0 reboot=k panic=30 pci=off";

    // Ramdisks with an arm64 init, written as files for the format crate.
    let boot = dir.path().join("bootstrap.cpio");
    let cust = dir.path().join("customer.cpio");
    BootstrapRamdisk::from_bytes(elf(183))
        .module_bytes("nsm.ko", elf(183))
        .into_archive()
        .unwrap()
        .write_to(&mut File::create(&boot).unwrap())
        .unwrap();
    customer()
        .write_to(&mut File::create(&cust).unwrap())
        .unwrap();

    // Ours: from the init directly (arch checked against the kernel's), and from the files.
    let ours = dir.path().join("ours.eif");
    let built = EifBuilder::new(&kernel, cmdline)
        .ramdisk(BootstrapRamdisk::from_bytes(elf(183)).module_bytes("nsm.ko", elf(183)))
        .ramdisk(customer())
        .build_file(&ours)
        .unwrap();
    assert_eq!(built.arch, Arch::Aarch64);
    assert_eq!(built.header.flags & FLAG_ARM64, FLAG_ARM64);
    let from_files = EifBuilder::new(&kernel, cmdline)
        .ramdisk_file(&boot)
        .ramdisk_file(&cust)
        .build_file(dir.path().join("files.eif"))
        .unwrap();
    assert_eq!(from_files.measurements, built.measurements);

    // Theirs, from the same kernel, command line and ramdisks.
    let theirs = dir.path().join("theirs.eif");
    let mut b = AwsBuilder::new(
        &kernel,
        cmdline.to_owned(),
        None,
        sha2::Sha384::new(),
        EIF_HDR_ARCH_ARM64,
        identity(),
    );
    b.add_ramdisk(&boot);
    b.add_ramdisk(&cust);
    let theirs_pcrs = b.write_to(&mut File::create(&theirs).unwrap());
    for (k, v) in [
        ("PCR0", built.measurements.pcr0),
        ("PCR1", built.measurements.pcr1),
        ("PCR2", built.measurements.pcr2),
    ] {
        assert_eq!(theirs_pcrs[k], v.to_hex(), "{k}");
    }

    // Each reads the other's image with the same PCRs and the arm64 flag.
    let mut r = AwsReader::from_eif(ours.to_str().unwrap().to_owned()).unwrap();
    assert_eq!(r.get_measurements().unwrap(), theirs_pcrs);
    assert!(r.check_crc());
    let mut mine = EifReader::open(&theirs).unwrap();
    assert_eq!(mine.arch(), Arch::Aarch64);
    assert_eq!(mine.verify().unwrap().pcr0, built.measurements.pcr0);
}

#[test]
fn x86_64_and_aarch64_refuse_each_others_kernels_and_inits() {
    let Some(kernel) = arm64_image() else { return };
    let mut bz = vec![0u8; 8192];
    bz[0x202..0x206].copy_from_slice(b"HdrS");

    // An arm64 kernel in an image declared x86_64.
    let e = EifBuilder::new(&kernel, "console=ttyS0")
        .arch(Arch::X86_64)
        .ramdisk(customer())
        .build(&mut std::io::Cursor::new(Vec::new()))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ArchMismatch {
                found: Arch::Aarch64,
                expected: Arch::X86_64,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("the kernel is aarch64"), "{e}");

    // A bzImage in an image declared aarch64.
    let e = EifBuilder::with_kernel(Source::bytes(bz.clone()), "console=ttyS0")
        .arch(Arch::Aarch64)
        .ramdisk(customer())
        .build(&mut std::io::Cursor::new(Vec::new()))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ArchMismatch {
                found: Arch::X86_64,
                expected: Arch::Aarch64,
                ..
            }
        ),
        "{e}"
    );

    // An x86_64 init with the arm64 kernel, and an arm64 init with a bzImage.
    let e = EifBuilder::new(&kernel, "console=ttyS0")
        .ramdisk(BootstrapRamdisk::from_bytes(elf(62)))
        .ramdisk(customer())
        .build(&mut std::io::Cursor::new(Vec::new()))
        .unwrap_err();
    assert!(
        matches!(e, Error::ArchMismatch { found: Arch::X86_64, expected: Arch::Aarch64, ref what } if what == "the init"),
        "{e}"
    );
    let e = EifBuilder::with_kernel(Source::bytes(bz), "console=ttyS0")
        .ramdisk(BootstrapRamdisk::from_bytes(elf(183)))
        .ramdisk(customer())
        .build(&mut std::io::Cursor::new(Vec::new()))
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ArchMismatch {
                found: Arch::Aarch64,
                expected: Arch::X86_64,
                ..
            }
        ),
        "{e}"
    );

    // A gzip-compressed Image (what some distributions ship as vmlinuz) gets a clear error.
    let mut gz = flate2_free_gzip_header();
    gz.extend_from_slice(&[0u8; 100]);
    let e = EifBuilder::with_kernel(Source::bytes(gz), "console=ttyS0")
        .ramdisk(customer())
        .build(&mut std::io::Cursor::new(Vec::new()))
        .unwrap_err();
    assert!(e.to_string().contains("compressed"), "{e}");
}

/// The first bytes of a gzip member (enough for the kernel check).
fn flate2_free_gzip_header() -> Vec<u8> {
    vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 3]
}
