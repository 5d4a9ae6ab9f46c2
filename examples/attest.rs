//! `attest`: verify, inspect, simulate and benchmark Nitro attestation documents.
//!
//! ```sh
//! # Verify documents (raw CBOR, hex or base64, detected) against the AWS root at their own
//! # timestamp; one JSON line per file, exit status 0 only if all are valid.
//! cargo run --release --example attest -- verify --at doc --allow-debug tests/fixtures/attestation/*.bin
//!
//! # Print a document's fields as JSON.
//! cargo run --release --example attest -- inspect doc.cbor
//!
//! # Produce a document with the simulated NSM, and its root certificate.
//! cargo run --release --example attest -- sim --out doc.cbor --root-out root.pem --seed 1 \
//!     --pcr 16=$(printf hello | sha384sum | cut -c1-96) --nonce 0011
//! cargo run --release --example attest -- verify --root root.pem --nonce 0011 doc.cbor
//!
//! # Several runs (processes) sharing one simulator root: the PKI file is created by the first
//! # run and reused by the next ones; it doubles as the root PEM for `verify`.
//! cargo run --release --example attest -- sim --pki sim-pki.pem --out a.cbor --root-out root.pem
//! cargo run --release --example attest -- sim --pki sim-pki.pem --out b.cbor --root-out root.pem
//! cargo run --release --example attest -- verify --root sim-pki.pem a.cbor b.cbor
//!
//! # NitroTPM documents (EC2 instance attestation) are refused unless asked for.
//! cargo run --release --example attest -- sim --kind nitrotpm --out tpm.cbor --root-out root.pem
//! cargo run --release --example attest -- verify --root root.pem --kind nitrotpm tpm.cbor
//!
//! # The attestation HTTP API on loopback (from /dev/nsm in an enclave, or a simulator).
//! cargo run --release --example attest -- serve --nsm --listen 127.0.0.1:8901
//! cargo run --release --example attest -- serve --pki sim-pki.pem --listen 127.0.0.1:8901
//! curl -sS -X POST --data '{"nonce":"AAEC"}' -o doc.cbor http://127.0.0.1:8901/v1/attestation
//!
//! # Verification throughput (single thread), beside the raw ECDSA P-384 floor.
//! cargo run --release --example attest -- bench --cache --at doc --iterations 2000 doc.cbor
//! ```
//!
//! Options of `verify` and `bench`: `--root PEM` trusts that root **instead of** the AWS Nitro
//! Enclaves Root-G1 (an explicit opt-in, e.g. for the simulator); `--at doc|now|UNIX_MS` chooses
//! when certificate validity is checked (default `now`); `--leeway SECS` (default 30) and
//! `--max-age SECS` (age against the current time); `--pcr IDX=HEX` (repeatable), `--nonce HEX`,
//! `--user-data HEX`, `--public-key HEX` are expected values; `--allow-debug` accepts debug-mode
//! documents; `--kind enclave|nitrotpm|any` chooses the accepted document kinds (default
//! `enclave`: Nitro Enclaves documents only), and each line reports the document's `kind`.
//! Bytes after the COSE_Sign1 (some tools, e.g. dstack, store a trailer after it) make a
//! document invalid unless `--allow-trailing-bytes` is given; they are then ignored and
//! reported as `trailing_bytes`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED, ParsedPublicKey};
use clap::{Args, Parser, Subcommand};
use nitro_attest::{
    AttestationApi, CertCache, CheckTime, DocumentKind, Nsm, Policy, SimulatedNsm, SimulatorPki,
    Timestamp, TrustAnchors, UnverifiedDocument, Verifier,
};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "attest",
    about = "Verify, inspect, simulate and benchmark Nitro attestation documents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify documents; one JSON line per file; exit status 0 only if all are valid.
    Verify {
        #[command(flatten)]
        opts: VerifyOpts,
        /// Documents (raw CBOR, hex or base64).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a document's fields as JSON (not verified).
    Inspect {
        /// Document (raw CBOR, hex or base64).
        file: PathBuf,
    },
    /// Produce a document with the simulated NSM.
    Sim(SimArgs),
    /// Serve the attestation HTTP API (`POST /v1/attestation`) on a loopback address, from
    /// `/dev/nsm` (`--nsm`) or a simulated NSM; prints `{"listening": ADDR}` once ready.
    Serve(ServeArgs),
    /// Measure verification throughput on one thread; the last line is `docs_per_s <float>`.
    Bench {
        #[command(flatten)]
        opts: VerifyOpts,
        /// Use a certificate cache (then one ECDSA verification per document).
        #[arg(long)]
        cache: bool,
        /// Number of verifications.
        #[arg(long, default_value_t = 1000)]
        iterations: u32,
        /// Document (raw CBOR, hex or base64).
        file: PathBuf,
    },
}

/// Options of `sim`.
#[derive(Args)]
struct SimArgs {
    /// Where to write the document (raw CBOR).
    #[arg(long)]
    out: PathBuf,
    /// Where to write the simulator's root certificate (PEM).
    #[arg(long)]
    root_out: PathBuf,
    /// Seed for deterministic keys, certificate contents and PCR defaults (signatures stay
    /// random: use --pki to share a root between runs).
    #[arg(long)]
    seed: Option<u64>,
    /// Issue from the simulator PKI (root certificate and CA keys) in this file: created if
    /// missing, reused if present, so that documents of several runs verify against one root.
    #[arg(long)]
    pki: Option<PathBuf>,
    /// PCR value IDX=HEX (48 bytes, repeatable). PCRs 16-31 given here are set and locked so
    /// that they appear in the document.
    #[arg(long = "pcr", value_parser = parse_pcr)]
    pcrs: Vec<(u16, Vec<u8>)>,
    /// `user_data` (hex).
    #[arg(long, value_parser = parse_hex)]
    user_data: Option<Hex>,
    /// `nonce` (hex).
    #[arg(long, value_parser = parse_hex)]
    nonce: Option<Hex>,
    /// File whose bytes become `public_key`.
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// Document kind: `enclave` (an enclave's NSM, `pcrs`) or `nitrotpm` (an EC2 instance's
    /// NitroTPM, `nitrotpm_pcrs`, 24 PCRs, none locked).
    #[arg(long, default_value = "enclave", value_parser = parse_sim_kind)]
    kind: DocumentKind,
}

fn parse_sim_kind(s: &str) -> Result<DocumentKind, String> {
    s.parse().map_err(|e: nitro_attest::Error| e.to_string())
}

/// Options of `serve`.
#[derive(Args)]
struct ServeArgs {
    /// Loopback address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8901")]
    listen: std::net::SocketAddr,
    /// Use the real NSM (`/dev/nsm`) instead of a simulator.
    #[arg(long)]
    nsm: bool,
    /// Simulator: issue from the PKI in this file (created if missing), whose root verifies
    /// the documents.
    #[arg(long, conflicts_with = "nsm")]
    pki: Option<PathBuf>,
    /// Simulator: seed.
    #[arg(long, conflicts_with = "nsm")]
    seed: Option<u64>,
    /// Simulator: document kind (`enclave` or `nitrotpm`).
    #[arg(long, default_value = "enclave", value_parser = parse_sim_kind, conflicts_with = "nsm")]
    kind: DocumentKind,
}

/// Accepted document kinds (`--kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum KindArg {
    /// Nitro Enclaves documents only.
    Enclave,
    /// NitroTPM documents only.
    Nitrotpm,
    /// Both.
    Any,
}

#[derive(Args, Clone)]
struct VerifyOpts {
    /// Trust this root certificate (PEM) instead of the AWS Nitro Enclaves Root-G1.
    #[arg(long)]
    root: Option<PathBuf>,
    /// When to check certificate validity: `doc` (the document's timestamp), `now`, or a Unix
    /// time in milliseconds.
    #[arg(long, default_value = "now", value_parser = parse_at)]
    at: CheckTime,
    /// Clock-skew leeway in seconds.
    #[arg(long, default_value_t = 30)]
    leeway: u64,
    /// Maximum document age in seconds (against the current time).
    #[arg(long)]
    max_age: Option<u64>,
    /// Expected PCR value IDX=HEX (repeatable).
    #[arg(long = "pcr", value_parser = parse_pcr)]
    pcrs: Vec<(u16, Vec<u8>)>,
    /// Expected nonce (hex).
    #[arg(long, value_parser = parse_hex)]
    nonce: Option<Hex>,
    /// Expected user_data (hex).
    #[arg(long, value_parser = parse_hex)]
    user_data: Option<Hex>,
    /// Expected public_key (hex).
    #[arg(long, value_parser = parse_hex)]
    public_key: Option<Hex>,
    /// Accept debug-mode documents (PCR0/1/2 all zero).
    #[arg(long)]
    allow_debug: bool,
    /// Accepted document kinds.
    #[arg(long, value_enum, default_value = "enclave")]
    kind: KindArg,
    /// Accept (and ignore) bytes after the COSE_Sign1 structure; they are not signed.
    #[arg(long)]
    allow_trailing_bytes: bool,
}

/// Bytes given as hex on the command line.
#[derive(Clone, Debug)]
struct Hex(Vec<u8>);

fn parse_hex(s: &str) -> Result<Hex, String> {
    hex::decode(s.trim_start_matches("0x"))
        .map(Hex)
        .map_err(|e| format!("invalid hex: {e}"))
}

fn parse_pcr(s: &str) -> Result<(u16, Vec<u8>), String> {
    let (i, v) = s.split_once('=').ok_or("expected IDX=HEX")?;
    let i: u16 = i
        .parse()
        .map_err(|e| format!("invalid PCR index {i:?}: {e}"))?;
    Ok((i, parse_hex(v)?.0))
}

fn parse_at(s: &str) -> Result<CheckTime, String> {
    match s {
        "doc" => Ok(CheckTime::DocumentTimestamp),
        "now" => Ok(CheckTime::Now),
        ms => ms
            .parse::<u64>()
            .map(|ms| CheckTime::At(Timestamp::from_unix_millis(ms)))
            .map_err(|_| format!("expected doc, now or a Unix time in milliseconds, got {ms:?}")),
    }
}

impl VerifyOpts {
    fn verifier(&self) -> anyhow::Result<Verifier> {
        let anchors = match &self.root {
            None => TrustAnchors::aws(),
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                TrustAnchors::non_aws_root_pem(&pem)?
            }
        };
        Ok(Verifier::new(anchors))
    }

    fn policy(&self) -> Policy {
        let mut p = Policy::new()
            .check_time(self.at)
            .leeway(Duration::from_secs(self.leeway))
            .allow_debug(self.allow_debug)
            .allow_trailing_bytes(self.allow_trailing_bytes)
            .accept_kinds(
                match self.kind {
                    KindArg::Enclave => &[DocumentKind::Enclave][..],
                    KindArg::Nitrotpm => &[DocumentKind::NitroTpm],
                    KindArg::Any => &[DocumentKind::Enclave, DocumentKind::NitroTpm],
                }
                .iter()
                .copied(),
            );
        if let Some(s) = self.max_age {
            p = p.max_age(Duration::from_secs(s));
        }
        for (i, v) in &self.pcrs {
            p = p.expect_pcr(*i, v);
        }
        if let Some(Hex(n)) = &self.nonce {
            p = p.expect_nonce(n);
        }
        if let Some(Hex(u)) = &self.user_data {
            p = p.expect_user_data(u);
        }
        if let Some(Hex(k)) = &self.public_key {
            p = p.expect_public_key(k);
        }
        p
    }
}

/// A JSON object with its keys in the given order, from already rendered JSON values; compact
/// (`pretty = false`) or indented by two spaces per level.
fn object(fields: &[(&str, String)], pretty: bool) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if pretty {
            out.push_str("\n  ");
            out.push_str(&format!("{}: {}", Value::from(*k), v.replace('\n', "\n  ")));
        } else {
            out.push_str(&format!("{}:{v}", Value::from(*k)));
        }
    }
    out.push_str(if pretty { "\n}" } else { "}" });
    out
}

/// Renders a JSON value (compact, or pretty with two-space indentation).
fn render(v: Value, pretty: bool) -> String {
    if pretty {
        serde_json::to_string_pretty(&v).unwrap_or_default()
    } else {
        v.to_string()
    }
}

/// Writes one line to stdout; a closed pipe (e.g. `| head`) ends the program quietly.
fn emit(line: impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => Ok(r?),
    }
}

/// Reads a document file (raw CBOR, hex or base64): returns the bytes as stored, trailer
/// included, the parsed COSE_Sign1 at their start and the number of bytes after it.
fn read_document(path: &Path) -> anyhow::Result<(Vec<u8>, UnverifiedDocument, usize)> {
    let input = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = nitro_attest::decode_input(&input)?.into_owned();
    let (doc, len) = UnverifiedDocument::parse_prefix(&bytes)?;
    let trailing = bytes.len() - len;
    Ok((bytes, doc, trailing))
}

fn verify(opts: &VerifyOpts, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let verifier = opts.verifier()?;
    let policy = opts.policy();
    let mut all_valid = true;
    for file in files {
        let mut fields: Vec<(&str, Value)> = vec![("file", json!(file.display().to_string()))];
        let mut trailing = 0;
        let mut kind = None;
        let result = read_document(file).and_then(|(bytes, parsed, t)| {
            trailing = t;
            kind = Some(parsed.kind());
            Ok(verifier.verify(&bytes, Timestamp::now(), &policy)?)
        });
        match result {
            Ok(doc) => {
                fields.push(("valid", json!(true)));
                fields.push(("error", Value::Null));
                fields.push(("kind", json!(doc.kind().as_str())));
                fields.push(("module_id", json!(doc.module_id)));
                fields.push(("timestamp", json!(doc.timestamp.to_rfc3339())));
            }
            Err(e) => {
                all_valid = false;
                fields.push(("valid", json!(false)));
                fields.push(("error", json!(format!("{e:#}"))));
                // The kind of a document that parses (not verified).
                if let Some(k) = kind {
                    fields.push(("kind", json!(k.as_str())));
                }
            }
        }
        if trailing > 0 {
            fields.push(("trailing_bytes", json!(trailing)));
        }
        let fields: Vec<(&str, String)> = fields
            .into_iter()
            .map(|(k, v)| (k, render(v, false)))
            .collect();
        emit(object(&fields, false))?;
    }
    Ok(if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn opt_hex(v: &Option<Vec<u8>>) -> Value {
    v.as_ref().map_or(Value::Null, |b| json!(hex::encode(b)))
}

fn inspect(file: &Path) -> anyhow::Result<()> {
    let (_, doc, trailing) = read_document(file)?;
    let p = doc.payload();
    let pcrs: Vec<(String, String)> = p
        .pcrs
        .iter()
        .map(|(i, v)| (i.to_string(), render(json!(hex::encode(v)), false)))
        .collect();
    let pcrs: Vec<(&str, String)> = pcrs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let payload_encoding = if doc.payload_bytes().first() == Some(&0xbf) {
        "indefinite-length map"
    } else {
        "definite-length map"
    };
    let cose = object(
        &[
            ("tagged", render(json!(doc.is_tagged()), false)),
            ("algorithm", render(json!(doc.algorithm()), false)),
            (
                "protected",
                render(json!(hex::encode(doc.protected_header())), false),
            ),
            (
                "signature",
                render(json!(hex::encode(doc.signature())), false),
            ),
            ("payload_encoding", render(json!(payload_encoding), false)),
            (
                "qemu_unsigned",
                render(
                    json!(nitro_attest::dangerous::is_qemu_unsigned(&doc)),
                    false,
                ),
            ),
            ("trailing_bytes", render(json!(trailing), false)),
        ],
        true,
    );
    let cabundle: Vec<String> = p.cabundle.iter().map(hex::encode).collect();
    let out = object(
        &[
            ("file", render(json!(file.display().to_string()), false)),
            ("verified", render(json!(false), false)),
            ("kind", render(json!(p.kind.as_str()), false)),
            ("module_id", render(json!(p.module_id), false)),
            ("digest", render(json!(p.digest.as_str()), false)),
            ("timestamp", render(json!(p.timestamp.unix_millis()), false)),
            (
                "timestamp_rfc3339",
                render(json!(p.timestamp.to_rfc3339()), false),
            ),
            ("debug_mode", render(json!(p.is_debug_mode()), false)),
            ("pcrs", object(&pcrs, true)),
            ("public_key", render(opt_hex(&p.public_key), false)),
            ("user_data", render(opt_hex(&p.user_data), false)),
            ("nonce", render(opt_hex(&p.nonce), false)),
            (
                "certificate",
                render(json!(hex::encode(&p.certificate)), false),
            ),
            ("cabundle", render(json!(cabundle), true)),
            ("cose", cose),
        ],
        true,
    );
    emit(out)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)] // one argument per CLI option
fn sim(args: &SimArgs) -> anyhow::Result<()> {
    let mut b = SimulatedNsm::builder();
    if let Some(s) = args.seed {
        b = b.seed(s);
    }
    if let Some(path) = &args.pki {
        b = b.pki(SimulatorPki::load_or_create(path, args.seed)?);
    }
    for (i, v) in &args.pcrs {
        b = b.pcr(*i, v);
    }
    if args.kind == DocumentKind::NitroTpm {
        b = b.nitrotpm();
    }
    let nsm = b.build()?;
    // User PCRs given on the command line are locked so that they appear in an enclave
    // document (a NitroTPM reports every PCR and locks none).
    if args.kind == DocumentKind::Enclave {
        for (i, _) in args.pcrs.iter().filter(|(i, _)| *i >= 16) {
            nsm.lock_pcr(*i)?;
        }
    }
    let public_key = match &args.public_key {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let hex_arg = |h: &Option<Hex>| h.as_ref().map(|h| h.0.clone());
    let (user_data, nonce) = (hex_arg(&args.user_data), hex_arg(&args.nonce));
    let doc = nsm.attestation(
        user_data.as_deref(),
        nonce.as_deref(),
        public_key.as_deref(),
    )?;
    let (out, root_out) = (&args.out, &args.root_out);
    std::fs::write(out, &doc).with_context(|| format!("writing {}", out.display()))?;
    std::fs::write(root_out, nsm.root_certificate_pem())
        .with_context(|| format!("writing {}", root_out.display()))?;
    let parsed = UnverifiedDocument::parse(&doc)?;
    let root_sha256 =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, nsm.root_certificate_der());
    let mut fields = vec![
        ("out", json!(out.display().to_string())),
        ("root_out", json!(root_out.display().to_string())),
    ];
    if let Some(path) = &args.pki {
        fields.push(("pki", json!(path.display().to_string())));
    }
    fields.extend([
        ("bytes", json!(doc.len())),
        ("kind", json!(nsm.kind().as_str())),
        ("module_id", json!(nsm.module_id())),
        ("timestamp", json!(parsed.payload().timestamp.to_rfc3339())),
        ("root_sha256", json!(hex::encode(root_sha256))),
    ]);
    let fields: Vec<(&str, String)> = fields
        .into_iter()
        .map(|(k, v)| (k, render(v, false)))
        .collect();
    emit(object(&fields, false))?;
    Ok(())
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let nsm: Arc<dyn Nsm> = if args.nsm {
        Arc::new(nitro_attest::NsmDevice::open()?)
    } else {
        let mut b = SimulatedNsm::builder();
        if let Some(s) = args.seed {
            b = b.seed(s);
        }
        if let Some(path) = &args.pki {
            b = b.pki(SimulatorPki::load_or_create(path, args.seed)?);
        }
        if args.kind == DocumentKind::NitroTpm {
            b = b.nitrotpm();
        }
        Arc::new(b.build()?)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = AttestationApi::<dyn Nsm>::bind_loopback(args.listen).await?;
        let addr = listener.local_addr()?;
        emit(json!({ "listening": addr.to_string() }))?;
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        AttestationApi::new(nsm)
            .serve_until(listener, shutdown)
            .await?;
        Ok(())
    })
}

/// The uncompressed P-384 point of a certificate's SubjectPublicKeyInfo (fixed DER prefix).
fn p384_point(cert: &[u8]) -> anyhow::Result<&[u8]> {
    const PREFIX: [u8; 23] = [
        0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05,
        0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
    ];
    let pos = cert
        .windows(PREFIX.len())
        .position(|w| w == PREFIX)
        .ok_or_else(|| anyhow!("the leaf certificate has no P-384 key"))?;
    cert.get(pos + PREFIX.len()..pos + PREFIX.len() + 97)
        .ok_or_else(|| anyhow!("truncated key"))
}

/// The COSE Sig_structure `["Signature1", protected, h'', payload]`.
fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x84, 0x6a];
    out.extend_from_slice(b"Signature1");
    for b in [protected, &[], payload] {
        match b.len() {
            n @ 0..24 => out.push(0x40 | n as u8),
            n @ 24..256 => out.extend_from_slice(&[0x58, n as u8]),
            n => {
                out.push(0x59);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(b);
    }
    out
}

fn bench(opts: &VerifyOpts, cache: bool, iterations: u32, file: &Path) -> anyhow::Result<()> {
    let (bytes, doc, _) = read_document(file)?;
    let mut verifier = opts.verifier()?;
    if cache {
        verifier = verifier.with_cache(Arc::new(CertCache::default()));
    }
    let policy = opts.policy();
    let now = Timestamp::now();
    verifier
        .verify(&bytes, now, &policy)
        .context("the document does not verify with these options (try --at doc)")?;
    let iterations = iterations.max(1);

    // Baseline: raw ECDSA P-384 verifications of the document's signature, key parsed once.
    let key = ParsedPublicKey::new(
        &ECDSA_P384_SHA384_FIXED,
        p384_point(&doc.payload().certificate)?,
    )
    .map_err(|e| anyhow!("leaf key: {e}"))?;
    let msg = sig_structure(doc.protected_header(), doc.payload_bytes());
    let t0 = Instant::now();
    for _ in 0..iterations {
        key.verify_sig(std::hint::black_box(&msg), doc.signature())
            .map_err(|_| anyhow!("baseline verification failed"))?;
    }
    let floor = f64::from(iterations) / t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    for _ in 0..iterations {
        verifier.verify(std::hint::black_box(&bytes), now, &policy)?;
    }
    let rate = f64::from(iterations) / t0.elapsed().as_secs_f64();
    emit(format_args!(
        "mode {}",
        if cache { "cached" } else { "full_chain" }
    ))?;
    emit(format_args!("iterations {iterations}"))?;
    emit(format_args!("ecdsa_p384_verify_per_s {floor:.1}"))?;
    emit(format_args!("docs_per_s {rate:.1}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Verify { opts, files } => verify(opts, files),
        Command::Inspect { file } => inspect(file).map(|()| ExitCode::SUCCESS),
        Command::Sim(args) => sim(args).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => serve(args).map(|()| ExitCode::SUCCESS),
        Command::Bench {
            opts,
            cache,
            iterations,
            file,
        } => bench(opts, *cache, *iterations, file).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
