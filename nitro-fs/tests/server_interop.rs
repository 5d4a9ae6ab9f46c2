//! The NBD server against the real tools: nbdinfo (libnbd), qemu-io and qemu-img (qemu's
//! NBD client), over Unix sockets and TCP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

mod common;

use common::*;
use nitro_fs::{Export, FileDevice, MemDevice, Server};

const MIB: u64 = 1 << 20;

fn file_export(dir: &std::path::Path, name: &str, size: u64) -> (std::path::PathBuf, Export) {
    let path = dir.join(format!("{name}.img"));
    let dev = FileDevice::create(&path, size).unwrap();
    (path, Export::new(name, dev))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_lists_and_describes_exports() {
    let Some(nbdinfo) = tool("nbdinfo") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, a) = file_export(dir.path(), "alpha", 8 * MIB);
    let b = Export::new("beta", MemDevice::new(MIB as usize))
        .with_description("scratch space")
        .read_only(true);
    let (sock, _task) = serve_unix(Server::new(vec![a, b]).unwrap(), dir.path()).await;

    let list = run_ok(
        &nbdinfo,
        &[
            "--list",
            "--json",
            &format!("nbd+unix://?socket={}", sock.display()),
        ],
    )
    .await;
    assert!(list.contains("\"alpha\""), "{list}");
    assert!(list.contains("\"beta\""), "{list}");

    let info = run_ok(&nbdinfo, &["--json", &unix_uri("alpha", &sock)]).await;
    assert!(info.contains("\"export-size\": 8388608"), "{info}");
    assert!(info.contains("\"is_read_only\": false"), "{info}");
    assert!(info.contains("\"can_flush\": true"), "{info}");
    assert!(info.contains("\"can_trim\": true"), "{info}");
    assert!(info.contains("\"can_zero\": true"), "{info}");
    assert!(info.contains("\"can_fua\": true"), "{info}");
    assert!(info.contains("\"block_size_maximum\": 33554432"), "{info}");

    let info = run_ok(&nbdinfo, &["--json", &unix_uri("beta", &sock)]).await;
    assert!(info.contains("\"is_read_only\": true"), "{info}");
    assert!(info.contains("scratch space"), "{info}");

    // Unknown export: a clean error, not a hang or crash.
    let out = run(&nbdinfo, &[&unix_uri("gamma", &sock)]).await;
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_reads_back_what_it_wrote() {
    let Some(qemu_io) = tool("qemu-io") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (path, a) = file_export(dir.path(), "disk", 16 * MIB);
    let (sock, _task) = serve_unix(Server::new(vec![a]).unwrap(), dir.path()).await;
    let uri = unix_uri("disk", &sock);

    let out = run_ok(
        &qemu_io,
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "write -P 0xcd 3M 64k",
            "-c",
            "write -f -P 0x11 5M 4k", // FUA
            "-c",
            "flush",
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "read -P 0xcd 3M 64k",
            "-c",
            "read -P 0x11 5M 4k",
            "-c",
            "write -z 0 64k",
            "-c",
            "read -P 0 0 64k",
            "-c",
            "discard 64k 64k",
            "-c",
            "read -P 0 1M 1M",
            &uri,
        ],
    )
    .await;
    assert!(!out.contains("verification failed"), "{out}");
    assert!(!out.contains("failed"), "{out}");

    // The bytes are really in the file.
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes[..64 * 1024].iter().all(|&b| b == 0));
    assert!(bytes[128 * 1024..MIB as usize].iter().all(|&b| b == 0xab));
    assert!(
        bytes[3 * MIB as usize..3 * MIB as usize + 65536]
            .iter()
            .all(|&b| b == 0xcd)
    );
    assert!(
        bytes[5 * MIB as usize..5 * MIB as usize + 4096]
            .iter()
            .all(|&b| b == 0x11)
    );

    // Out of range: qemu-io reports an error, the server keeps serving.
    let out = run(&qemu_io, &["-f", "raw", "-c", "read 16M 4k", &uri]).await;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("error") || text.contains("Invalid") || !out.status.success(),
        "{text}"
    );
    run_ok(&qemu_io, &["-f", "raw", "-c", "read -P 0xab 1M 0", &uri]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_cannot_write_a_read_only_export() {
    let Some(qemu_io) = tool("qemu-io") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, a) = file_export(dir.path(), "ro", 4 * MIB);
    let (sock, _task) = serve_unix(Server::new(vec![a.read_only(true)]).unwrap(), dir.path()).await;
    let out = run(
        &qemu_io,
        &["-f", "raw", "-c", "write -P 1 0 4k", &unix_uri("ro", &sock)],
    )
    .await;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            || text.contains("denied")
            || text.contains("read-only")
            || text.contains("ermission"),
        "{text}"
    );
    run_ok(
        &qemu_io,
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0 0 4k",
            &unix_uri("ro", &sock),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_converts_to_and_from_the_server_over_tcp() {
    let Some(qemu_img) = tool("qemu-img") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (path, a) = file_export(dir.path(), "disk", 8 * MIB);
    let (addr, _task) = serve_tcp(Server::new(vec![a]).unwrap()).await;
    let uri = format!("nbd://{addr}/disk");

    // A source image with a recognisable pattern, copied into the export.
    let src = dir.path().join("src.img");
    let pattern: Vec<u8> = (0..8 * MIB).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &pattern).unwrap();
    run_ok(
        &qemu_img,
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &uri,
        ],
    )
    .await;
    assert_eq!(std::fs::read(&path).unwrap(), pattern);

    // And back out again.
    let dst = dir.path().join("dst.img");
    run_ok(
        &qemu_img,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            dst.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(std::fs::read(&dst).unwrap(), pattern);

    let info = run_ok(&qemu_img, &["info", "--output=json", &uri]).await;
    assert!(info.contains("\"virtual-size\": 8388608"), "{info}");
}
