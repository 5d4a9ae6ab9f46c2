//! Pulling an image from an OCI distribution registry (`host[:port]/repo:tag`,
//! `repo@sha256:…`) with `oci-client`, into a temporary OCI image layout that the importer then
//! flattens like any other layout.
//!
//! What the registry sends is treated as hostile: manifests are capped at
//! [`MAX_MANIFEST`] bytes and [`MAX_LAYERS`] layers, an index holds at most
//! [`MAX_INDEX_ENTRIES`] entries and may not nest, layer descriptors' foreign `urls` are never
//! followed, every blob is hashed while it is written and checked against its descriptor, and the
//! bytes of all blobs together are capped by [`ImageOptions::max_unpacked`]. The importer then
//! checks the digests and `diff_ids` again while it unpacks.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use futures_util::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use super::ImageOptions;
use super::digest::{Hashing, Verifier};
use crate::BoxError;
use crate::error::{Error, RegistryFailure, Result};
use crate::format::Arch;

/// Largest manifest or image index accepted from a registry: 4 MiB (the size the OCI
/// distribution specification asks registries to accept at least).
pub const MAX_MANIFEST: u64 = 4 << 20;

/// Most layers accepted in one image manifest.
pub const MAX_LAYERS: usize = 256;

/// Most entries accepted in one image index (manifest list).
pub const MAX_INDEX_ENTRIES: usize = 1024;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Layer media types the importer can unpack (it detects the compression from the bytes).
const LAYER_TYPES: [&str; 6] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
];

/// How to reach a registry: transport and credentials.
///
/// By default HTTPS (rustls, the Mozilla roots through `reqwest`), with credentials from the
/// Docker config file (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: the
/// `auths.<registry>.auth` entry, base64 `user:password`, or its `username`/`password`) and an
/// anonymous pull when it has no entry for the registry. Credential helpers (`credsStore`,
/// `credHelpers`) are not run.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RegistryOptions {
    /// Speak plain HTTP instead of HTTPS (a local test registry). Never the default.
    pub insecure: bool,
    /// The Docker config file to read credentials from (default: see above).
    pub docker_config: Option<PathBuf>,
    /// Credentials to use instead of the Docker config file's.
    pub basic_auth: Option<(String, String)>,
}

impl RegistryOptions {
    /// Options speaking plain HTTP (`true`) instead of HTTPS.
    pub fn insecure(mut self, insecure: bool) -> Self {
        self.insecure = insecure;
        self
    }

    /// Options reading credentials from the Docker config file at `path`.
    pub fn docker_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.docker_config = Some(path.into());
        self
    }

    /// Options authenticating with `user` and `password` (HTTP Basic, or exchanged for a
    /// bearer token when the registry asks for one).
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.basic_auth = Some((user.into(), password.into()));
        self
    }
}

/// An image pulled from a registry into a temporary OCI image layout (deleted on drop).
///
/// Build a ramdisk from it with
/// [`CustomerRamdisk::from_pulled`](crate::CustomerRamdisk::from_pulled).
#[derive(Debug)]
pub struct PulledImage {
    reference: String,
    digest: String,
    index_digest: Option<String>,
    layout: tempfile::TempDir,
}

impl PulledImage {
    /// The reference as given, resolved (`docker.io/library/…` for Docker Hub short names).
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The digest of the image manifest that was pulled (`sha256:…`): pin it with
    /// `repo@<digest>` to build the same image again.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The digest of the image index (manifest list) the platform's manifest was picked from,
    /// when the reference named one.
    pub fn index_digest(&self) -> Option<&str> {
        self.index_digest.as_deref()
    }

    /// The reference pinned to the manifest digest (`registry/repo@sha256:…`).
    pub fn pinned_reference(&self) -> String {
        let base = self
            .reference
            .split_once('@')
            .map_or(self.reference.as_str(), |(b, _)| b);
        // Drop the tag (a `:` after the last `/`, not the port's).
        let slash = base.rfind('/').map_or(0, |i| i + 1);
        let base = match base[slash..].rfind(':') {
            Some(i) => &base[..slash + i],
            None => base,
        };
        format!("{base}@{}", self.digest)
    }

    /// The OCI image layout directory holding the pulled image.
    pub fn layout_path(&self) -> &Path {
        self.layout.path()
    }
}

/// What went wrong, with the reference it concerns.
fn fail(reference: &str, failure: RegistryFailure, source: Option<BoxError>) -> Error {
    Error::Registry {
        reference: reference.to_owned(),
        failure,
        source,
    }
}

/// Sorts an `oci-client` error into a [`RegistryFailure`].
fn classify(e: &OciDistributionError) -> RegistryFailure {
    use OciDistributionError as E;
    match e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => RegistryFailure::Unauthorized,
        E::ImageManifestNotFoundError(_) => RegistryFailure::NotFound,
        E::DigestError(oci_client::errors::DigestError::VerificationError { expected, actual }) => {
            RegistryFailure::DigestMismatch {
                expected: expected.clone(),
                actual: actual.clone(),
            }
        }
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                RegistryFailure::Unauthorized
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                RegistryFailure::NotFound
            } else {
                RegistryFailure::Transport
            }
        }
        E::ServerError {
            code: 401 | 403, ..
        } => RegistryFailure::Unauthorized,
        E::ServerError { code: 404, .. } => RegistryFailure::NotFound,
        _ => RegistryFailure::Transport,
    }
}

fn oci_err(reference: &str, e: OciDistributionError) -> Error {
    fail(reference, classify(&e), Some(Box::new(e)))
}

/// The Docker config file: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn default_docker_config() -> Option<PathBuf> {
    let var = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    if let Some(d) = var("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// The host part of an `auths` key: `https://index.docker.io/v1/` → `index.docker.io`.
fn auth_key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// Credentials for `registry` from a Docker config document; `Ok(None)` when it has none.
pub(super) fn credentials_from_config(
    config: &Value,
    registry: &str,
) -> std::result::Result<Option<(String, String)>, String> {
    let Some(auths) = config.get("auths").and_then(Value::as_object) else {
        return Ok(None);
    };
    let entry = auths.iter().find(|(k, _)| {
        let h = auth_key_host(k);
        h == registry || (is_docker_hub(h) && is_docker_hub(registry))
    });
    let Some((key, entry)) = entry else {
        return Ok(None);
    };
    if let Some(auth) = entry.get("auth").and_then(Value::as_str)
        && !auth.is_empty()
    {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("auths.{key:?}.auth is not base64: {e}"))?;
        let text = String::from_utf8(raw)
            .map_err(|_| format!("auths.{key:?}.auth is not UTF-8 user:password"))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| format!("auths.{key:?}.auth is not user:password"))?;
        return Ok(Some((u.to_owned(), p.to_owned())));
    }
    let s = |f: &str| entry.get(f).and_then(Value::as_str).map(str::to_owned);
    Ok(s("username").zip(s("password")))
}

/// The authentication to use for `registry` (a host, as in the reference).
fn auth_for(reference: &str, registry: &str, opts: &RegistryOptions) -> Result<RegistryAuth> {
    if let Some((u, p)) = &opts.basic_auth {
        return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
    }
    let Some(path) = opts.docker_config.clone().or_else(default_docker_config) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        // No config file (and none was asked for by name): anonymous.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && opts.docker_config.is_none() => {
            return Ok(RegistryAuth::Anonymous);
        }
        Err(e) => {
            return Err(fail(
                reference,
                RegistryFailure::Credentials(format!("reading {}", path.display())),
                Some(Box::new(e)),
            ));
        }
    };
    let bad = |why: String| fail(reference, RegistryFailure::Credentials(why), None);
    if text.len() as u64 > super::MAX_JSON {
        return Err(bad(format!("{} is too large", path.display())));
    }
    let doc: Value = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("{} is not JSON: {e}", path.display())))?;
    Ok(
        match credentials_from_config(&doc, registry).map_err(bad)? {
            Some((u, p)) => RegistryAuth::Basic(u, p),
            None => RegistryAuth::Anonymous,
        },
    )
}

/// Whether a manifest document is an index (manifest list).
fn is_index(media_type: Option<&str>, doc: &Value) -> bool {
    match media_type {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        _ => doc.get("manifests").is_some() && doc.get("layers").is_none(),
    }
}

/// Picks the `linux/<arch>` entry of an index (for arm64, variant `v8` or none).
fn pick_platform(index: &Value, arch: Arch) -> std::result::Result<Option<Value>, RegistryFailure> {
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .ok_or_else(|| RegistryFailure::Malformed("image index without manifests".into()))?;
    if entries.len() > MAX_INDEX_ENTRIES {
        return Err(RegistryFailure::Malformed(format!(
            "image index with {} entries (limit {MAX_INDEX_ENTRIES})",
            entries.len()
        )));
    }
    Ok(entries
        .iter()
        .find(|d| {
            let p = d.get("platform");
            let f = |k: &str| p.and_then(|p| p.get(k)).and_then(Value::as_str);
            f("os") == Some("linux")
                && f("architecture") == Some(arch.oci_name())
                && (arch != Arch::Aarch64 || matches!(f("variant"), None | Some("v8")))
        })
        .cloned())
}

/// A descriptor's digest (checked: `sha256:`/`sha512:` and hex) and size.
fn descriptor(d: &Value, what: &str) -> std::result::Result<(String, u64), RegistryFailure> {
    let digest = d
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| RegistryFailure::Malformed(format!("{what} descriptor without digest")))?;
    Verifier::new(digest)
        .map_err(|_| RegistryFailure::Malformed(format!("{what} digest {digest:?}")))?;
    let size = d
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| RegistryFailure::Malformed(format!("{what} descriptor without size")))?;
    Ok((digest.to_owned(), size))
}

/// One registry session: the client, the parsed reference and its authentication.
struct Session {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
    /// The reference as the caller gave it (for errors).
    label: String,
}

impl Session {
    /// Pulls the manifest or index that `r` names, capped at [`MAX_MANIFEST`] and checked
    /// against the digest `r` names (if any). Returns the bytes and their digest.
    async fn manifest(&self, r: &Reference) -> Result<(Vec<u8>, String)> {
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
        let (body, digest) = self
            .client
            .pull_manifest_raw(r, &self.auth, &accept)
            .await
            .map_err(|e| oci_err(&self.label, e))?;
        if body.len() as u64 > MAX_MANIFEST {
            return Err(fail(
                &self.label,
                RegistryFailure::ManifestTooLarge {
                    size: body.len() as u64,
                    limit: MAX_MANIFEST,
                },
                None,
            ));
        }
        // Our own check of what the reference pins (oci-client checks it too).
        if let Some(want) = r.digest() {
            let v = Verifier::new(want).map_err(|_| {
                fail(
                    &self.label,
                    RegistryFailure::InvalidReference(format!("digest {want:?}")),
                    None,
                )
            })?;
            let got = super::digest::digest_of(v.alg, &body);
            if !v.matches(&got) {
                let (alg, _) = want.split_once(':').unwrap_or(("sha256", ""));
                return Err(fail(
                    &self.label,
                    RegistryFailure::DigestMismatch {
                        expected: want.to_owned(),
                        actual: format!("{alg}:{}", hex::encode(got)),
                    },
                    None,
                ));
            }
        }
        Ok((body.to_vec(), digest))
    }

    /// Streams blob `digest` (of `size` bytes) into `dest`, hashing it; `budget` is what is
    /// left of the cap on all blobs' bytes and is reduced by the blob's size.
    async fn blob(
        &self,
        digest: &str,
        size: u64,
        media_type: &str,
        dest: &Path,
        budget: &mut u64,
        limit: u64,
    ) -> Result<()> {
        if size > *budget {
            return Err(Error::ImageTooLarge {
                what: format!("the registry blobs of {} (blob {digest})", self.label),
                limit,
            });
        }
        let verifier = Verifier::new(digest).map_err(|_| {
            fail(
                &self.label,
                RegistryFailure::Malformed(format!("digest {digest:?}")),
                None,
            )
        })?;
        // Our own descriptor: no foreign `urls` are ever followed.
        let desc = OciDescriptor {
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            urls: None,
            ..OciDescriptor::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, &desc)
            .await
            .map_err(|e| oci_err(&self.label, e))?;
        let io_err = |context: String| {
            let label = self.label.clone();
            move |e: std::io::Error| {
                fail(
                    &label,
                    RegistryFailure::Transport,
                    Some(Box::new(Error::io(context, e))),
                )
            }
        };
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| Error::io(format!("creating {}", dest.display()), e))?;
        let mut hash = Hashing::new(std::io::empty(), Some(verifier.alg));
        let mut got: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(io_err(format!("downloading blob {digest}")))?;
            got = got.saturating_add(chunk.len() as u64);
            if got > size {
                return Err(fail(
                    &self.label,
                    RegistryFailure::Malformed(format!(
                        "blob {digest} is longer than its descriptor's {size} bytes"
                    )),
                    None,
                ));
            }
            hash.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
        }
        file.flush()
            .await
            .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
        if got != size {
            return Err(fail(
                &self.label,
                RegistryFailure::Malformed(format!(
                    "blob {digest}: {got} bytes, its descriptor says {size}"
                )),
                None,
            ));
        }
        let actual = hash.finish().unwrap_or_default();
        if !verifier.matches(&actual) {
            let (alg, _) = digest.split_once(':').unwrap_or(("sha256", ""));
            return Err(fail(
                &self.label,
                RegistryFailure::DigestMismatch {
                    expected: digest.to_owned(),
                    actual: format!("{alg}:{}", hex::encode(actual)),
                },
                None,
            ));
        }
        *budget -= size;
        Ok(())
    }
}

fn write_blob(layout: &Path, digest: &str, data: &[u8]) -> Result<()> {
    let p = blob_path(layout, digest);
    std::fs::write(&p, data).map_err(|e| Error::io(format!("writing {}", p.display()), e))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    // `digest` was checked by `Verifier::new`: `alg:hex`, no path separators.
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    layout.join("blobs").join(alg).join(hex)
}

/// Pulls `reference` into a temporary OCI image layout: the platform's manifest (from an
/// index, `linux/amd64` unless [`ImageOptions::arch`] says otherwise), its config and its
/// layers, each checked against its digest, all blobs together capped by
/// [`ImageOptions::max_unpacked`].
///
/// # Errors
/// [`Error::Registry`] with a [`RegistryFailure`] saying what went wrong (unknown
/// name or tag, refused credentials, a digest that does not match, an oversized or malformed
/// manifest, a transport error); [`Error::ImageTooLarge`] when the blobs exceed the cap.
pub async fn pull(
    reference: &str,
    image: &ImageOptions,
    registry: &RegistryOptions,
) -> Result<PulledImage> {
    let label = reference.to_owned();
    let r: Reference = reference.parse().map_err(|e: oci_client::ParseError| {
        fail(
            &label,
            RegistryFailure::InvalidReference(e.to_string()),
            None,
        )
    })?;
    let registry_host = r.registry().to_owned();
    let auth = auth_for(&label, &registry_host, registry)?;
    let config = ClientConfig {
        protocol: if registry.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        // Picking the platform is ours (below), from the capped manifest bytes.
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        max_concurrent_download: 4,
        ..ClientConfig::default()
    };
    let session = Session {
        client: Client::new(config),
        reference: r.clone(),
        auth,
        label: label.clone(),
    };
    let malformed = |why: String| fail(&label, RegistryFailure::Malformed(why), None);
    let parse = |bytes: &[u8], what: &str| -> Result<Value> {
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("{what}: {e}")))
    };

    let (mut bytes, mut digest) = session.manifest(&r).await?;
    let mut doc = parse(&bytes, "manifest")?;
    let mut index_digest = None;
    let top_type = doc.get("mediaType").and_then(Value::as_str);
    if is_index(top_type, &doc) {
        let arch = image.arch.unwrap_or(Arch::X86_64);
        let entry = pick_platform(&doc, arch)
            .map_err(|f| fail(&label, f, None))?
            .ok_or_else(|| fail(&label, RegistryFailure::NoPlatform { arch }, None))?;
        let (d, _) = descriptor(&entry, "index entry").map_err(|f| fail(&label, f, None))?;
        let by_digest = Reference::with_digest(
            r.registry().to_owned(),
            r.repository().to_owned(),
            d.clone(),
        );
        let (b, got) = session.manifest(&by_digest).await?;
        if got != d {
            return Err(fail(
                &label,
                RegistryFailure::DigestMismatch {
                    expected: d,
                    actual: got,
                },
                None,
            ));
        }
        index_digest = Some(digest);
        doc = parse(&b, "manifest")?;
        if is_index(doc.get("mediaType").and_then(Value::as_str), &doc) {
            return Err(fail(
                &label,
                RegistryFailure::Unsupported("an image index inside an image index".into()),
                None,
            ));
        }
        bytes = b;
        digest = got;
    }
    let media_type = match doc.get("mediaType").and_then(Value::as_str) {
        Some(t @ (OCI_MANIFEST | DOCKER_MANIFEST)) => t.to_owned(),
        None if doc.get("layers").is_some() => OCI_MANIFEST.to_owned(),
        other => {
            return Err(fail(
                &label,
                RegistryFailure::Unsupported(format!("manifest media type {other:?}")),
                None,
            ));
        }
    };
    let cdesc = doc
        .get("config")
        .ok_or_else(|| malformed("manifest without config".into()))?;
    let (cdigest, csize) = descriptor(cdesc, "config").map_err(|f| fail(&label, f, None))?;
    if csize > super::MAX_JSON {
        return Err(malformed(format!(
            "config of {csize} bytes (limit {})",
            super::MAX_JSON
        )));
    }
    let layers = doc
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("manifest without layers".into()))?;
    if layers.len() > MAX_LAYERS {
        return Err(fail(
            &label,
            RegistryFailure::TooManyLayers {
                count: layers.len(),
                limit: MAX_LAYERS,
            },
            None,
        ));
    }
    let mut plan = Vec::with_capacity(layers.len());
    for (i, l) in layers.iter().enumerate() {
        let (d, size) = descriptor(l, "layer").map_err(|f| fail(&label, f, None))?;
        let t = l
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or(LAYER_TYPES[0]);
        if !LAYER_TYPES.contains(&t) {
            return Err(fail(
                &label,
                RegistryFailure::Unsupported(format!("layer {} has media type {t:?}", i + 1)),
                None,
            ));
        }
        plan.push((d, size, t.to_owned()));
    }

    let layout = tempfile::Builder::new()
        .prefix("nitro-eif-pull")
        .tempdir()
        .map_err(|e| Error::io("creating a temporary directory", e))?;
    let dir = layout.path();
    for alg in ["sha256", "sha512"] {
        let p = dir.join("blobs").join(alg);
        std::fs::create_dir_all(&p)
            .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
    }
    write_blob(dir, &digest, &bytes)?;
    let limit = image.limit();
    let mut budget = limit;
    let ctype = cdesc
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or("application/vnd.oci.image.config.v1+json")
        .to_owned();
    session
        .blob(
            &cdigest,
            csize,
            &ctype,
            &blob_path(dir, &cdigest),
            &mut budget,
            limit,
        )
        .await?;
    for (d, size, t) in &plan {
        let dest = blob_path(dir, d);
        if dest.exists() {
            continue; // the same layer twice: already checked
        }
        session.blob(d, *size, t, &dest, &mut budget, limit).await?;
    }
    let write = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).map_err(|e| Error::io(format!("writing {}", p.display()), e))
    };
    write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": media_type,
            "digest": digest,
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": r.whole()},
        }]
    });
    write("index.json", index.to_string().as_bytes())?;
    Ok(PulledImage {
        reference: r.whole(),
        digest,
        index_digest,
        layout,
    })
}

/// [`pull`] on a private current-thread runtime, on a helper thread (so it may be called from
/// inside an async runtime too, though it then blocks that runtime's thread).
pub fn pull_blocking(
    reference: &str,
    image: &ImageOptions,
    registry: &RegistryOptions,
) -> Result<PulledImage> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::io("starting the registry client runtime", e))?;
            rt.block_on(pull(reference, image, registry))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(fail(
                reference,
                RegistryFailure::Transport,
                Some("the registry client thread panicked".into()),
            ))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_credentials() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3:cret");
        let cfg = json!({"auths": {
            "https://index.docker.io/v1/": {"auth": auth},
            "127.0.0.1:5000": {"username": "bob", "password": "pw"},
            "bad.example": {"auth": "!!"},
        }});
        assert_eq!(
            credentials_from_config(&cfg, "docker.io"),
            Ok(Some(("alice".into(), "s3:cret".into())))
        );
        assert_eq!(
            credentials_from_config(&cfg, "127.0.0.1:5000"),
            Ok(Some(("bob".into(), "pw".into())))
        );
        assert_eq!(credentials_from_config(&cfg, "ghcr.io"), Ok(None));
        assert!(credentials_from_config(&cfg, "bad.example").is_err());
        assert_eq!(credentials_from_config(&json!({}), "x"), Ok(None));
    }

    #[test]
    fn platform_pick() {
        let idx = json!({"manifests": [
            {"digest": "sha256:aa", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
            {"digest": "sha256:bb", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": "sha256:cc", "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        let d = |a| {
            pick_platform(&idx, a)
                .ok()
                .flatten()
                .and_then(|v| v["digest"].as_str().map(str::to_owned))
        };
        assert_eq!(d(Arch::X86_64).as_deref(), Some("sha256:cc"));
        assert_eq!(d(Arch::Aarch64).as_deref(), Some("sha256:bb"));
        assert!(pick_platform(&json!({}), Arch::X86_64).is_err());
    }

    #[test]
    fn pinned_reference_drops_the_tag_not_the_port() {
        let p = PulledImage {
            reference: "127.0.0.1:5000/app:1".into(),
            digest: "sha256:ab".into(),
            index_digest: None,
            layout: tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")),
        };
        assert_eq!(p.pinned_reference(), "127.0.0.1:5000/app@sha256:ab");
    }
}
