//! End to end: a sealed device in the "enclave", stored through the NBD client and server
//! in a file on the "parent", with the parent server killed and the enclave task aborted at
//! arbitrary points. Flushed writes must read back intact, writes in flight as old or new.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nitro_fs::sealed::{MemoryAnchor, SealedConfig, SealedDevice, StaticKeyWrap};
use nitro_fs::{BlockDevice, ClientConfig, Error, Export, FileDevice, NbdClient, Server};
use tokio::task::JoinSet;

const B: u64 = 4096;
const BLOCKS: u64 = 512;

/// A parent-side server that can be killed (listener and every connection) and restarted.
struct Parent {
    file: PathBuf,
    sock: PathBuf,
    tasks: JoinSet<()>,
}

impl Parent {
    async fn start(file: &Path, sock: &Path) -> Self {
        let mut p = Self {
            file: file.to_owned(),
            sock: sock.to_owned(),
            tasks: JoinSet::new(),
        };
        p.restart();
        p
    }

    fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
        let listener = tokio::net::UnixListener::bind(&self.sock).unwrap();
        let server = Server::new(vec![Export::new(
            "disk",
            FileDevice::open(&self.file).unwrap(),
        )])
        .unwrap();
        self.tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((s, _)) = listener.accept().await {
                let server = server.clone();
                conns.spawn(async move {
                    let _ = server.serve(s).await;
                });
            }
        });
    }

    /// Kills the server: every connection is dropped mid-request.
    fn kill(&mut self) {
        self.tasks.abort_all();
    }
}

async fn client(sock: &Path) -> NbdClient {
    let sock = sock.to_owned();
    let mut cfg = ClientConfig::new("disk");
    cfg.reconnect.initial_delay = Duration::from_millis(5);
    NbdClient::connect(move || tokio::net::UnixStream::connect(sock.clone()), cfg)
        .await
        .unwrap()
}

fn record(block: u64, round: u32) -> Vec<u8> {
    let mut v = vec![(block as u8) ^ (round as u8); B as usize];
    v[..12].copy_from_slice(&[&block.to_be_bytes()[..], &round.to_be_bytes()[..]].concat());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_writes_survive_killed_servers_and_aborted_enclaves() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    let raw = SealedDevice::<NbdClient>::raw_size_for(BLOCKS * B);
    FileDevice::create(&file, raw).unwrap();
    let sock = dir.path().join("nbd.sock");
    let mut parent = Parent::start(&file, &sock).await;
    let key = StaticKeyWrap::new(&[1; 32]).unwrap();
    // The anchor stands for one outside the parent's reach: it survives enclave restarts.
    let cfg = SealedConfig::default().with_anchor(MemoryAnchor::new());
    let dev = SealedDevice::create(client(&sock).await, &key, cfg.clone())
        .await
        .unwrap();
    drop(dev);

    // Per block: the value at the last completed flush and the values written since.
    let mut flushed: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut maybe: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };

    for round in 0..12u32 {
        let dev = SealedDevice::open(client(&sock).await, &key, cfg.clone())
            .await
            .expect("reopen");
        // Everything flushed so far is intact; in-flight writes are old or new.
        for b in 0..BLOCKS {
            let mut got = vec![0u8; B as usize];
            dev.read_at(b * B, &mut got)
                .await
                .expect("read after restart");
            let base = flushed.get(&b).cloned().unwrap_or(vec![0; B as usize]);
            let ok = got == base || maybe.get(&b).is_some_and(|v| v.contains(&got));
            assert!(
                ok,
                "round {round}: block {b} lost a flushed write or holds garbage"
            );
            flushed.insert(b, got);
        }
        maybe.clear();

        // A batch of writes that is flushed...
        let blocks: Vec<u64> = (0..24).map(|_| rand() % BLOCKS).collect();
        for &b in &blocks {
            let r = record(b, round);
            dev.write_at(b * B, &r).await.unwrap();
            flushed.insert(b, r);
        }
        dev.flush().await.unwrap();

        // ...then writes and flushes racing a crash of the parent or of the enclave.
        let kill_parent = round % 2 == 0;
        let delay = Duration::from_micros(rand() % 3000);
        let racing: Vec<u64> = (0..64).map(|_| rand() % BLOCKS).collect();
        for &b in &racing {
            maybe.entry(b).or_default().push(record(b, round + 1000));
        }
        let work = {
            let dev = dev.clone();
            let racing = racing.clone();
            tokio::spawn(async move {
                for (i, b) in racing.into_iter().enumerate() {
                    dev.write_at(b * B, &record(b, round + 1000)).await?;
                    if i % 16 == 15 {
                        dev.flush().await?;
                    }
                }
                dev.flush().await
            })
        };
        tokio::time::sleep(delay).await;
        if kill_parent {
            parent.kill();
            tokio::time::sleep(Duration::from_millis(2)).await;
            parent.restart();
            // The enclave notices: an error (lost connection, unflushed writes lost, or a
            // poisoned device), or success if the kill came after everything.
            match work.await.unwrap() {
                Ok(()) => {}
                Err(
                    Error::UnflushedWritesLost
                    | Error::Poisoned(_)
                    | Error::Disconnected(_)
                    | Error::Server { .. },
                ) => {}
                Err(e) => panic!("unexpected error after a parent crash: {e}"),
            }
        } else {
            // The enclave dies mid-way: its task is dropped wherever it was.
            work.abort();
            let _ = work.await;
        }
        drop(dev);
    }
}
