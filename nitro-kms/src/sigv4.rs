//! SigV4: signing outgoing requests (through `aws-sigv4`) and, for the local KMS, verifying
//! incoming ones.

use std::time::SystemTime;

use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;

use crate::aws_credentials::Credentials;
use crate::error::Error;

/// Which service's signing conventions to follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    /// KMS (and other JSON services): payload hash not sent as a header.
    Kms,
    /// S3: `x-amz-content-sha256` header, single URI encoding, no path normalisation.
    S3,
}

impl Service {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Kms => "kms",
            Self::S3 => "s3",
        }
    }
}

/// Signs `req` in place (adds `x-amz-date`, `authorization`, `x-amz-security-token`, and for S3
/// `x-amz-content-sha256`).
pub(crate) fn sign_request(
    req: &mut http::Request<Bytes>,
    creds: &Credentials,
    region: &str,
    service: Service,
    time: SystemTime,
) -> Result<(), Error> {
    let aws_creds = aws_credential_types::Credentials::new(
        creds.access_key_id(),
        creds.secret_access_key().expose(),
        creds.session_token().map(|t| t.expose().to_owned()),
        creds.expiration(),
        "nitro-kms",
    );
    let identity = aws_creds.into();
    let mut settings = SigningSettings::default();
    if service == Service::S3 {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service.name())
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| Error::Signing(e.to_string()))?
        .into();
    let uri = req.uri().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            Ok((
                k.as_str(),
                v.to_str()
                    .map_err(|_| Error::Signing(format!("header {k} is not ASCII")))?,
            ))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let signable = SignableRequest::new(
        req.method().as_str(),
        uri,
        headers.into_iter(),
        SignableBody::Bytes(req.body()),
    )
    .map_err(|e| Error::Signing(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| Error::Signing(e.to_string()))?
        .into_parts();
    instructions.apply_to_request_http1x(req);
    Ok(())
}

#[cfg(feature = "local-kms")]
pub(crate) use verify::verify_request;

#[cfg(feature = "local-kms")]
mod verify {
    //! Verification of incoming SigV4 `Authorization` headers (the local KMS). The canonical
    //! request is rebuilt from the headers the client says it signed, per the SigV4
    //! specification, and the signature recomputed with the configured secret.

    use std::time::{Duration, SystemTime};

    use aws_lc_rs::constant_time;
    use aws_lc_rs::digest;
    use aws_sigv4::sign::v4;

    use crate::aws_credentials::Credentials;
    use crate::error::ServiceError as Error;

    fn incomplete(message: impl Into<String>) -> Error {
        Error::new(400, "IncompleteSignatureException", message)
    }

    fn invalid(message: impl Into<String>) -> Error {
        Error::new(400, "InvalidSignatureException", message)
    }

    fn unrecognized() -> Error {
        Error::new(
            400,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    }

    /// Largest accepted clock difference between client and server (as AWS).
    const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

    /// What a verified signature proves.
    #[derive(Clone, Debug)]
    pub(crate) struct VerifiedSignature {
        pub(crate) access_key_id: String,
    }

    struct Authorization<'a> {
        access_key_id: &'a str,
        date: &'a str,
        region: &'a str,
        service: &'a str,
        signed_headers: Vec<&'a str>,
        signature: &'a str,
    }

    fn parse_authorization(value: &str) -> Result<Authorization<'_>, Error> {
        let bad = |why: &str| incomplete(format!("malformed Authorization header: {why}"));
        let rest = value
            .strip_prefix("AWS4-HMAC-SHA256")
            .ok_or_else(|| bad("algorithm is not AWS4-HMAC-SHA256"))?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("Credential=") {
                credential = Some(v);
            } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
                signed = Some(v);
            } else if let Some(v) = part.strip_prefix("Signature=") {
                signature = Some(v);
            }
        }
        let credential = credential.ok_or_else(|| bad("no Credential"))?;
        let mut scope = credential.split('/');
        let (Some(akid), Some(date), Some(region), Some(service), Some("aws4_request"), None) = (
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
            scope.next(),
        ) else {
            return Err(bad("bad credential scope"));
        };
        let signed_headers: Vec<&str> = signed
            .ok_or_else(|| bad("no SignedHeaders"))?
            .split(';')
            .collect();
        if !signed_headers.contains(&"host") {
            return Err(bad("host is not signed"));
        }
        Ok(Authorization {
            access_key_id: akid,
            date,
            region,
            service,
            signed_headers,
            signature: signature.ok_or_else(|| bad("no Signature"))?,
        })
    }

    /// `x-amz-date` (`YYYYMMDDTHHMMSSZ`) → time.
    fn parse_amz_date(s: &str) -> Option<SystemTime> {
        let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        let t = time::PrimitiveDateTime::parse(s, &fmt).ok()?;
        Some(SystemTime::from(t.assume_utc()))
    }

    fn uri_encode(s: &str, encode_slash: bool) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(b as char)
                }
                b'/' if !encode_slash => out.push('/'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }

    fn percent_decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match (bytes.get(i), bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(b'%'), Some(h), Some(l))
                    if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() =>
                {
                    let hex = [*h, *l];
                    let v = std::str::from_utf8(&hex)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .unwrap_or(b'?');
                    out.push(v);
                    i += 3;
                }
                (Some(b), _, _) => {
                    out.push(*b);
                    i += 1;
                }
                (None, _, _) => break,
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn canonical_query(query: Option<&str>) -> String {
        let Some(q) = query.filter(|q| !q.is_empty()) else {
            return String::new();
        };
        let mut pairs: Vec<(String, String)> = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (
                    uri_encode(&percent_decode(k), true),
                    uri_encode(&percent_decode(v), true),
                )
            })
            .collect();
        pairs.sort();
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    fn canonical_path(path: &str) -> String {
        // Non-S3 services: normalise, then encode each segment twice (once as the client sent
        // it, once more for the canonical form).
        let decoded = percent_decode(path);
        let mut segments: Vec<&str> = Vec::new();
        for seg in decoded.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                s => segments.push(s),
            }
        }
        let mut out = String::from("/");
        let encoded: Vec<String> = segments
            .iter()
            .map(|s| uri_encode(&uri_encode(s, true), true))
            .collect();
        out.push_str(&encoded.join("/"));
        if decoded.ends_with('/') && !segments.is_empty() {
            out.push('/');
        }
        out
    }

    /// Verifies the SigV4 signature of a request to `service` in `region`, made at most
    /// 15 minutes away from `now`, against `credentials` (looked up by access key id).
    pub(crate) fn verify_request(
        parts: &http::request::Parts,
        body: &[u8],
        region: &str,
        service: &str,
        now: SystemTime,
        lookup: impl Fn(&str) -> Option<Credentials>,
    ) -> Result<VerifiedSignature, Error> {
        let header =
            |name: &str| -> Option<&str> { parts.headers.get(name).and_then(|v| v.to_str().ok()) };
        let auth = header("authorization").ok_or_else(|| {
            Error::new(
                400,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            )
        })?;
        let auth = parse_authorization(auth)?;
        if auth.service != service {
            return Err(invalid(format!(
                "credential should be scoped to correct service: '{service}'"
            )));
        }
        // The JSON protocols name the operation in `X-Amz-Target`: unsigned, a captured request
        // could be replayed as another operation.
        if service == "kms" && !auth.signed_headers.contains(&"x-amz-target") {
            return Err(incomplete(
                "'X-Amz-Target' must be among the SignedHeaders of a KMS request",
            ));
        }
        if auth.region != region {
            return Err(invalid(format!(
                "credential should be scoped to a valid region, not '{}' (this endpoint is '{region}')",
                auth.region
            )));
        }
        let amz_date = header("x-amz-date").ok_or_else(|| incomplete("missing X-Amz-Date"))?;
        let signed_at = parse_amz_date(amz_date)
            .ok_or_else(|| incomplete(format!("invalid X-Amz-Date {amz_date:?}")))?;
        if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
            return Err(invalid("credential date does not match X-Amz-Date"));
        }
        let skew = now
            .duration_since(signed_at)
            .unwrap_or_else(|e| e.duration());
        if skew > MAX_SKEW {
            return Err(invalid(format!(
                "Signature expired or not yet valid: {amz_date} is more than 15 minutes away from the server's time"
            )));
        }
        let creds = lookup(auth.access_key_id).ok_or_else(unrecognized)?;
        if let Some(expected) = creds.session_token() {
            let sent = header("x-amz-security-token").unwrap_or("");
            if constant_time::verify_slices_are_equal(sent.as_bytes(), expected.expose().as_bytes())
                .is_err()
            {
                return Err(unrecognized());
            }
        }

        let mut canonical_headers = String::new();
        for name in &auth.signed_headers {
            let values: Vec<String> = parts
                .headers
                .get_all(*name)
                .iter()
                .map(|v| {
                    String::from_utf8_lossy(v.as_bytes())
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            let value = if *name == "host" && values.is_empty() {
                parts
                    .uri
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            } else {
                values.join(",")
            };
            canonical_headers.push_str(name);
            canonical_headers.push(':');
            canonical_headers.push_str(&value);
            canonical_headers.push('\n');
        }
        // The payload hash is always computed from the body received. A signed
        // `x-amz-content-sha256` header must state that same hash: otherwise a captured request
        // would verify with any other body.
        let payload_hash = hex::encode(digest::digest(&digest::SHA256, body));
        if let Some(claimed) = header("x-amz-content-sha256")
            && auth.signed_headers.contains(&"x-amz-content-sha256")
            && !claimed.eq_ignore_ascii_case(&payload_hash)
        {
            return Err(invalid(
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            ));
        }
        let path = if service == "s3" {
            parts.uri.path().to_owned()
        } else {
            canonical_path(parts.uri.path())
        };
        let canonical_request = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            parts.method.as_str(),
            path,
            canonical_query(parts.uri.query()),
            canonical_headers,
            auth.signed_headers.join(";"),
            payload_hash
        );
        let scope = format!("{}/{}/{}/aws4_request", auth.date, region, service);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(digest::digest(
                &digest::SHA256,
                canonical_request.as_bytes()
            ))
        );
        let key = v4::generate_signing_key(
            creds.secret_access_key().expose(),
            signed_at,
            region,
            service,
        );
        let expected = v4::calculate_signature(key, string_to_sign.as_bytes());
        if constant_time::verify_slices_are_equal(expected.as_bytes(), auth.signature.as_bytes())
            .is_err()
        {
            return Err(invalid(
                "The request signature we calculated does not match the signature you provided.",
            ));
        }
        Ok(VerifiedSignature {
            access_key_id: auth.access_key_id.to_owned(),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::sigv4::{Service, sign_request};
        use bytes::Bytes;

        fn signed(creds: &Credentials, t: SystemTime, uri: &str) -> http::Request<Bytes> {
            let mut req = http::Request::builder()
                .method("POST")
                .uri(uri)
                .header("host", "localhost:4566")
                .header("content-type", "application/x-amz-json-1.1")
                .header("x-amz-target", "TrentService.ListKeys")
                .body(Bytes::from_static(b"{}"))
                .unwrap();
            sign_request(&mut req, creds, "eu-west-1", Service::Kms, t).unwrap();
            req
        }

        #[test]
        fn sign_then_verify() {
            let creds = Credentials::new("AKID", "secret", Some("tok".into()), None);
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            for uri in [
                "http://localhost:4566/",
                "http://localhost:4566/a/../b?x=1&a=%20",
            ] {
                let req = signed(&creds, t, uri);
                let (parts, body) = req.into_parts();
                let lookup = |id: &str| (id == "AKID").then(|| creds.clone());
                verify_request(&parts, &body, "eu-west-1", "kms", t, lookup).unwrap();
                // Tampered body, wrong region, expired, wrong secret.
                assert!(verify_request(&parts, b"{ }", "eu-west-1", "kms", t, lookup).is_err());
                assert!(verify_request(&parts, &body, "us-east-1", "kms", t, lookup).is_err());
                assert!(
                    verify_request(&parts, &body, "eu-west-1", "kms", t + MAX_SKEW * 2, lookup)
                        .is_err()
                );
                let other = Credentials::new("AKID", "other", Some("tok".into()), None);
                assert!(
                    verify_request(&parts, &body, "eu-west-1", "kms", t, |_| Some(
                        other.clone()
                    ))
                    .is_err()
                );
                assert!(verify_request(&parts, &body, "eu-west-1", "kms", t, |_| None).is_err());
            }
        }

        /// Issue 20 item 5: a signed `x-amz-content-sha256` must match the body received.
        #[test]
        fn signed_content_hash_is_checked_against_the_body() {
            let creds = Credentials::new("AKID", "secret", None, None);
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let body = Bytes::from_static(br#"{"KeyId":"alias/a"}"#);
            let hash = hex::encode(digest::digest(&digest::SHA256, &body));
            let mut req = http::Request::builder()
                .method("POST")
                .uri("http://localhost:4566/")
                .header("host", "localhost:4566")
                .header("x-amz-target", "TrentService.DescribeKey")
                .header("x-amz-content-sha256", &hash)
                .body(body.clone())
                .unwrap();
            sign_request(&mut req, &creds, "eu-west-1", Service::Kms, t).unwrap();
            let (parts, body) = req.into_parts();
            let signed = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(signed.contains("x-amz-content-sha256"), "{signed}");
            let lookup = |_: &str| Some(creds.clone());
            verify_request(&parts, &body, "eu-west-1", "kms", t, lookup).unwrap();
            let replayed = br#"{"KeyId":"alias/b"}"#;
            let e = verify_request(&parts, replayed, "eu-west-1", "kms", t, lookup).unwrap_err();
            assert_eq!(e.code, "InvalidSignatureException");
        }

        /// Issue 20 item 5: an `X-Amz-Target` outside `SignedHeaders` is refused.
        #[test]
        fn target_must_be_signed() {
            let creds = Credentials::new("AKID", "secret", None, None);
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let mut req = http::Request::builder()
                .method("POST")
                .uri("http://localhost:4566/")
                .header("host", "localhost:4566")
                .body(Bytes::from_static(b"{}"))
                .unwrap();
            sign_request(&mut req, &creds, "eu-west-1", Service::Kms, t).unwrap();
            req.headers_mut().insert(
                "x-amz-target",
                http::HeaderValue::from_static("TrentService.ScheduleKeyDeletion"),
            );
            let (parts, body) = req.into_parts();
            let e = verify_request(&parts, &body, "eu-west-1", "kms", t, |_| {
                Some(creds.clone())
            })
            .unwrap_err();
            assert_eq!(e.code, "IncompleteSignatureException");
        }

        #[test]
        fn garbage_authorization() {
            for auth in [
                "",
                "AWS4-HMAC-SHA256",
                "AWS4-HMAC-SHA256 Credential=a/b/c, SignedHeaders=host, Signature=00",
                "Basic abc",
            ] {
                let req = http::Request::builder()
                    .uri("/")
                    .header("authorization", auth)
                    .header("x-amz-date", "20240101T000000Z")
                    .body(())
                    .unwrap();
                let (parts, ()) = req.into_parts();
                assert!(
                    verify_request(&parts, b"", "r", "kms", SystemTime::now(), |_| None).is_err()
                );
            }
        }
    }
}
