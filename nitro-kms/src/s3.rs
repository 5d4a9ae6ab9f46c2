//! A minimal S3 client (GetObject, PutObject, CreateBucket) with SigV4 and TLS inside the
//! caller, over any [`Connect`](crate::transport::Connect): enough to fetch sealed secrets from inside an enclave through
//! the nitro-net tunnel.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::config::{AwsClient, AwsSettings, ClientBuilder};
use crate::error::{Error, ServiceError};
use crate::http::{Endpoint, Response};
use crate::sigv4::Service;

/// Default largest object [`S3Client::get_object`] reads.
pub const DEFAULT_MAX_S3_OBJECT: usize = 64 * 1024 * 1024;

/// An `s3://bucket/key` location.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct S3Location {
    /// Bucket name.
    pub bucket: String,
    /// Object key.
    pub key: String,
}

impl S3Location {
    /// A location.
    pub fn new(bucket: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            key: key.into(),
        }
    }
}

impl std::str::FromStr for S3Location {
    type Err = Error;

    /// Parses `s3://BUCKET/KEY`: a bucket name of 3–63 of `a-z 0-9 . -` (what requests
    /// check anyway) and a key of 1–1024 bytes (S3's limit) without NUL.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: String| Error::InvalidArgument(why);
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| bad(format!("{s:?} is not s3://BUCKET/KEY")))?;
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .ok_or_else(|| bad(format!("{s:?} is not s3://BUCKET/KEY")))?;
        if !valid_bucket(bucket) {
            return Err(bad(format!("{bucket:?} is not an S3 bucket name")));
        }
        if key.len() > 1024 || key.contains('\0') {
            return Err(bad(format!(
                "{s:?}: the object key must be 1 to 1024 bytes"
            )));
        }
        Ok(Self::new(bucket, key))
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Builds an [`S3Client`]: the setters every AWS client shares are on [`ClientBuilder`], the
/// S3 ones ([`path_style`](ClientBuilder::path_style),
/// [`max_object_size`](ClientBuilder::max_object_size)) below.
pub type S3ClientBuilder = ClientBuilder<S3Settings>;

mod settings {
    /// The S3 settings of an [`S3ClientBuilder`](crate::S3ClientBuilder).
    pub struct S3Settings {
        pub(crate) path_style: Option<bool>,
        pub(crate) max_object: usize,
    }
}
use settings::S3Settings;

impl ClientBuilder<S3Settings> {
    /// Path-style (`host/bucket/key`) or virtual-hosted (`bucket.host/key`) addressing
    /// (default: path-style with an [`endpoint`](ClientBuilder::endpoint), virtual-hosted
    /// without).
    #[must_use]
    pub fn path_style(mut self, path_style: bool) -> Self {
        self.service.path_style = Some(path_style);
        self
    }

    /// Largest object read (default [`DEFAULT_MAX_S3_OBJECT`]).
    #[must_use]
    pub fn max_object_size(mut self, bytes: usize) -> Self {
        self.service.max_object = bytes;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<S3Client, Error> {
        let default_path_style = self.aws.endpoint.is_some();
        let region = &self.aws.region;
        let endpoint = self.aws.endpoint(|| {
            let suffix = if region.starts_with("cn-") {
                "amazonaws.com.cn"
            } else {
                "amazonaws.com"
            };
            format!("https://s3.{region}.{suffix}")
        })?;
        Ok(S3Client {
            endpoint,
            path_style: self.service.path_style.unwrap_or(default_path_style),
            aws: self.aws.into_client()?,
            max_object: self.service.max_object,
        })
    }
}

/// The S3 client.
pub struct S3Client {
    endpoint: Endpoint,
    path_style: bool,
    aws: AwsClient,
    max_object: usize,
}

impl fmt::Debug for S3Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Client")
            .field("region", &self.aws.region)
            .field("endpoint", &self.endpoint.base_url())
            .field("path_style", &self.path_style)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes an object key for the request path (`/` kept).
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn valid_bucket(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl S3Client {
    /// A builder for `region`.
    pub fn builder(region: impl Into<String>) -> S3ClientBuilder {
        ClientBuilder {
            aws: AwsSettings::new(region.into(), Duration::from_secs(60)),
            service: S3Settings {
                path_style: None,
                max_object: DEFAULT_MAX_S3_OBJECT,
            },
        }
    }

    async fn send(
        &self,
        method: http::Method,
        bucket: &str,
        key: Option<&str>,
        body: Bytes,
    ) -> Result<Response, Error> {
        if !valid_bucket(bucket) {
            return Err(Error::InvalidArgument(format!(
                "invalid bucket name {bucket:?}"
            )));
        }
        let key_path = key.map(encode_key).unwrap_or_default();
        let (host, path) = if self.path_style {
            (self.endpoint.authority(), format!("/{bucket}/{key_path}"))
        } else {
            (
                format!("{bucket}.{}", self.endpoint.authority()),
                format!("/{key_path}"),
            )
        };
        let mut endpoint = self.endpoint.clone();
        if !self.path_style {
            endpoint.host = format!("{bucket}.{}", endpoint.host);
        }
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, host);
        let resp = self
            .aws
            .send(&endpoint, req, body, Service::S3, self.max_object)
            .await?;
        if resp.status.is_success() {
            Ok(resp)
        } else {
            Err(Error::Service(parse_s3_error(&resp)))
        }
    }

    /// `GetObject`: the whole object (at most the configured maximum size).
    pub async fn get_object(&self, location: &S3Location) -> Result<Vec<u8>, Error> {
        let resp = self
            .send(
                http::Method::GET,
                &location.bucket,
                Some(&location.key),
                Bytes::new(),
            )
            .await?;
        Ok(resp.body.to_vec())
    }

    /// `PutObject`.
    pub async fn put_object(&self, location: &S3Location, body: Vec<u8>) -> Result<(), Error> {
        self.send(
            http::Method::PUT,
            &location.bucket,
            Some(&location.key),
            Bytes::from(body),
        )
        .await
        .map(|_| ())
    }

    /// `CreateBucket` (in the client's region; `us-east-1` needs no location constraint).
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), Error> {
        let body = if self.aws.region == "us-east-1" {
            Bytes::new()
        } else {
            Bytes::from(format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.aws.region
            ))
        };
        self.send(http::Method::PUT, bucket, None, body)
            .await
            .map(|_| ())
    }
}

/// Reads `<Code>` and `<Message>` from an S3 XML error (without an XML parser: the two
/// elements are flat text).
fn parse_s3_error(resp: &Response) -> ServiceError {
    let text = String::from_utf8_lossy(resp.body.get(..4096).unwrap_or(&resp.body));
    let element = |name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text.get(start..)?.find('<')? + start;
        text.get(start..end).map(str::to_owned)
    };
    let code = element("Code").unwrap_or_else(|| format!("HTTP{}", resp.status.as_u16()));
    let mut e = ServiceError::new(
        resp.status.as_u16(),
        code,
        element("Message").unwrap_or_default(),
    );
    e.request_id = resp
        .headers
        .get("x-amz-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let l: S3Location = "s3://bucket/dir/key.json".parse().unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.key.as_str()),
            ("bucket", "dir/key.json")
        );
        assert_eq!(l.to_string(), "s3://bucket/dir/key.json");
        let long = format!("s3://bucket/{}", "k".repeat(1025));
        for bad in [
            "bucket/key",
            "s3://bucket",
            "s3:///key",
            "s3://bucket/",
            "s3://My_Bucket/key",
            "s3://bucket/a\0b",
            &long,
        ] {
            assert!(bad.parse::<S3Location>().is_err(), "{bad}");
        }
        assert_eq!(encode_key("a b/c+d"), "a%20b/c%2Bd");
        assert!(valid_bucket("my-bucket.1"));
        assert!(!valid_bucket("My_Bucket"));
    }

    #[test]
    fn xml_errors() {
        let resp = Response {
            status: http::StatusCode::NOT_FOUND,
            headers: http::HeaderMap::new(),
            body: Bytes::from_static(
                b"<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>",
            ),
        };
        let e = parse_s3_error(&resp);
        assert_eq!(e.code, "NoSuchKey");
        assert_eq!(e.message, "The specified key does not exist.");
    }
}
