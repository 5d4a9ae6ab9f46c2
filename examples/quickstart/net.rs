//! Quickstart step 3: networking. The "parent" runs an HTTP server and the egress server with a
//! policy; the "enclave" task reaches the HTTP server only through the tunnel (here over the
//! plain Unix-socket transport; over vsock in a real enclave), is refused a denied destination
//! with the policy's reason, and measures the parent's clock through the time service.

use std::time::Duration;

use anyhow::Context as _;
use nitro_net::time::{TimeClient, TimeConfig};
use nitro_net::{Addr, EgressClient, EgressServer, LocalProxy, Policy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Context;

/// A minimal HTTP server on the parent side (loopback, ephemeral port).
async fn http_server() -> anyhow::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut have = 0;
                while !buf[..have].windows(4).any(|w| w == b"\r\n\r\n") && have < buf.len() {
                    match s.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                }
                let body = "hello from the parent's network\n";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(port)
}

async fn get(stream: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin)) -> anyhow::Result<String> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: parent\r\nConnection: close\r\n\r\n")
        .await?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp).await?;
    Ok(resp)
}

pub(crate) async fn run(ctx: &mut Context) -> anyhow::Result<()> {
    // --- parent side ---
    let web_port = http_server().await?;
    let policy = Policy::from_toml(&format!(
        r#"
        [[allow]]
        cidr = "127.0.0.1/32"
        ports = [{web_port}]

        [[deny]]
        cidr = "169.254.0.0/16"   # the instance metadata service
        "#
    ))?;
    let tunnel: Addr = format!("uds:{}:8000", ctx.dir.path().join("net").display()).parse()?;
    let parent = EgressServer::new(policy).spawn(tunnel.bind().await?);
    println!("    parent: HTTP server on 127.0.0.1:{web_port}, egress server on {tunnel}");

    // --- enclave side: only the tunnel address is known here ---
    let enclave = tokio::spawn({
        let tunnel = tunnel.clone();
        async move {
            let egress = EgressClient::new(tunnel.clone());
            // 1. The in-process API (what nitro-kms uses for its TLS connections).
            let mut s = egress.connect("127.0.0.1", web_port).await?;
            let resp = get(&mut s).await?;
            let status = resp.lines().next().unwrap_or_default().to_owned();
            let body = resp
                .rsplit("\r\n\r\n")
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            println!(
                "    enclave: GET through the tunnel -> {status:?}, body {body:?} (parent connected to {})",
                s.peer_addr()
            );
            // 2. A fixed local forward, for programs that cannot use a proxy.
            let fwd = LocalProxy::forward(egress.clone(), "127.0.0.1", web_port)
                .spawn("tcp:127.0.0.1:0".parse::<Addr>()?.bind().await?);
            let local = fwd.local_addr().to_string();
            let mut c = tokio::net::TcpStream::connect(local.trim_start_matches("tcp:")).await?;
            let resp = get(&mut c).await?;
            println!(
                "    enclave: GET via the local forward {local} -> {:?}",
                resp.lines().next().unwrap_or_default()
            );
            drop(c);
            drop(s);
            fwd.shutdown().await?;
            // 3. A denied destination: refused at once, with the policy's reason.
            match egress.connect("169.254.169.254", 80).await {
                Ok(_) => anyhow::bail!("the metadata service should have been denied"),
                Err(e) => {
                    let r = e.refusal().context("expected a refusal by the parent")?;
                    println!(
                        "    enclave: 169.254.169.254:80 refused ({}): {}",
                        r.code, r.message
                    );
                }
            }
            // 4. The time service: round trip measured, answers beyond 1 minute of the local
            //    clock refused.
            let mut cfg = TimeConfig::default();
            cfg.max_offset = Some(Duration::from_secs(60));
            let report = TimeClient::new(tunnel).config(cfg).sync().await?;
            println!(
                "    enclave: parent clock offset {} (round trip {:?}, so within ±{:?})",
                report.sample.offset,
                report.sample.rtt,
                report.sample.rtt / 2
            );
            anyhow::Ok(())
        }
    });
    enclave.await??;
    let st = parent.stats();
    println!(
        "    parent: {} tunnels, {} refused, {} bytes up / {} bytes down",
        st.connections_total, st.refused, st.bytes_up, st.bytes_down
    );
    parent.shutdown().await?;
    Ok(())
}
