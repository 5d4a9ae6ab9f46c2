//! Attested KMS calls: client-side cost of `Recipient`, and whole calls against the local KMS on
//! loopback, each beside a baseline measured in the same run.
//!
//! ```sh
//! cargo bench --bench kms
//! ```
//!
//! Groups:
//! - `kms/cms_open`: parse + open a 48-byte `CiphertextForRecipient` (RSA-2048 OAEP-SHA-256 +
//!   AES-256-CBC), beside `kms/floor_rsa2048_oaep_decrypt`, the RSA private-key operation alone
//!   (the physical floor of opening an envelope);
//! - `kms/client_overhead/{plain,attested}`: everything the client does around one Decrypt
//!   except the network and the server: encode the request (with the 4.5 KB attestation document
//!   in base64 when attested), decode the response, and, attested, open the envelope. The
//!   difference is the warm client-side overhead of `Recipient` (target ≤ 2 ms p50);
//! - `kms/decrypt_loopback_tls/{plain,attested_warm,attested_cold}`: whole Decrypt calls against
//!   the local KMS over TLS on loopback (keep-alive connection): without Recipient (baseline),
//!   with a reused key pair, and with a new RSA-2048 key pair and attestation document per call;
//!   `kms/floor_rsa2048_keygen` is the key generation alone (what "cold" pays);
//!   `proxy_warm` is `attested_warm` through the KMS proxy (`nitro_kms::proxy`), sent as an AWS
//!   SDK sends it (HTTP/1.1 keep-alive on loopback, JSON, base64 `Plaintext`): the difference
//!   from `attested_warm` is the proxy's overhead (target ≤ 1 ms p50).
//! - `kms/local_sign/{handle_p384_raw,handle_p384_digest}`: the local KMS's protocol core
//!   answering `Sign` with an ECC_NIST_P384 key (what an EIF signer calls: JSON in, key lookup
//!   through an alias, policy evaluation, ECDSA, JSON out), beside
//!   `kms/local_sign/floor_ecdsa_p384_sign`, the ECDSA P-384 signature alone.

#![allow(missing_docs)] // criterion macros generate undocumented items
#![allow(clippy::unwrap_used, clippy::expect_used)] // set-up failures abort the benchmark

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use nitro_attest::{Nsm, SimulatedNsm};
use nitro_kms::internal::cms::{self, Envelope};
use nitro_kms::local::{AttestationTrust, LocalKms, LocalKmsConfig, server};
use nitro_kms::model::{
    CreateKeyRequest, DecryptRequest, DecryptResponse, EncryptRequest, RecipientInfo,
};
use nitro_kms::proxy::KmsProxy;
use nitro_kms::{Credentials, KmsClient, Recipient, RecipientKey, TlsRoots};

fn creds() -> Credentials {
    Credentials::new("AKIDBENCH", "bench-secret", None, None)
}

fn cms_open(c: &mut Criterion) {
    let key = RecipientKey::generate().unwrap();
    let envelope = cms::seal(key.public_key_der(), &[7u8; 32]).unwrap();
    let mut g = c.benchmark_group("kms");
    g.bench_function("cms_open", |b| {
        b.iter(|| {
            Envelope::parse(black_box(&envelope))
                .unwrap()
                .open(&key)
                .unwrap()
        })
    });
    let parsed = Envelope::parse(&envelope).unwrap();
    let raw = OaepPrivateDecryptingKey::new(
        PrivateDecryptingKey::from_pkcs8(&key.to_pkcs8_der().unwrap()).unwrap(),
    )
    .unwrap();
    let mut out = vec![0u8; 256];
    g.bench_function("floor_rsa2048_oaep_decrypt", |b| {
        b.iter(|| {
            raw.decrypt(
                &OAEP_SHA256_MGF1SHA256,
                black_box(parsed.encrypted_key()),
                &mut out,
                None,
            )
            .unwrap()
            .len()
        })
    });
    g.finish();
}

fn client_overhead(c: &mut Criterion) {
    // A real request/response pair produced by the local KMS core (no network).
    let nsm = SimulatedNsm::builder().seed(1).build().unwrap();
    let kms = LocalKms::new(
        LocalKmsConfig::new(AttestationTrust::root_der(nsm.root_certificate_der()).unwrap())
            .credentials(creds()),
    )
    .unwrap();
    let (_, caller) = kms.caller("AKIDBENCH").unwrap();
    let now = SystemTime::now();
    let created: serde_json::Value =
        serde_json::from_slice(&kms.handle("CreateKey", b"{}", &caller, now).unwrap()).unwrap();
    let key_id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    let enc_req = serde_json::to_vec(&EncryptRequest::new(&key_id, vec![9u8; 32])).unwrap();
    let enc: serde_json::Value =
        serde_json::from_slice(&kms.handle("Encrypt", &enc_req, &caller, now).unwrap()).unwrap();
    let blob = base64_decode(enc["CiphertextBlob"].as_str().unwrap());

    let plain_req = DecryptRequest::new(blob.clone());
    let plain_resp = kms
        .handle(
            "Decrypt",
            &serde_json::to_vec(&plain_req).unwrap(),
            &caller,
            now,
        )
        .unwrap();

    let key = RecipientKey::generate().unwrap();
    let doc = nsm
        .attestation(None, None, Some(key.public_key_der()))
        .unwrap();
    let mut attested_req = DecryptRequest::new(blob.clone());
    attested_req.recipient = Some(RecipientInfo::new(doc.clone()));
    let attested_resp = kms
        .handle(
            "Decrypt",
            &serde_json::to_vec(&attested_req).unwrap(),
            &caller,
            now,
        )
        .unwrap();

    let mut g = c.benchmark_group("kms/client_overhead");
    g.bench_function("plain", |b| {
        b.iter(|| {
            let body = serde_json::to_vec(black_box(&plain_req)).unwrap();
            let resp: DecryptResponse = serde_json::from_slice(black_box(&plain_resp)).unwrap();
            (body.len(), resp.plaintext.len())
        })
    });
    g.bench_function("attested", |b| {
        b.iter(|| {
            let mut req = DecryptRequest::new(blob.clone());
            req.recipient = Some(RecipientInfo::new(doc.clone()));
            let body = serde_json::to_vec(black_box(&req)).unwrap();
            let resp: DecryptResponse = serde_json::from_slice(black_box(&attested_resp)).unwrap();
            let env = Envelope::parse(resp.ciphertext_for_recipient.as_deref().unwrap()).unwrap();
            (body.len(), env.open(&key).unwrap().len())
        })
    });
    g.finish();
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let nsm = Arc::new(SimulatedNsm::builder().seed(2).build().unwrap());
    let (ca, cert, key) = nitro_test_support::tls_material();
    let (server, url) = rt.block_on(async {
        let kms = LocalKms::new(
            LocalKmsConfig::new(AttestationTrust::root_der(nsm.root_certificate_der()).unwrap())
                .credentials(creds()),
        )
        .unwrap();
        let tls = server::tls_config(cert.as_bytes(), key.as_bytes()).unwrap();
        let server = server::spawn(Arc::new(kms), "127.0.0.1:0", Some(tls))
            .await
            .unwrap();
        let url = format!("https://127.0.0.1:{}", server.local_addr().port());
        (server, url)
    });
    let client = |recipient: Option<Recipient>| {
        let mut b = KmsClient::builder("us-east-1")
            .endpoint(&url)
            .tls_roots(TlsRoots::from_pem(ca.as_bytes()).unwrap())
            .credentials(creds());
        if let Some(r) = recipient {
            b = b.recipient(r);
        }
        b.build().unwrap()
    };
    let plain = client(None);
    let blob = rt.block_on(async {
        let key_id = plain
            .create_key(CreateKeyRequest::new())
            .await
            .unwrap()
            .key_metadata
            .key_id;
        plain
            .encrypt(EncryptRequest::new(&key_id, vec![1u8; 32]))
            .await
            .unwrap()
            .ciphertext_blob
    });
    let warm = client(Some(
        Recipient::new(nsm.clone()).lifetime(Duration::from_secs(3600)),
    ));
    let cold = client(Some(Recipient::new(nsm.clone()).lifetime(Duration::ZERO)));

    let mut g = c.benchmark_group("kms/decrypt_loopback_tls");
    for (name, kms) in [("plain", &plain), ("attested_warm", &warm)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(kms.decrypt(DecryptRequest::new(blob.clone())))
                    .unwrap()
                    .plaintext
                    .len()
            })
        });
    }
    // The same attested Decrypt through the KMS proxy, as an AWS SDK would send it: one more
    // HTTP/1.1 hop on loopback (keep-alive), JSON in and out, the caller decoding `Plaintext`.
    let proxy = rt
        .block_on(KmsProxy::new(warm.clone()).unwrap().spawn("127.0.0.1:0"))
        .unwrap();
    let mut sender = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(proxy.local_addr())
            .await
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    });
    let body = Bytes::from(serde_json::to_vec(&DecryptRequest::new(blob.clone())).unwrap());
    let host = proxy.local_addr().to_string();
    g.bench_function("proxy_warm", |b| {
        b.iter(|| {
            rt.block_on(async {
                sender.ready().await.unwrap();
                let req = http::Request::post("/")
                    .header("host", &host)
                    .header("x-amz-target", "TrentService.Decrypt")
                    .header("content-type", "application/x-amz-json-1.1")
                    .body(Full::new(body.clone()))
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                base64_decode(v["Plaintext"].as_str().unwrap()).len()
            })
        })
    });
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    g.bench_function("attested_cold", |b| {
        b.iter(|| {
            rt.block_on(cold.decrypt(DecryptRequest::new(blob.clone())))
                .unwrap()
                .plaintext
                .len()
        })
    });
    g.finish();
    let mut g = c.benchmark_group("kms");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    g.bench_function("floor_rsa2048_keygen", |b| {
        b.iter(|| {
            PrivateDecryptingKey::generate(KeySize::Rsa2048)
                .unwrap()
                .key_size_bits()
        })
    });
    g.finish();
    drop((plain, warm, cold, sender));
    rt.block_on(async move { drop((server, proxy)) });
}

fn local_sign(c: &mut Criterion) {
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair};
    let kms =
        LocalKms::new(LocalKmsConfig::new(AttestationTrust::aws()).credentials(creds())).unwrap();
    let (_, caller) = kms.caller("AKIDBENCH").unwrap();
    let now = SystemTime::now();
    let created = kms
        .handle(
            "CreateKey",
            br#"{"KeySpec":"ECC_NIST_P384","KeyUsage":"SIGN_VERIFY"}"#,
            &caller,
            now,
        )
        .unwrap();
    let created: serde_json::Value = serde_json::from_slice(&created).unwrap();
    let id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    kms.handle(
        "CreateAlias",
        format!(r#"{{"AliasName":"alias/eif","TargetKeyId":"{id}"}}"#).as_bytes(),
        &caller,
        now,
    )
    .unwrap();
    // A 1 KiB message (RAW) and its SHA-384 (DIGEST), base64.
    let raw = format!(
        r#"{{"KeyId":"alias/eif","Message":"{}","SigningAlgorithm":"ECDSA_SHA_384"}}"#,
        "QUFB".repeat(1024 / 3)
    );
    let digest = format!(
        r#"{{"KeyId":"alias/eif","Message":"{}","MessageType":"DIGEST","SigningAlgorithm":"ECDSA_SHA_384"}}"#,
        "AAAA".repeat(16)
    );
    let mut g = c.benchmark_group("kms/local_sign");
    g.bench_function("handle_p384_raw", |b| {
        b.iter(|| {
            kms.handle("Sign", black_box(raw.as_bytes()), &caller, now)
                .unwrap()
                .len()
        })
    });
    g.bench_function("handle_p384_digest", |b| {
        b.iter(|| {
            kms.handle("Sign", black_box(digest.as_bytes()), &caller, now)
                .unwrap()
                .len()
        })
    });
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_ASN1_SIGNING)
        .unwrap()
        .to_pkcs8v1()
        .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
    let message = vec![b'A'; 1024];
    g.bench_function("floor_ecdsa_p384_sign", |b| {
        b.iter(|| pair.sign(&rng, black_box(&message)).unwrap().as_ref().len())
    });
    g.finish();
}

criterion_group!(benches, cms_open, client_overhead, loopback, local_sign);
criterion_main!(benches);
