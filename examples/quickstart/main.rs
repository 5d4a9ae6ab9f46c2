//! The quickstart: the nitro crates working together, locally, with no AWS account, no root and
//! no Nitro hardware. Everything runs in this process: a simulated NSM, the parent's services on
//! temporary Unix sockets, a local KMS. Step 6 (transparent egress for an unmodified `curl`)
//! needs root: it runs in a copy of this program inside a network namespace, and otherwise
//! says it is skipped and why.
//!
//! ```sh
//! cargo run --release --example quickstart
//! ```
//!
//! Each step lives in its own module and prints what it did.

mod attest;
mod eif;
mod fs;
mod kms;
mod net;
mod transparent;

use std::time::Instant;

/// State shared by the steps: the temporary directory, and what earlier steps set up that later
/// steps use.
pub(crate) struct Context {
    /// Scratch directory for sockets and files; removed at exit.
    pub(crate) dir: tempfile::TempDir,
    /// PCR0 of the image built by the EIF step: the simulated NSMs of the later steps report
    /// it, and the KMS key policies admit exactly it.
    pub(crate) image_pcr0: [u8; 48],
}

/// A throwaway CA named `ca_name` and a certificate for 127.0.0.1 issued by it, for a local
/// KMS (what AWS's public certificate is to KMS): `(ca_pem, cert_pem, key_pem)`.
pub(crate) fn tls_material(ca_name: &str) -> anyhow::Result<(String, String, String)> {
    Ok(nitro_test_support::try_tls_material(ca_name)?.into_parts())
}

/// Prints a step heading, runs it, and prints how long it took.
async fn step<F>(n: usize, title: &str, ctx: &mut Context, f: F) -> anyhow::Result<()>
where
    F: AsyncFnOnce(&mut Context) -> anyhow::Result<()>,
{
    println!("\n[{n}] {title}");
    let t0 = Instant::now();
    f(ctx).await?;
    println!("    ({} ms)", t0.elapsed().as_millis());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os(transparent::CHILD_VAR).is_some() {
        // The copy of the quickstart that step 6 starts inside a network namespace.
        return transparent::child().await;
    }
    let mut ctx = Context {
        dir: tempfile::Builder::new()
            .prefix("nitro-quickstart-")
            .tempdir()?,
        image_pcr0: [0; 48],
    };
    println!(
        "nitro quickstart (scratch directory {})",
        ctx.dir.path().display()
    );
    let t0 = Instant::now();

    step(
        1,
        "attestation: simulated NSM document, verified against the simulator's root",
        &mut ctx,
        attest::run,
    )
    .await?;
    step(
        2,
        "EIF: build a small image, print its PCRs, rebuild it reproducibly",
        &mut ctx,
        eif::run,
    )
    .await?;
    step(
        3,
        "networking: an enclave task reaches a parent-side HTTP server only through the tunnel",
        &mut ctx,
        net::run,
    )
    .await?;
    step(
        4,
        "KMS: a data key released to the attested enclave through the local KMS",
        &mut ctx,
        kms::run,
    )
    .await?;
    step(
        5,
        "storage: a sealed block device served by the parent over NBD",
        &mut ctx,
        fs::run,
    )
    .await?;

    step(
        6,
        "transparent egress: an unmodified curl reaches a name through the tunnel (root only)",
        &mut ctx,
        transparent::run,
    )
    .await?;

    println!("\nall steps done in {} ms", t0.elapsed().as_millis());
    Ok(())
}
