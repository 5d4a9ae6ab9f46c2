//! Minimal, strict PEM block extraction (RFC 7468 textual encoding).

use base64::Engine as _;

/// Maximum size of a PEM input this crate decodes (certificates and keys are a few KiB).
const MAX_PEM: usize = 1 << 20;

/// Returns the decoded contents of the first block whose label is one of `labels`.
pub(crate) fn first_block(input: &[u8], labels: &[&str]) -> Result<Vec<u8>, String> {
    if input.len() > MAX_PEM {
        return Err(format!("PEM input of {} bytes is too large", input.len()));
    }
    let text = std::str::from_utf8(input).map_err(|_| "PEM input is not UTF-8 text".to_owned())?;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut closed = false;
        for l in lines.by_ref() {
            let l = l.trim();
            if l == end {
                closed = true;
                break;
            }
            if l.starts_with("-----") {
                return Err(format!("PEM block {label}: unexpected {l:?}"));
            }
            // RFC 1421 headers (e.g. Proc-Type) are not part of the base64 body.
            if l.contains(':') {
                continue;
            }
            body.push_str(l);
        }
        if !closed {
            return Err(format!("PEM block {label} has no END line"));
        }
        if !labels.contains(&label) {
            continue;
        }
        return base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|e| format!("PEM block {label}: bad base64: {e}"));
    }
    Err(format!("no PEM block labelled {}", labels.join(" or ")))
}

/// Encodes DER bytes as a PEM block with 64-column lines.
#[cfg(test)]
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let pem = encode(
            "CERTIFICATE",
            b"hello world, this is not DER but it is bytes",
        );
        let text = format!("junk\n{}", encode("PRIVATE KEY", b"k")) + &pem;
        assert_eq!(
            first_block(text.as_bytes(), &["CERTIFICATE"]).as_deref(),
            Ok(&b"hello world, this is not DER but it is bytes"[..])
        );
        assert!(first_block(b"-----BEGIN CERTIFICATE-----\nAAAA\n", &["CERTIFICATE"]).is_err());
        assert!(
            first_block(
                b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
                &["CERTIFICATE"]
            )
            .is_err()
        );
        assert!(first_block(&[0xff, 0xfe], &["CERTIFICATE"]).is_err());
        assert!(first_block(b"", &["CERTIFICATE"]).is_err());
    }
}
