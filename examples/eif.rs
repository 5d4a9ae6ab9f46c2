//! Build, describe, measure and unpack Enclave Image Files, without Docker.
//!
//! ```sh
//! # From ready ramdisks (like eif_build):
//! cargo run --release --example eif -- build --kernel bzImage --cmdline "$(cat cmdline)" \
//!     --ramdisk bootstrap.cpio --ramdisk customer.cpio -o app.eif
//! # From an init, kernel modules (loaded in the order given) and a root file system:
//! cargo run --release --example eif -- build --kernel bzImage --cmdline "console=ttyS0" \
//!     --init target/x86_64-unknown-linux-musl/release/init --module vsock.ko --module nsm.ko \
//!     --rootfs ./rootfs --cmd /bin/app --env RUST_LOG=info -o app.eif
//! # From a container image saved without a registry (`docker save app:1 -o app.tar`, or an OCI layout):
//! cargo run --release --example eif -- build --kernel bzImage --cmdline "console=ttyS0" \
//!     --init init --module nsm.ko --image app.tar --private-key key.pem \
//!     --signing-certificate cert.pem --output-file app.eif
//! # From a registry, without Docker (`docker://` prefix; credentials from ~/.docker/config.json;
//! # the platform is the kernel's; the manifest digest pulled is printed as "image_digest"):
//! cargo run --release --example eif -- build --kernel bzImage --cmdline "console=ttyS0" \
//!     --init init --image docker://ghcr.io/example/app:1.2 --output-file app.eif
//! # From an enclave manifest (nitro-manifest): its image, with nitro-supervisor as the command
//! # and the manifest at /etc/nitro/enclave.toml (so PCR2 measures the policy it carries):
//! cargo run --release --example eif -- build --kernel bzImage --cmdline "console=ttyS0" \
//!     --init nitro-init --module nsm.ko --manifest enclave.toml \
//!     --supervisor target/x86_64-unknown-linux-musl/release/nitro-supervisor -o app.eif
//! # --private-key also takes a KMS key ARN (credentials from the AWS environment variables):
//! cargo run --release --example eif -- sign --eif-path app.eif \
//!     --private-key arn:aws:kms:us-east-1:111122223333:key/ID --signing-certificate cert.pem
//! # Detached: the bytes to sign, signed elsewhere, attached (DER or raw r||s):
//! cargo run --release --example eif -- sign-request --eif-path app.eif --signing-certificate cert.pem -o tbs.bin
//! openssl dgst -sha384 -sign key.pem -out sig.der tbs.bin
//! cargo run --release --example eif -- attach-signature --eif-path app.eif \
//!     --signing-certificate cert.pem --signature sig.der
//! cargo run --release --example eif -- describe-eif --eif-path app.eif
//! cargo run --release --example eif -- pcr --signing-certificate cert.pem
//! cargo run --release --example eif -- extract app.eif --dir unpacked/
//! # Build speed against the floor (one SHA-384 pass over the same bytes), interleaved rounds:
//! cargo run --release --example eif -- bench --customer-mib 256
//! ```
//!
//! `build` prints the `nitro-cli describe-eif` JSON of the new image. Command arguments that
//! start with `-` are given as `--cmd=-x`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use nitro_eif::{
    Arch, BootstrapRamdisk, CustomerRamdisk, EifBuilder, EifReader, ImageOptions, Pcr, PemSigner,
    RegistryOptions, SectionKind, SignRequest, sign_eif, sign_eif_async,
};
use nitro_kms::KmsClient;
use nitro_kms::credentials::EnvironmentCredentials;
use nitro_kms::eif_signer::{KmsEifSigner, SignMessageType};

#[derive(Parser)]
#[command(
    name = "eif",
    about = "Build, describe, measure and unpack AWS Nitro Enclave Image Files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an EIF and print its describe JSON.
    Build(Box<Build>),
    /// Print the `nitro-cli describe-eif` JSON of an EIF (PCRs recomputed, CRC and signature checked).
    #[command(name = "describe", visible_alias = "describe-eif")]
    Describe {
        /// The EIF (positional, or `--eif-path` as nitro-cli spells it).
        #[arg(required_unless_present = "eif_path", conflicts_with = "eif_path")]
        file: Option<PathBuf>,
        /// The EIF.
        #[arg(long)]
        eif_path: Option<PathBuf>,
        /// Also check that the signing certificate is valid now.
        #[arg(long)]
        check_certificate_time: bool,
    },
    /// Compute a PCR like `nitro-cli pcr`.
    Pcr {
        /// PCR8 of a PEM signing certificate.
        #[arg(long, conflicts_with = "input", required_unless_present = "input")]
        signing_certificate: Option<PathBuf>,
        /// SHA384(0^48 || SHA384(file)).
        #[arg(long)]
        input: Option<PathBuf>,
    },
    /// Time building (and verifying) an EIF with an N MiB customer ramdisk against one SHA-384
    /// pass over the same bytes, in interleaved rounds; prints medians and ratios.
    Bench {
        /// Size of the customer ramdisk in MiB.
        #[arg(long, default_value_t = 256)]
        customer_mib: usize,
        /// Rounds (each runs every contender once).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
    /// Write the exact bytes to be signed for an EIF (the COSE Sig_structure over its PCR0):
    /// sign them elsewhere (`openssl dgst -sha384 -sign key.pem -out sig.der FILE`, an HSM),
    /// then use `attach-signature`.
    SignRequest {
        /// The EIF.
        #[arg(long)]
        eif_path: PathBuf,
        /// PEM certificate of the key that will sign.
        #[arg(long)]
        signing_certificate: PathBuf,
        /// Where to write the bytes to sign.
        #[arg(short = 'o', long = "output-file")]
        output: PathBuf,
        /// Write their SHA-384 digest instead (for signers that take a digest).
        #[arg(long)]
        digest: bool,
    },
    /// Put a signature made elsewhere (DER, as openssl writes it, or raw r||s) into an EIF;
    /// the signature is checked against the certificate first.
    AttachSignature {
        /// The EIF.
        #[arg(long)]
        eif_path: PathBuf,
        /// PEM certificate of the key that signed.
        #[arg(long)]
        signing_certificate: PathBuf,
        /// The signature file.
        #[arg(long)]
        signature: PathBuf,
        /// Output EIF (default: replace the input).
        #[arg(short = 'o', long = "output-file")]
        output: Option<PathBuf>,
    },
    /// Sign or re-sign an existing EIF without rebuilding it (PCR0-2 unchanged), like
    /// `nitro-cli sign-eif`.
    #[command(visible_alias = "sign-eif")]
    Sign {
        /// The EIF.
        #[arg(long)]
        eif_path: PathBuf,
        /// PEM private key file or KMS key ARN.
        #[arg(long, visible_alias = "sign-key")]
        private_key: String,
        /// PEM certificate of the signing key.
        #[arg(long, visible_alias = "sign-cert")]
        signing_certificate: PathBuf,
        /// Output EIF (default: replace the input).
        #[arg(short = 'o', long = "output-file")]
        output: Option<PathBuf>,
    },
    /// Write an EIF's sections to files: kernel, cmdline, metadata.json, ramdisk-N.cpio,
    /// signature.cbor and signing-certificate.pem.
    Extract {
        /// The EIF.
        file: PathBuf,
        /// Output directory (created).
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct Build {
    /// Kernel image (bzImage on x86_64, Image on aarch64).
    #[arg(long)]
    kernel: PathBuf,
    /// Kernel command line.
    #[arg(long)]
    cmdline: String,
    /// Ready-made ramdisks, in order (first = bootstrap, PCR1; others = customer, PCR2).
    #[arg(long, conflicts_with_all = ["init", "module", "rootfs", "image"])]
    ramdisk: Vec<PathBuf>,
    /// The enclave init (bootstrap ramdisk).
    #[arg(long, requires = "customer")]
    init: Option<PathBuf>,
    /// Kernel modules for the bootstrap ramdisk, loaded in the order given.
    #[arg(long, requires = "init")]
    module: Vec<PathBuf>,
    /// Root file system directory of the application.
    #[arg(long, group = "customer")]
    rootfs: Option<PathBuf>,
    /// Enclave manifest (`enclave.toml`, nitro-manifest): the image comes from its `[image]`
    /// (paths relative to the manifest), the manifest is stored at `/etc/nitro/enclave.toml`
    /// and `--supervisor` becomes the command, with the image's own command after `--`.
    #[arg(long, group = "customer", requires = "supervisor", conflicts_with_all = ["cmd", "image_ref"])]
    manifest: Option<PathBuf>,
    /// The in-enclave supervisor binary (static), stored at `/usr/bin/nitro-supervisor`.
    #[arg(long, requires = "manifest")]
    supervisor: Option<PathBuf>,
    /// Container image: OCI layout (directory or tar), `docker save` archive, or a registry
    /// reference prefixed with `docker://` (`docker://host[:port]/repo:tag`,
    /// `docker://repo@sha256:...`).
    #[arg(long, group = "customer")]
    image: Option<PathBuf>,
    /// Speak plain HTTP to the registry of a `docker://` image (a local test registry).
    #[arg(long)]
    insecure_registry: bool,
    /// Image to pick when the archive holds several (e.g. `app:1`).
    #[arg(long, requires = "image")]
    image_ref: Option<String>,
    /// Cap on the unpacked size of the container image in MiB (files' logical sizes and every
    /// decompression; default 4096).
    #[arg(long)]
    max_unpacked_mib: Option<u64>,
    /// Command (argv) to run; replaces the image's Entrypoint + Cmd.
    #[arg(long, num_args = 1.., requires = "init")]
    cmd: Vec<String>,
    /// Environment variables NAME=VALUE; added to (or replacing) the image's Env.
    #[arg(long, num_args = 1.., requires = "init")]
    env: Vec<String>,
    /// Signing key: a PEM private key file (P-256/P-384/P-521) or a KMS key ARN
    /// (`arn:aws:kms:REGION:ACCOUNT:key/ID`), as nitro-cli takes it.
    #[arg(long, visible_alias = "sign-key", requires = "signing_certificate")]
    private_key: Option<String>,
    /// PEM certificate of the signing key (its fingerprint is PCR8).
    #[arg(long, visible_alias = "sign-cert", requires = "private_key")]
    signing_certificate: Option<PathBuf>,
    /// Image name in the metadata (default: the output file name).
    #[arg(long)]
    name: Option<String>,
    /// Image version in the metadata.
    #[arg(long, default_value = "1.0")]
    version: String,
    /// Build time in seconds since the Unix epoch (default: SOURCE_DATE_EPOCH, else 0).
    #[arg(long)]
    build_time: Option<u64>,
    /// JSON file stored as CustomMetadata.
    #[arg(long)]
    metadata: Option<PathBuf>,
    /// Architecture, when the kernel is not a bzImage or arm64 Image.
    #[arg(long, value_parser = ["x86_64", "aarch64"])]
    arch: Option<String>,
    /// Output EIF.
    #[arg(short = 'o', long = "output-file", visible_alias = "output")]
    output: PathBuf,
}

/// A `--private-key` value: a PEM file or a KMS key ARN.
enum KeyRef {
    Pem(PathBuf),
    Kms(String),
}

fn key_ref(s: &str) -> KeyRef {
    if s.starts_with("arn:") {
        KeyRef::Kms(s.to_owned())
    } else {
        KeyRef::Pem(PathBuf::from(s))
    }
}

/// A KMS signer for `arn`: region from the ARN, credentials from the AWS environment
/// variables, endpoint from `AWS_ENDPOINT_URL_KMS` / `AWS_ENDPOINT_URL` when set (plain http
/// allowed only for loopback test servers).
fn kms_signer(arn: &str, certificate: &std::path::Path) -> anyhow::Result<KmsEifSigner> {
    let region = KmsEifSigner::region_of_arn(arn).with_context(|| {
        format!("{arn:?} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)")
    })?;
    let mut b = KmsClient::builder(region).credentials(EnvironmentCredentials);
    if let Some(url) = std::env::var("AWS_ENDPOINT_URL_KMS")
        .ok()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
    {
        if url.starts_with("http://127.") || url.starts_with("http://localhost") {
            b = b.dangerous_allow_plain_http();
        }
        b = b.endpoint(url);
    }
    let mut signer = KmsEifSigner::new(b.build()?, arn, std::fs::read(certificate)?)?;
    if std::env::var("NITRO_EIF_KMS_MESSAGE_TYPE").as_deref() == Ok("RAW") {
        signer = signer.message_type(SignMessageType::Raw);
    }
    Ok(signer)
}

/// Signs `input` into `output` with a PEM key or a KMS key; prints the describe JSON.
fn sign_with(
    input: &std::path::Path,
    output: &std::path::Path,
    key: &str,
    certificate: &std::path::Path,
) -> anyhow::Result<()> {
    match key_ref(key) {
        KeyRef::Pem(k) => {
            sign_eif(input, output, &PemSigner::from_files(k, certificate)?)?;
        }
        KeyRef::Kms(arn) => {
            let signer = kms_signer(&arn, certificate)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(sign_eif_async(input, output, &signer))?;
        }
    }
    Ok(())
}

fn build(a: Build) -> anyhow::Result<()> {
    let name = a.name.clone().unwrap_or_else(|| {
        a.output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "enclave".into())
    });
    let mut b = EifBuilder::new(&a.kernel, a.cmdline)
        .name(name)
        .version(a.version);
    let mut image_digest = None;
    if let Some(init) = &a.init {
        let mut boot = BootstrapRamdisk::new(init);
        for m in &a.module {
            boot = boot.module(m);
        }
        let manifest = match &a.manifest {
            Some(path) => Some(load_manifest(path)?),
            None => None,
        };
        let image = match &manifest {
            Some((_, _, source)) => Some(source.path.clone()),
            None => a.image.clone(),
        };
        let image_ref = match &manifest {
            Some((_, _, source)) => source.tag.clone(),
            None => a.image_ref.clone(),
        };
        let mut customer = match (&a.rootfs, &image) {
            (Some(dir), None) => CustomerRamdisk::from_dir(dir)?,
            (None, Some(image)) => {
                let mut opts = ImageOptions::default();
                if let Some(r) = &image_ref {
                    opts = opts.reference(r.clone());
                }
                if let Some(mib) = a.max_unpacked_mib {
                    opts = opts.max_unpacked(mib.saturating_mul(1 << 20));
                }
                if let Some(arch) = kernel_arch(&a.kernel, a.arch.as_deref())? {
                    opts = opts.arch(arch);
                }
                match image.to_str().and_then(|s| s.strip_prefix("docker://")) {
                    Some(reference) => {
                        let reg = RegistryOptions::default().insecure(a.insecure_registry);
                        let c = CustomerRamdisk::from_registry(reference, &opts, &reg)?;
                        image_digest = c.image_digest().map(str::to_owned);
                        c
                    }
                    None => CustomerRamdisk::from_image_with(image, &opts)?,
                }
            }
            _ => bail!("give --rootfs DIR, --image PATH or --manifest FILE with --init"),
        };
        if !a.cmd.is_empty() {
            customer = customer.cmd(a.cmd.iter().cloned());
        }
        for kv in &a.env {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--env {kv:?}: expected NAME=VALUE"))?;
            customer = customer.env(k, v);
        }
        if let (Some((text, _, _)), Some(supervisor)) = (&manifest, &a.supervisor) {
            // The supervisor runs the manifest's entrypoint, or else the image's own command.
            let argv: Vec<String> = [SUPERVISOR_IN_IMAGE.to_owned(), "--".to_owned()]
                .into_iter()
                .chain(customer.command().iter().cloned())
                .collect();
            customer = customer.cmd(argv);
            let mut archive = customer.into_archive()?;
            archive.file(
                format!("rootfs{}", nitro_manifest::PATH_IN_IMAGE),
                0o444,
                text.clone().into_bytes(),
            )?;
            archive.file_from_disk(format!("rootfs{SUPERVISOR_IN_IMAGE}"), 0o755, supervisor)?;
            b = b.ramdisk(boot).ramdisk(archive);
        } else {
            if customer.command().is_empty() {
                eprintln!("warning: empty cmd; the AWS init then runs `sh`");
            }
            b = b.ramdisk(boot).ramdisk(customer);
        }
    } else if a.ramdisk.is_empty() {
        bail!("give either --ramdisk FILE... or --init FILE with --rootfs DIR / --image PATH");
    } else {
        for r in &a.ramdisk {
            b = b.ramdisk_file(r);
        }
    }
    // A KMS key signs after the build (the image is written unsigned, then signed in place).
    let mut kms_key = None;
    match (&a.private_key, &a.signing_certificate) {
        (Some(k), Some(c)) => match key_ref(k) {
            KeyRef::Pem(k) => b = b.signer(PemSigner::from_files(k, c)?),
            KeyRef::Kms(arn) => kms_key = Some((arn, c.clone())),
        },
        (None, None) => {}
        _ => bail!("--private-key and --signing-certificate go together"),
    }
    if let Some(t) = a.build_time {
        b = b.build_time(UNIX_EPOCH + Duration::from_secs(t));
    }
    if let Some(m) = &a.metadata {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(m)?).context("--metadata")?;
        b = b.custom_metadata(v);
    }
    if let Some(arch) = a.arch.as_deref() {
        b = b.arch(parse_arch(arch)?);
    }
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::hidden();
        bar.set_style(indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )?);
        let shown = bar.clone();
        b = b.on_progress(move |p| {
            // Only worth showing for large images.
            if p.total >= 64 << 20 && shown.is_hidden() {
                shown.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                shown.set_length(p.total);
            }
            shown.set_position(p.done);
        });
        let out = b.build_file(&a.output);
        bar.finish_and_clear();
        out?;
    } else {
        b.build_file(&a.output)?;
    }
    if let Some((arn, cert)) = kms_key {
        sign_with(&a.output, &a.output, &arn, &cert)?;
    }
    let described = EifReader::open(&a.output)?.describe()?.to_json_pretty();
    match image_digest {
        // A registry image: the manifest digest pulled, to pin it (`repo@digest`).
        Some(d) => {
            let mut v: serde_json::Value = serde_json::from_str(&described)?;
            v["image_digest"] = serde_json::Value::String(d);
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        None => println!("{described}"),
    }
    Ok(())
}

fn parse_arch(s: &str) -> anyhow::Result<Arch> {
    Ok(match s {
        "x86_64" => Arch::X86_64,
        "aarch64" => Arch::Aarch64,
        other => bail!("unknown architecture {other}"),
    })
}

/// The architecture to pick from a multi-platform image: given, or the kernel's.
/// Where `build --manifest` puts the supervisor in the image.
const SUPERVISOR_IN_IMAGE: &str = "/usr/bin/nitro-supervisor";

/// Where a manifest's image comes from, as `build` takes it.
struct ManifestImage {
    /// An OCI layout or `docker save` archive (relative to the manifest), or `docker://REF`.
    path: PathBuf,
    /// The tag to pick in an OCI layout.
    tag: Option<String>,
}

/// Reads and validates a manifest: (its text, the manifest, its image source).
fn load_manifest(
    path: &std::path::Path,
) -> anyhow::Result<(String, nitro_manifest::Manifest, ManifestImage)> {
    use nitro_manifest::ImageSource;
    let manifest = nitro_manifest::Manifest::load(path)
        .with_context(|| format!("manifest {}", path.display()))?;
    // The bytes stored in the image are the bytes validated (load bounds the size).
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let image = match manifest.image.source() {
        ImageSource::Oci(spec) => {
            // `dir:tag`; a `:` inside the path is kept when no tag follows the last one.
            let (dir, tag) = match spec.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !t.is_empty() => (d, Some(t.to_owned())),
                _ => (spec, None),
            };
            ManifestImage {
                path: base.join(dir),
                tag,
            }
        }
        ImageSource::DockerArchive(archive) => ManifestImage {
            path: base.join(archive),
            tag: None,
        },
        ImageSource::Reference(reference) => ManifestImage {
            path: PathBuf::from(format!("docker://{reference}")),
            tag: None,
        },
        other => bail!(
            "manifest {}: image source {other:?} is not supported",
            path.display()
        ),
    };
    Ok((text, manifest, image))
}

fn kernel_arch(kernel: &PathBuf, given: Option<&str>) -> anyhow::Result<Option<Arch>> {
    if let Some(g) = given {
        return parse_arch(g).map(Some);
    }
    let mut head = vec![0u8; 4096];
    let n = std::io::Read::read(&mut std::fs::File::open(kernel)?, &mut head)?;
    Ok(Arch::detect_kernel(&head[..n]))
}

fn describe(file: PathBuf, check_time: bool) -> anyhow::Result<()> {
    let mut r = EifReader::open(&file)?;
    let d = r.describe()?;
    println!("{}", d.to_json_pretty());
    if !d.check_crc {
        eprintln!("warning: CRC mismatch");
    }
    if d.signature_check == Some(false) {
        eprintln!("warning: the signature does not verify");
    }
    if check_time && r.is_signed() {
        r.check_certificate_validity(std::time::SystemTime::now())?;
    }
    Ok(())
}

fn pcr(cert: Option<PathBuf>, input: Option<PathBuf>) -> anyhow::Result<()> {
    let (key, value) = match (cert, input) {
        (Some(c), _) => ("PCR8", Pcr::of_certificate_pem(&std::fs::read(&c)?)?),
        (None, Some(i)) => ("PCR", Pcr::of_bytes(&std::fs::read(&i)?)),
        (None, None) => bail!("give --signing-certificate PEM or --input FILE"),
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({ key: value.to_hex() }))?
    );
    Ok(())
}

fn extract(file: PathBuf, dir: PathBuf) -> anyhow::Result<()> {
    let mut r = EifReader::open(&file)?;
    std::fs::create_dir_all(&dir)?;
    let sections = r.sections().to_vec();
    let mut ramdisk = 0;
    for s in sections {
        let name = match s.kind {
            SectionKind::Kernel => "kernel".to_owned(),
            SectionKind::Cmdline => "cmdline".to_owned(),
            SectionKind::Metadata => "metadata.json".to_owned(),
            SectionKind::Ramdisk => {
                ramdisk += 1;
                format!("ramdisk-{}.cpio", ramdisk - 1)
            }
            SectionKind::Signature => "signature.cbor".to_owned(),
            _ => format!("section-{}", s.index),
        };
        let path = dir.join(&name);
        let n = r.copy_section(s.index, &mut std::fs::File::create(&path)?)?;
        println!("{:>12}  {}", n, path.display());
    }
    if let Some(pem) = r.signing_certificate_pem() {
        let path = dir.join("signing-certificate.pem");
        std::fs::write(&path, pem)?;
        println!("{:>12}  {}", pem.len(), path.display());
    }
    Ok(())
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn bench(customer_mib: usize, rounds: usize) -> anyhow::Result<()> {
    use std::time::Instant;
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir()?;
    let p = |n: &str| dir.path().join(n);
    let mut kernel = pseudo_random(12 * MIB, 1);
    kernel[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(p("bzImage"), &kernel)?;
    std::fs::write(p("bootstrap.cpio"), pseudo_random(4 * MIB, 2))?;
    std::fs::write(p("customer.cpio"), pseudo_random(customer_mib * MIB, 3))?;
    // The same customer bytes as a root file system directory: files of at most 4 MiB.
    let data = std::fs::read(p("customer.cpio"))?;
    std::fs::create_dir_all(p("rootfs/data"))?;
    for (i, chunk) in data.chunks(4 * MIB).enumerate() {
        std::fs::write(p(&format!("rootfs/data/blob{i:04}")), chunk)?;
    }
    drop(data);
    let inputs = [p("bzImage"), p("bootstrap.cpio"), p("customer.cpio")];
    let total = (16 + customer_mib) * MIB;
    let floor = || -> anyhow::Result<()> {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA384);
        let mut buf = vec![0u8; MIB];
        for i in &inputs {
            let mut f = std::fs::File::open(i)?;
            loop {
                let n = std::io::Read::read(&mut f, &mut buf)?;
                if n == 0 {
                    break;
                }
                ctx.update(&buf[..n]);
            }
        }
        std::hint::black_box(ctx.finish());
        Ok(())
    };
    let build = || -> anyhow::Result<()> {
        EifBuilder::new(&inputs[0], "console=ttyS0")
            .ramdisk_file(&inputs[1])
            .ramdisk_file(&inputs[2])
            // A new file each time: ext4 flushes a truncated-and-rewritten file on close.
            .build(&mut {
                let _ = std::fs::remove_file(p("out.eif"));
                std::fs::File::create(p("out.eif"))?
            })?;
        Ok(())
    };
    let build_rootfs = || -> anyhow::Result<()> {
        EifBuilder::new(&inputs[0], "console=ttyS0")
            .ramdisk(BootstrapRamdisk::new(&inputs[1]))
            .ramdisk(CustomerRamdisk::from_dir(p("rootfs"))?.cmd(["/data/app"]))
            .build(&mut {
                let _ = std::fs::remove_file(p("out2.eif"));
                std::fs::File::create(p("out2.eif"))?
            })?;
        Ok(())
    };
    let verify = || -> anyhow::Result<()> {
        EifReader::open(p("out.eif"))?.verify()?;
        Ok(())
    };
    let names = [
        "floor: one SHA-384 pass",
        "nitro-eif build (ramdisk files)",
        "nitro-eif build (rootfs dir)",
        "nitro-eif read + verify",
    ];
    let mut times: [Vec<f64>; 4] = Default::default();
    build()?; // warm the page cache and the output file
    for _ in 0..rounds.max(1) {
        for (i, f) in [
            &floor as &dyn Fn() -> anyhow::Result<()>,
            &build,
            &build_rootfs,
            &verify,
        ]
        .iter()
        .enumerate()
        {
            let t = Instant::now();
            f()?;
            times[i].push(t.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let m: Vec<f64> = times.iter_mut().map(median).collect();
    println!(
        "{} MiB of inputs ({customer_mib} MiB customer ramdisk), median of {rounds} interleaved rounds:",
        total / MIB
    );
    for (i, name) in names.iter().enumerate() {
        println!(
            "  {name:<32} {:>8.1} ms  {:>7.0} MiB/s  {:>5.2}x the floor",
            m[i] * 1e3,
            total as f64 / MIB as f64 / m[i],
            m[i] / m[0]
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Build(b) => build(*b),
        Command::Describe {
            file,
            eif_path,
            check_certificate_time,
        } => describe(
            file.or(eif_path).context("give the EIF path")?,
            check_certificate_time,
        ),
        Command::SignRequest {
            eif_path,
            signing_certificate,
            output,
            digest,
        } => {
            let req = SignRequest::for_eif(&eif_path, &std::fs::read(&signing_certificate)?)?;
            let bytes = if digest {
                req.digest()
            } else {
                req.to_be_signed().to_vec()
            };
            std::fs::write(&output, bytes)
                .with_context(|| format!("writing {}", output.display()))?;
            eprintln!(
                "{}: sign with {} (PCR0 {})",
                output.display(),
                req.algorithm(),
                req.pcr0()
            );
            Ok(())
        }
        Command::AttachSignature {
            eif_path,
            signing_certificate,
            signature,
            output,
        } => {
            let req = SignRequest::for_eif(&eif_path, &std::fs::read(&signing_certificate)?)?;
            let sig = req.attach(&std::fs::read(&signature)?)?;
            let out = output.unwrap_or_else(|| eif_path.clone());
            sig.write_eif(&eif_path, &out)?;
            println!("{}", EifReader::open(&out)?.describe()?.to_json_pretty());
            Ok(())
        }
        Command::Sign {
            eif_path,
            private_key,
            signing_certificate,
            output,
        } => {
            let out = output.unwrap_or_else(|| eif_path.clone());
            sign_with(&eif_path, &out, &private_key, &signing_certificate)?;
            println!("{}", EifReader::open(&out)?.describe()?.to_json_pretty());
            Ok(())
        }
        Command::Pcr {
            signing_certificate,
            input,
        } => pcr(signing_certificate, input),
        Command::Extract { file, dir } => extract(file, dir),
        Command::Bench {
            customer_mib,
            rounds,
        } => bench(customer_mib, rounds),
    }
}
