//! Memory of the daemon with 4 idle enclaves configured, beside an idle nitro-net egress
//! server alone (the baseline), each measured in its own process:
//! `cargo run --release -p nitro-parentd --example rss`.

#![allow(clippy::expect_used)] // An example measuring memory: it stops on any failure.

use std::time::Duration;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

const MANIFEST: &str = r#"
version = 1
name = "NAME"
[image]
oci = "img:latest"
[egress]
mode = "transparent"
[[egress.allow]]
host = "example.com"
[[ingress]]
port = 8080
[kms]
proxy_port = 4000
region = "eu-west-1"
[[volume]]
name = "data"
size = "1GiB"
mount = "/data"
key = "alias/k"
[[secret]]
name = "token"
env = "TOKEN"
"#;

async fn daemon() -> u64 {
    let d = tempfile::tempdir().expect("tempdir");
    let mut config = String::from("version = 1\n");
    for i in 0..4 {
        let name = format!("enclave{i}");
        std::fs::write(
            d.path().join(format!("{name}.toml")),
            MANIFEST.replace("NAME", &name),
        )
        .expect("manifest");
        config += &format!(
            "[[enclave]]\nname = \"{name}\"\nmanifest = \"{name}.toml\"\neif = \"{name}.eif\"\ncid = {}\ntransport = \"uds:sock/{name}\"\ningress = {{ \"8080\" = \"127.0.0.1:0\" }}\ncredentials = {{ source = \"static\", access_key_id = \"AKID\", secret_access_key = \"s\" }}\nsecrets = {{ token = {{ dir = \"secrets\" }} }}\nvolumes = {{ data = {{ file = \"{name}.img\" }} }}\nlog = \"stderr\"\n",
            16 + i
        );
    }
    let path = d.path().join("parentd.toml");
    std::fs::write(&path, config).expect("config");
    let plan = nitro_parentd::check(&path).expect("valid");
    let mut daemon = nitro_parentd::daemon::Daemon::start(&plan, Default::default())
        .await
        .expect("start");
    for e in &plan.enclaves {
        daemon.attach(&e.name, None).await.expect("attach");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss = rss_kib();
    daemon.shutdown().await;
    rss
}

async fn baseline() -> u64 {
    let d = tempfile::tempdir().expect("tempdir");
    let listener = nitro_net::Addr::UnixDir {
        dir: d.path().to_owned(),
        port: 8000,
    }
    .bind()
    .await
    .expect("bind");
    let h = nitro_net::EgressServer::new(nitro_net::Policy::deny_all()).spawn(listener);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss = rss_kib();
    h.shutdown().await.expect("shutdown");
    rss
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match std::env::args().nth(1).as_deref() {
        Some("daemon") => println!("{}", rt.block_on(daemon())),
        Some("baseline") => println!("{}", rt.block_on(baseline())),
        _ => {
            let exe = std::env::current_exe().expect("current exe");
            let run = |what: &str| -> u64 {
                let out = std::process::Command::new(&exe)
                    .arg(what)
                    .output()
                    .expect("run");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0)
            };
            let base = run("baseline");
            let daemon = run("daemon");
            println!(
                "idle egress server alone (baseline): {:.1} MiB RSS",
                base as f64 / 1024.0
            );
            println!(
                "nitro-parentd, 4 idle enclaves:       {:.1} MiB RSS",
                daemon as f64 / 1024.0
            );
        }
    }
}
