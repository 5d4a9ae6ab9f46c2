//! Interop with `aws-nitro-enclaves-image-format` 0.8.1, the crate nitro-cli builds and reads
//! EIFs with: images built here are read by it with the same PCRs, a good CRC and a verifying
//! signature; images built by it are read here with the same PCRs; unsigned images built from
//! the same inputs are byte-identical.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use aws_nitro_enclaves_image_format::defs::{EifBuildInfo, EifIdentityInfo};
use aws_nitro_enclaves_image_format::utils::eif_reader::EifReader as AwsReader;
use aws_nitro_enclaves_image_format::utils::{
    EifBuilder as AwsBuilder, PcrSignatureChecker, SignKeyData,
};
use nitro_eif::{
    BootstrapRamdisk, CustomerRamdisk, Describe, EifBuilder, EifReader, Measurements, Metadata,
    PemSigner,
};
use sha2::Digest as _;

struct Inputs {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    ramdisk0: PathBuf,
    ramdisk1: PathBuf,
    rootfs: PathBuf,
    key: PathBuf,
    cert: PathBuf,
}

fn fake_bzimage(len: usize) -> Vec<u8> {
    let mut k: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(7) as u8)
        .collect();
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    k[0x20e..0x210].copy_from_slice(&0x0100u16.to_le_bytes());
    let v = b"6.12.12-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
    k[0x300..0x300 + v.len()].copy_from_slice(v);
    k
}

fn inputs() -> Inputs {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("bzImage"), fake_bzimage(300_000)).unwrap();
    std::fs::write(p("ramdisk0.cpio"), vec![0x30; 70_000]).unwrap();
    std::fs::write(
        p("ramdisk1.cpio"),
        (0..150_000u32).map(|i| (i % 253) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::create_dir_all(p("rootfs/usr/bin")).unwrap();
    std::fs::write(p("rootfs/usr/bin/app"), vec![0xee; 40_000]).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["signer.example".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "EIF interop signer");
    params
        .distinguished_name
        .push(rcgen::DnType::CountryName, "US");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "nitro-rs");
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(p("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(p("cert.pem"), cert.pem()).unwrap();
    Inputs {
        kernel: p("bzImage"),
        ramdisk0: p("ramdisk0.cpio"),
        ramdisk1: p("ramdisk1.cpio"),
        rootfs: p("rootfs"),
        key: p("key.pem"),
        cert: p("cert.pem"),
        dir,
    }
}

/// The format crate's view: measurements map, CRC check, signature check, metadata.
struct AwsView {
    measurements: BTreeMap<String, String>,
    crc_ok: bool,
    sign_check: Option<bool>,
    cert_info: Option<serde_json::Value>,
    metadata: Option<EifIdentityInfo>,
}

fn aws_read(path: &Path) -> AwsView {
    let mut r = AwsReader::from_eif(path.to_str().unwrap().to_owned()).unwrap();
    let measurements = r.get_measurements().unwrap();
    let crc_ok = r.check_crc();
    let cert_info = if r.signature_section.is_some() {
        let info = r.get_certificate_info(measurements.clone()).unwrap();
        Some(serde_json::to_value(info).unwrap())
    } else {
        None
    };
    AwsView {
        sign_check: r.sign_check,
        crc_ok,
        cert_info,
        metadata: r.get_metadata(),
        measurements,
    }
}

fn as_map(m: &Measurements) -> BTreeMap<String, String> {
    match serde_json::to_value(m).unwrap() {
        serde_json::Value::Object(o) => o
            .into_iter()
            .map(|(k, v)| (k, v.as_str().unwrap().to_owned()))
            .collect(),
        _ => unreachable!(),
    }
}

fn check_metadata_equal(theirs: &EifIdentityInfo, ours: &Metadata) {
    assert_eq!(theirs.img_name, ours.image_name);
    assert_eq!(theirs.img_version, ours.image_version);
    assert_eq!(theirs.build_info.build_time, ours.build.build_time);
    assert_eq!(theirs.build_info.build_tool, ours.build.build_tool);
    assert_eq!(
        theirs.build_info.build_tool_version,
        ours.build.build_tool_version
    );
    assert_eq!(theirs.build_info.img_os, ours.build.operating_system);
    assert_eq!(theirs.build_info.img_kernel, ours.build.kernel_version);
    assert_eq!(theirs.docker_info, ours.docker_info);
    assert_eq!(theirs.custom_info, ours.custom);
}

fn ours(i: &Inputs, signed: bool, out: &Path) -> nitro_eif::BuildOutput {
    let mut b = EifBuilder::new(&i.kernel, "console=ttyS0 reboot=k panic=30 pci=off")
        .ramdisk(
            BootstrapRamdisk::from_bytes(b"static init".to_vec())
                .module_bytes("nsm.ko", vec![9; 5000]),
        )
        .ramdisk(
            CustomerRamdisk::from_dir(&i.rootfs)
                .unwrap()
                .cmd(["/usr/bin/app"])
                .env("A", "1"),
        )
        .name("interop")
        .version("2.0")
        .custom_metadata(serde_json::json!({"team": "nitro-rs"}));
    if signed {
        b = b.signer(PemSigner::from_files(&i.key, &i.cert).unwrap());
    }
    b.build_file(out).unwrap()
}

#[test]
fn nitro_eif_images_are_read_by_the_format_crate() {
    let i = inputs();
    for signed in [false, true] {
        let path = i.dir.path().join(format!("ours-{signed}.eif"));
        let built = ours(&i, signed, &path);
        let aws = aws_read(&path);
        assert_eq!(
            aws.measurements,
            as_map(&built.measurements),
            "signed={signed}"
        );
        assert!(aws.crc_ok, "signed={signed}");
        check_metadata_equal(aws.metadata.as_ref().unwrap(), &built.metadata);
        // Our describe output equals what nitro-cli would print for these fields.
        let d: serde_json::Value = serde_json::to_value(built.describe()).unwrap();
        if signed {
            assert_eq!(aws.sign_check, Some(true));
            assert_eq!(aws.cert_info.as_ref(), Some(&d["SigningCertificate"]));
            let mut checker = PcrSignatureChecker::from_eif(path.to_str().unwrap()).unwrap();
            assert!(!checker.is_empty());
            checker.verify().unwrap();
        } else {
            assert!(aws.cert_info.is_none());
            assert!(
                PcrSignatureChecker::from_eif(path.to_str().unwrap())
                    .unwrap()
                    .is_empty()
            );
        }
        assert_eq!(
            d["Measurements"]["HashAlgorithm"],
            format!("{:?}", sha2::Sha384::new())
        );
    }
}

fn identity(name: &str) -> EifIdentityInfo {
    EifIdentityInfo {
        img_name: name.to_owned(),
        img_version: "1.0".into(),
        build_info: EifBuildInfo {
            build_time: "2024-05-06T07:08:09+00:00".into(),
            build_tool: "eif_build".into(),
            build_tool_version: "0.2.1".into(),
            img_os: "OS".into(),
            img_kernel: "kernel".into(),
        },
        docker_info: serde_json::Value::Null,
        custom_info: serde_json::json!({"k": "v"}),
    }
}

fn theirs(i: &Inputs, signed: bool, out: &Path) -> BTreeMap<String, String> {
    let sign = signed.then(|| SignKeyData::new(i.key.to_str().unwrap(), &i.cert).unwrap());
    let mut b = AwsBuilder::new(
        &i.kernel,
        "console=ttyS0 reboot=k".to_owned(),
        sign,
        sha2::Sha384::new(),
        0,
        identity("aws-built"),
    );
    b.add_ramdisk(&i.ramdisk0);
    b.add_ramdisk(&i.ramdisk1);
    let mut f = File::create(out).unwrap();
    b.write_to(&mut f)
}

#[test]
fn format_crate_images_are_read_by_nitro_eif() {
    let i = inputs();
    for signed in [false, true] {
        let path = i.dir.path().join(format!("theirs-{signed}.eif"));
        let measurements = theirs(&i, signed, &path);
        let mut r = EifReader::open(&path).unwrap();
        let m = r.verify().unwrap();
        assert_eq!(as_map(&m), measurements, "signed={signed}");
        let d: Describe = r.describe().unwrap();
        assert!(d.check_crc);
        assert_eq!(d.is_signed, signed);
        assert_eq!(d.signature_check, signed.then_some(true));
        assert_eq!(d.image_name.as_deref(), Some("aws-built"));
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(
            v["Metadata"]["k"], "v",
            "custom metadata is flattened as nitro-cli does"
        );
        if signed {
            r.check_certificate_validity(std::time::SystemTime::now())
                .unwrap();
            assert_eq!(
                m.pcr8,
                Some(nitro_eif::Pcr::of_certificate_pem(&std::fs::read(&i.cert).unwrap()).unwrap())
            );
            // And the format crate agrees on the certificate description.
            assert_eq!(
                aws_read(&path).cert_info.as_ref(),
                Some(&v["SigningCertificate"])
            );
        }
    }
}

#[test]
fn unsigned_images_from_the_same_inputs_are_byte_identical() {
    let i = inputs();
    let aws_path = i.dir.path().join("aws.eif");
    theirs(&i, false, &aws_path);
    let id = identity("aws-built");
    let mut meta = Metadata::new(id.img_name.clone(), id.img_version.clone());
    meta.build.build_time = id.build_info.build_time.clone();
    meta.build.build_tool = id.build_info.build_tool.clone();
    meta.build.build_tool_version = id.build_info.build_tool_version.clone();
    meta.build.operating_system = id.build_info.img_os.clone();
    meta.build.kernel_version = id.build_info.img_kernel.clone();
    meta.custom = id.custom_info.clone();
    let our_path = i.dir.path().join("ours.eif");
    EifBuilder::new(&i.kernel, "console=ttyS0 reboot=k")
        .ramdisk_file(&i.ramdisk0)
        .ramdisk_file(&i.ramdisk1)
        .metadata(meta)
        .build_file(&our_path)
        .unwrap();
    let a = std::fs::read(&aws_path).unwrap();
    let b = std::fs::read(&our_path).unwrap();
    assert_eq!(a.len(), b.len());
    assert!(
        a == b,
        "first difference at byte {:?}",
        a.iter().zip(&b).position(|(x, y)| x != y)
    );
}

#[test]
fn pcr_of_a_certificate_matches_nitro_cli_formula() {
    // nitro-cli pcr --signing-certificate: SHA384(0^48 || SHA384(DER)).
    let i = inputs();
    let pem = std::fs::read(&i.cert).unwrap();
    let ours = nitro_eif::Pcr::of_certificate_pem(&pem).unwrap();
    let path = i.dir.path().join("s.eif");
    let theirs = theirs(&i, true, &path);
    assert_eq!(theirs.get("PCR8"), Some(&ours.to_hex()));
}
