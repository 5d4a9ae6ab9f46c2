//! The metadata section (type 5): JSON identity information, not measured.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The value nitro-cli uses when a field is not known.
pub(crate) const UNKNOWN: &str = "Unknown";

/// The metadata section, field for field as nitro-cli writes it (`EifIdentityInfo`).
///
/// It is not part of any PCR: it describes the image but proves nothing about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metadata {
    /// Image name.
    #[serde(rename = "ImageName")]
    pub image_name: String,
    /// Image version.
    #[serde(rename = "ImageVersion")]
    pub image_version: String,
    /// How the image was built.
    #[serde(rename = "BuildMetadata")]
    pub build: BuildInfo,
    /// `docker inspect` output in nitro-cli; the image config here when built from a container
    /// image; `null` otherwise.
    #[serde(rename = "DockerInfo")]
    pub docker_info: serde_json::Value,
    /// Free-form JSON supplied by the user (`null` by default).
    #[serde(rename = "CustomMetadata")]
    pub custom: serde_json::Value,
}

/// The `BuildMetadata` object of the metadata section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BuildInfo {
    /// RFC 3339 build time.
    #[serde(rename = "BuildTime")]
    pub build_time: String,
    /// Tool that built the image.
    #[serde(rename = "BuildTool")]
    pub build_tool: String,
    /// Version of that tool.
    #[serde(rename = "BuildToolVersion")]
    pub build_tool_version: String,
    /// Operating system of the kernel (`Linux`), or `Unknown`.
    #[serde(rename = "OperatingSystem")]
    pub operating_system: String,
    /// Kernel release, or `Unknown`.
    #[serde(rename = "KernelVersion")]
    pub kernel_version: String,
}

impl Metadata {
    /// Metadata with the given name and version, this crate as build tool, the build time from
    /// [`build_time_from_env`] and unknown kernel information.
    pub fn new(image_name: impl Into<String>, image_version: impl Into<String>) -> Self {
        Metadata {
            image_name: image_name.into(),
            image_version: image_version.into(),
            build: BuildInfo {
                build_time: format_build_time(build_time_from_env()),
                build_tool: env!("CARGO_PKG_NAME").to_owned(),
                build_tool_version: env!("CARGO_PKG_VERSION").to_owned(),
                operating_system: UNKNOWN.to_owned(),
                kernel_version: UNKNOWN.to_owned(),
            },
            docker_info: serde_json::Value::Null,
            custom: serde_json::Value::Null,
        }
    }

    /// The JSON bytes of the section (compact, fields in nitro-cli's order).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings and JSON values cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a metadata section.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| crate::error::FormatError::Metadata(e.to_string()).into())
    }
}

/// The build time used when none is given: `SOURCE_DATE_EPOCH` (seconds since the Unix epoch)
/// if set and valid, else the epoch itself. Never the wall clock, so that builds reproduce.
pub fn build_time_from_env() -> SystemTime {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or(UNIX_EPOCH)
}

/// Formats a time as nitro-cli does (`chrono::DateTime<Utc>::to_rfc3339`), to the second:
/// `1970-01-01T00:00:00+00:00`.
pub fn format_build_time(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(0),
        Err(_) => 0,
    };
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+00:00",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => "1970-01-01T00:00:00+00:00".to_owned(),
    }
}

pub(crate) fn check_custom(v: &serde_json::Value) -> Result<()> {
    if v.is_null() || v.is_object() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(
            "custom metadata must be a JSON object (or null)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_and_time() {
        let mut m = Metadata::new("app", "1.0");
        m.build.build_time = format_build_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let s = String::from_utf8(m.to_json()).unwrap_or_default();
        assert!(s.starts_with(r#"{"ImageName":"app","ImageVersion":"1.0","BuildMetadata":{"BuildTime":"2023-11-14T22:13:20+00:00","BuildTool":"nitro-eif""#), "{s}");
        assert!(
            s.ends_with(r#""DockerInfo":null,"CustomMetadata":null}"#),
            "{s}"
        );
        assert_eq!(Metadata::from_json(s.as_bytes()).ok(), Some(m));
        assert_eq!(format_build_time(UNIX_EPOCH), "1970-01-01T00:00:00+00:00");
    }
}
