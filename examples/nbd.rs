//! `nbd`: serve files over NBD on the parent, use them from the enclave, sealed or not, and
//! benchmark both sides.
//!
//! ```sh
//! # Parent: serve two exports (created sparse with the given size if missing).
//! cargo run --release --example nbd -- serve --listen vsock:5000 \
//!     --export data=/var/lib/enclave/data.img:1G --export cfg=/var/lib/enclave/cfg.img
//!
//! # Enclave (or anywhere): inspect, read and write an export.
//! cargo run --release --example nbd -- client --connect vsock:3:5000 list
//! cargo run --release --example nbd -- client --connect vsock:3:5000 --export data info
//! cargo run --release --example nbd -- client --connect uds:/tmp/nbd.sock write 0 --data hello
//! cargo run --release --example nbd -- client --connect uds:/tmp/nbd.sock read 0 5
//!
//! # Sealed: initialise, use (same key), verify every block.
//! KEY=$(openssl rand -hex 32)
//! cargo run --release --example nbd -- client --connect uds:/tmp/nbd.sock seal-init --key $KEY
//! cargo run --release --example nbd -- client --connect uds:/tmp/nbd.sock write 0 --data hi --key $KEY
//! cargo run --release --example nbd -- client --connect uds:/tmp/nbd.sock seal-check --key $KEY
//!
//! # Expose the (sealed) export as /dev/nbd0 until Ctrl-C (needs the nbd kernel driver).
//! cargo run --release --example nbd -- client --connect vsock:3:5000 attach /dev/nbd0 --key $KEY
//!
//! # Benchmarks: this client against any server (add --sealed to compare sealed/unsealed;
//! # this overwrites the export), or the full local comparison with qemu-nbd and qemu-img.
//! cargo run --release --example nbd -- client --connect uds:/tmp/nbd.sock bench --sealed
//! cargo run --release --example nbd -- bench
//! ```
//!
//! Addresses are nitro-net's: `vsock:PORT` / `vsock:CID:PORT`, `hybrid:UDS:PORT`,
//! `uds:PATH`, `uds:DIR:PORT`, `tcp:HOST:PORT`. The sealed commands wrap the data key with the
//! caller-supplied `--key` (hex, 32 bytes); the freshness anchor is this process's memory, so
//! it protects against rollback only within one invocation (`attach`, `bench`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use nitro_fs::internal::bench::{Measurement, Pattern, Workload};
use nitro_fs::sealed::{SealedConfig, SealedDevice, StaticKeyWrap};
use nitro_fs::{BlockDevice, ClientConfig, Export, FileDevice, NbdClient, Server};
use nitro_net::Addr;

#[derive(Parser)]
#[command(
    name = "nbd",
    about = "NBD server and client for Nitro Enclaves storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve files or block devices over NBD (the parent side).
    Serve {
        /// `NAME=FILE[:SIZE]`: export FILE as NAME; with SIZE (e.g. 1G) a missing file is
        /// created sparse and a shorter one extended. Repeatable.
        #[arg(long = "export", required = true, value_parser = parse_export)]
        exports: Vec<(String, PathBuf, Option<u64>)>,
        /// Address to listen on.
        #[arg(long)]
        listen: Addr,
        /// Refuse writes, trims and write-zeroes.
        #[arg(long)]
        read_only: bool,
    },
    /// Use an export (the enclave side).
    Client {
        /// Server address.
        #[arg(long)]
        connect: Addr,
        /// Export name (empty = the server's default export).
        #[arg(long, default_value = "")]
        export: String,
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Local comparison: qemu-nbd against this server with `qemu-img bench` as the client,
    /// then this client unsealed against sealed (figures for the crate README).
    Bench {
        /// Size of the benchmark file.
        #[arg(long, default_value = "512M", value_parser = parse_size)]
        size: u64,
        /// Seconds per measurement of this client.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Directory for the file and sockets (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Print the export's size, flags and block sizes.
    Info,
    /// List the server's exports.
    List,
    /// Read LENGTH bytes at OFFSET (to stdout, or --out FILE).
    Read {
        /// Byte offset.
        #[arg(value_parser = parse_size)]
        offset: u64,
        /// Byte count.
        #[arg(value_parser = parse_size)]
        length: u64,
        /// Write the bytes to FILE instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print hex instead of raw bytes.
        #[arg(long)]
        hex: bool,
        /// Read through the sealed device with this key (hex).
        #[arg(long)]
        key: Option<String>,
    },
    /// Write bytes at OFFSET and flush.
    Write {
        /// Byte offset.
        #[arg(value_parser = parse_size)]
        offset: u64,
        /// Text to write.
        #[arg(long, group = "src")]
        data: Option<String>,
        /// Hex bytes to write.
        #[arg(long, group = "src")]
        hex: Option<String>,
        /// File whose content to write.
        #[arg(long, group = "src")]
        file: Option<PathBuf>,
        /// Write with force-unit-access instead of a separate flush.
        #[arg(long)]
        fua: bool,
        /// Write through the sealed device with this key (hex).
        #[arg(long)]
        key: Option<String>,
    },
    /// Random 4 KiB read/write IOPS and 1 MiB sequential throughput of this client.
    Bench {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Requests in flight.
        #[arg(long, default_value_t = 64)]
        depth: usize,
        /// Also measure through a sealed device (seals the export: its data is lost).
        #[arg(long)]
        sealed: bool,
    },
    /// Initialise a sealed device on the export (its previous content becomes unreadable).
    SealInit {
        /// Key-encryption key (hex, 32 bytes) that wraps the data key.
        #[arg(long)]
        key: String,
    },
    /// Authenticate every block of a sealed device; exit status 1 if anything fails.
    SealCheck {
        /// Key-encryption key (hex, 32 bytes).
        #[arg(long)]
        key: String,
    },
    /// Expose the export (sealed with --key) as a kernel block device until Ctrl-C.
    Attach {
        /// NBD device node, e.g. /dev/nbd0.
        nbd: PathBuf,
        /// Seal with this key (hex, 32 bytes); the device must have been sealed (seal-init).
        #[arg(long)]
        key: Option<String>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let m = match s[i..].to_ascii_lowercase().as_str() {
                "k" | "kib" => 1 << 10,
                "m" | "mib" => 1 << 20,
                "g" | "gib" => 1 << 30,
                "t" | "tib" => 1u64 << 40,
                other => return Err(format!("unknown size suffix {other:?}")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    let n: u64 = num.parse().map_err(|e| format!("bad size {s:?}: {e}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

fn parse_export(s: &str) -> Result<(String, PathBuf, Option<u64>), String> {
    let (name, rest) = s.split_once('=').ok_or("expected NAME=FILE[:SIZE]")?;
    // A trailing `:SIZE` only counts if it parses as a size (paths may contain colons).
    if let Some((file, size)) = rest.rsplit_once(':')
        && let Ok(size) = parse_size(size)
    {
        return Ok((name.to_owned(), PathBuf::from(file), Some(size)));
    }
    Ok((name.to_owned(), PathBuf::from(rest), None))
}

fn key_wrap(hex_key: &str) -> anyhow::Result<StaticKeyWrap> {
    let bytes = hex::decode(hex_key.trim()).context("--key must be hex")?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow!("--key must be 32 bytes (64 hex digits)"))?;
    Ok(StaticKeyWrap::new(&key)?)
}

async fn connect(addr: &Addr, export: &str) -> anyhow::Result<NbdClient> {
    let addr2 = addr.clone();
    let client = NbdClient::connect(
        move || {
            let addr = addr2.clone();
            async move { addr.connect().await.map_err(std::io::Error::other) }
        },
        ClientConfig::new(export),
    )
    .await
    .with_context(|| format!("connecting to {addr}"))?;
    Ok(client)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nbd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            exports,
            listen,
            read_only,
        } => serve(exports, listen, read_only).await,
        Command::Client {
            connect: addr,
            export,
            command,
        } => client(addr, export, command).await,
        Command::Bench { size, seconds, dir } => {
            compare(size, Duration::from_secs_f64(seconds), dir).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(
    exports: Vec<(String, PathBuf, Option<u64>)>,
    listen: Addr,
    read_only: bool,
) -> anyhow::Result<ExitCode> {
    let mut list = Vec::new();
    for (name, path, size) in exports {
        let dev = match (size, read_only) {
            (Some(size), false) => FileDevice::create(&path, size)?,
            (None, false) => FileDevice::open(&path)?,
            (_, true) => FileDevice::open_read_only(&path)?,
        };
        eprintln!(
            "export {name:?}: {} ({} bytes{})",
            path.display(),
            dev.size(),
            if read_only { ", read-only" } else { "" }
        );
        list.push(Export::new(name, dev).read_only(read_only));
    }
    let server = Server::new(list)?;
    let listener = listen.bind().await?;
    eprintln!("listening on {listen}");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let server = server.clone();
                tokio::spawn(async move {
                    if let Err(e) = server.serve(stream).await {
                        eprintln!("client {peer}: {e}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => {
                eprintln!("shutting down");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

async fn client(addr: Addr, export: String, command: ClientCommand) -> anyhow::Result<ExitCode> {
    if let ClientCommand::List = command {
        let mut stream = addr.connect().await?;
        for (name, details) in nitro_fs::list_exports(&mut stream).await? {
            if details.is_empty() {
                println!("{name}");
            } else {
                println!("{name}\t{details}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let c = connect(&addr, &export).await?;
    let code = match command {
        ClientCommand::List => ExitCode::SUCCESS,
        ClientCommand::Info => {
            let i = c.info();
            println!("export:          {export:?}");
            println!("size:            {} bytes", i.size);
            println!("read-only:       {}", i.read_only());
            println!("flags:           {:#06x}", i.flags);
            println!(
                "block sizes:     minimum {}, preferred {}, maximum {}",
                i.min_block_size, i.preferred_block_size, i.max_payload
            );
            if let Some(d) = &i.description {
                println!("description:     {d}");
            }
            ExitCode::SUCCESS
        }
        ClientCommand::Read {
            offset,
            length,
            out,
            hex,
            key,
        } => {
            let mut buf = vec![0u8; usize::try_from(length)?];
            match key {
                Some(k) => {
                    let dev =
                        SealedDevice::open(c.clone(), &key_wrap(&k)?, SealedConfig::default())
                            .await?;
                    dev.read_at(offset, &mut buf).await?;
                }
                None => c.read_at(offset, &mut buf).await?,
            }
            match out {
                Some(path) => std::fs::write(&path, &buf)?,
                None if hex => println!("{}", hex::encode(&buf)),
                None => std::io::stdout().write_all(&buf)?,
            }
            ExitCode::SUCCESS
        }
        ClientCommand::Write {
            offset,
            data,
            hex,
            file,
            fua,
            key,
        } => {
            let bytes = match (data, hex, file) {
                (Some(d), _, _) => d.into_bytes(),
                (_, Some(h), _) => hex::decode(h.trim()).context("--hex")?,
                (_, _, Some(f)) => std::fs::read(&f).with_context(|| f.display().to_string())?,
                _ => bail!("give --data, --hex or --file"),
            };
            match key {
                Some(k) => {
                    let dev =
                        SealedDevice::open(c.clone(), &key_wrap(&k)?, SealedConfig::default())
                            .await?;
                    write(&dev, offset, &bytes, fua).await?;
                }
                None => write(&c, offset, &bytes, fua).await?,
            }
            eprintln!("wrote {} bytes at offset {offset}", bytes.len());
            ExitCode::SUCCESS
        }
        ClientCommand::Bench {
            seconds,
            depth,
            sealed,
        } => {
            let d = Duration::from_secs_f64(seconds);
            println!("client benchmark against {addr} (depth {depth}, {seconds} s each)");
            let plain = measure_all(&c, d, depth).await?;
            print_client_table("unsealed", &plain, None);
            if sealed {
                let key = StaticKeyWrap::new(&[0x5e; 32])?;
                let dev = SealedDevice::create(c.clone(), &key, SealedConfig::default()).await?;
                let s = measure_all(&dev, d, depth).await?;
                print_client_table("sealed", &s, Some(&plain));
            }
            ExitCode::SUCCESS
        }
        ClientCommand::SealInit { key } => {
            let dev =
                SealedDevice::create(c.clone(), &key_wrap(&key)?, SealedConfig::default()).await?;
            println!("sealed device {} created", dev.device_id());
            println!(
                "capacity {} bytes on an export of {} bytes (key wrapped with the caller-supplied key)",
                dev.size(),
                c.size()
            );
            ExitCode::SUCCESS
        }
        ClientCommand::SealCheck { key } => {
            let dev =
                SealedDevice::open(c.clone(), &key_wrap(&key)?, SealedConfig::default()).await?;
            let r = dev.check().await?;
            println!(
                "sealed device {}: generation {}, {} of {} blocks in use",
                dev.device_id(),
                dev.generation(),
                r.blocks_in_use,
                r.blocks
            );
            for f in &r.failures {
                println!("INTEGRITY FAILURE: {f}");
            }
            if r.failures.is_empty() {
                println!("all blocks authenticate");
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        ClientCommand::Attach { nbd, key } => {
            attach(c.clone(), &nbd, key).await?;
            ExitCode::SUCCESS
        }
    };
    c.close().await?;
    Ok(code)
}

async fn write<D: BlockDevice>(
    dev: &D,
    offset: u64,
    bytes: &[u8],
    fua: bool,
) -> anyhow::Result<()> {
    if fua {
        dev.write_at_fua(offset, bytes).await?;
    } else {
        dev.write_at(offset, bytes).await?;
        dev.flush().await?;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
async fn attach(c: NbdClient, nbd: &Path, key: Option<String>) -> anyhow::Result<()> {
    use nitro_fs::kernel::{AttachOptions, attach};
    let attached = match key {
        Some(k) => {
            let dev = SealedDevice::open(c, &key_wrap(&k)?, SealedConfig::default()).await?;
            eprintln!("sealed device {} ({} bytes)", dev.device_id(), dev.size());
            attach(nbd, dev, AttachOptions::default()).await?
        }
        None => attach(nbd, c, AttachOptions::default()).await?,
    };
    eprintln!(
        "attached to {}; Ctrl-C to detach",
        attached.path().display()
    );
    tokio::signal::ctrl_c().await?;
    attached.detach().await?;
    eprintln!("detached");
    Ok(())
}

#[cfg(not(target_os = "linux"))]
async fn attach(_: NbdClient, _: &Path, _: Option<String>) -> anyhow::Result<()> {
    bail!("kernel attach needs Linux")
}

/// The four client measurements: 4 KiB random write and read, 1 MiB sequential write and read.
async fn measure_all<D: BlockDevice + Clone + 'static>(
    dev: &D,
    d: Duration,
    depth: usize,
) -> anyhow::Result<[Measurement; 4]> {
    let w = |p, write, size, depth| Workload::new(p, write, size).duration(d).depth(depth);
    Ok([
        nitro_fs::internal::bench::run(dev, &w(Pattern::Random, true, 4096, depth)).await?,
        nitro_fs::internal::bench::run(dev, &w(Pattern::Random, false, 4096, depth)).await?,
        nitro_fs::internal::bench::run(dev, &w(Pattern::Sequential, true, 1 << 20, depth.min(8)))
            .await?,
        nitro_fs::internal::bench::run(dev, &w(Pattern::Sequential, false, 1 << 20, depth.min(8)))
            .await?,
    ])
}

fn print_client_table(label: &str, m: &[Measurement; 4], base: Option<&[Measurement; 4]>) {
    let ratio = |i: usize, v: f64, f: fn(&Measurement) -> f64| match base {
        Some(b) => format!("  ({:.2}x unsealed)", v / f(&b[i])),
        None => String::new(),
    };
    println!("  {label}:");
    println!(
        "    4 KiB random write  {:>9.0} IOPS{}",
        m[0].iops(),
        ratio(0, m[0].iops(), Measurement::iops)
    );
    println!(
        "    4 KiB random read   {:>9.0} IOPS{}",
        m[1].iops(),
        ratio(1, m[1].iops(), Measurement::iops)
    );
    println!(
        "    1 MiB seq. write    {:>9.0} MB/s{}",
        m[2].mb_per_sec(),
        ratio(2, m[2].mb_per_sec(), Measurement::mb_per_sec)
    );
    println!(
        "    1 MiB seq. read     {:>9.0} MB/s{}",
        m[3].mb_per_sec(),
        ratio(3, m[3].mb_per_sec(), Measurement::mb_per_sec)
    );
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// One `qemu-img bench` run (depth 64, sequential); returns IOPS and MB/s.
fn qemu_img_bench(
    qemu_img: &Path,
    uri: &str,
    write: bool,
    size: usize,
    count: u64,
) -> anyhow::Result<(f64, f64)> {
    let mut cmd = std::process::Command::new(qemu_img);
    cmd.args([
        "bench",
        "-f",
        "raw",
        "-c",
        &count.to_string(),
        "-d",
        "64",
        "-s",
    ]);
    cmd.arg(size.to_string());
    if write {
        cmd.arg("-w");
    }
    let out = cmd.arg(uri).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "qemu-img bench failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // "Run completed in 2.345 seconds."
    let secs = text
        .split("Run completed in ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .ok_or_else(|| anyhow!("unexpected qemu-img bench output: {text}"))?;
    let iops = count as f64 / secs;
    Ok((iops, iops * size as f64 / 1e6))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Serves `exports` on a Unix socket in this process; returns the accept task.
async fn serve_local(
    sock: &Path,
    exports: Vec<Export>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(sock);
    let server = Server::new(exports)?;
    let listener = tokio::net::UnixListener::bind(sock)?;
    Ok(tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                let _ = server.serve(s).await;
            });
        }
    }))
}

async fn fill<D: BlockDevice>(dev: &D, len: u64) -> anyhow::Result<()> {
    let chunk = vec![0x6bu8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(chunk.len() as u64) as usize;
        dev.write_at(off, &chunk[..n]).await?;
        off += n as u64;
    }
    dev.flush().await?;
    Ok(())
}

const WORKLOADS: [(&str, bool, usize); 4] = [
    ("4 KiB write", true, 4096),
    ("4 KiB read", false, 4096),
    ("1 MiB write", true, 1 << 20),
    ("1 MiB read", false, 1 << 20),
];

async fn compare(size: u64, d: Duration, dir: Option<PathBuf>) -> anyhow::Result<()> {
    const ROUNDS: usize = 5;
    let tmp = tempfile::Builder::new().prefix("nbd-bench-").tempdir()?;
    let dir = dir.unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let plain_img = dir.join("plain.img");
    let sealed_img = dir.join("sealed.img");
    let _ = std::fs::remove_file(&plain_img);
    let _ = std::fs::remove_file(&sealed_img);
    println!("preparing {} MiB images in {}", size >> 20, dir.display());
    fill(&FileDevice::create(&plain_img, size)?, size).await?;
    let raw = SealedDevice::<NbdClient>::raw_size_for(size);
    FileDevice::create(&sealed_img, raw)?;
    let t0 = Instant::now();

    // This server, exporting both files.
    let sock = dir.join("nitro-nbd.sock");
    let accept = serve_local(
        &sock,
        vec![
            Export::new("plain", FileDevice::open(&plain_img)?),
            Export::new("sealed", FileDevice::open(&sealed_img)?),
        ],
    )
    .await?;

    // Part 1: qemu-nbd and this server, same file, qemu-img bench as the client, rounds
    // interleaved so that background noise hits both alike; medians reported.
    let mut server_rows = Vec::new();
    match (which("qemu-img"), which("qemu-nbd")) {
        (Some(qemu_img), Some(qemu_nbd)) => {
            let qsock = dir.join("qemu-nbd.sock");
            let _ = std::fs::remove_file(&qsock);
            let mut child = std::process::Command::new(qemu_nbd)
                .args(["-f", "raw", "-t", "-x", "plain", "-k"])
                .arg(&qsock)
                .arg(&plain_img)
                .stdin(std::process::Stdio::null())
                .spawn()?;
            for _ in 0..500 {
                if qsock.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let quri = format!("nbd+unix:///plain?socket={}", qsock.display());
            let ouri = format!("nbd+unix:///plain?socket={}", sock.display());
            for (name, write, io) in WORKLOADS {
                let count = if io == 4096 {
                    60_000
                } else {
                    (size >> 20).clamp(256, 1024)
                };
                let (mut q, mut o) = (Vec::new(), Vec::new());
                for _ in 0..ROUNDS {
                    for (uri, out) in [(&quri, &mut q), (&ouri, &mut o)] {
                        let (qi, uri) = (qemu_img.clone(), uri.clone());
                        let (iops, mbs) = tokio::task::spawn_blocking(move || {
                            qemu_img_bench(&qi, &uri, write, io, count)
                        })
                        .await??;
                        out.push(if io == 4096 { iops } else { mbs });
                    }
                }
                server_rows.push((name, median(q), median(o)));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        _ => println!("qemu-img or qemu-nbd not found: skipping the qemu-nbd comparison"),
    }

    // Part 2: this client against this server, plain export vs sealed device, interleaved.
    let addr = Addr::Unix { path: sock.clone() };
    let plain = connect(&addr, "plain").await?;
    let key = StaticKeyWrap::new(&[0x5e; 32])?;
    let sealed = SealedDevice::create(
        connect(&addr, "sealed").await?,
        &key,
        SealedConfig::default(),
    )
    .await?;
    // Fill twice so that both slots of every block hold flushed data: random writes then
    // overwrite flushed pages, like the plain export's (overwriting a flushed page of a file is
    // several times slower than writing a hole on ext4).
    fill(&sealed, sealed.size()).await?;
    fill(&sealed, sealed.size()).await?;
    let mut client_rows = Vec::new();
    for (name, write, io) in WORKLOADS {
        let (pattern, depth) = if io == 4096 {
            (Pattern::Random, 64)
        } else {
            (Pattern::Sequential, 8)
        };
        let w = Workload::new(pattern, write, io).duration(d).depth(depth);
        let (mut p, mut s) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let m = nitro_fs::internal::bench::run(&plain, &w).await?;
            p.push(if io == 4096 { m.iops() } else { m.mb_per_sec() });
            let m = nitro_fs::internal::bench::run(&sealed, &w).await?;
            s.push(if io == 4096 { m.iops() } else { m.mb_per_sec() });
        }
        client_rows.push((name, median(p), median(s)));
    }
    sealed.flush().await?;
    plain.close().await?;
    accept.abort();

    let unit = |name: &str| {
        if name.starts_with("4 KiB") {
            "IOPS"
        } else {
            "MB/s"
        }
    };
    println!();
    println!(
        "## qemu-img bench (sequential, depth 64) over a Unix socket, {} MiB raw image, median of {ROUNDS}",
        size >> 20
    );
    println!();
    println!("| workload | qemu-nbd | nitro-fs server | ratio |");
    println!("|---|---|---|---|");
    for (name, q, o) in &server_rows {
        println!(
            "| {name} ({}) | {q:.0} | {o:.0} | {:.2}x |",
            unit(name),
            o / q
        );
    }
    println!();
    println!(
        "## nitro-fs client and server, unsealed vs sealed (4 KiB random at depth 64, 1 MiB sequential at depth 8), median of {ROUNDS}"
    );
    println!();
    println!("| workload | unsealed | sealed | ratio |");
    println!("|---|---|---|---|");
    for (name, p, s) in &client_rows {
        println!(
            "| {name} ({}) | {p:.0} | {s:.0} | {:.2}x |",
            unit(name),
            s / p
        );
    }
    println!();
    println!("(measured in {:.1} s)", t0.elapsed().as_secs_f64());
    Ok(())
}
