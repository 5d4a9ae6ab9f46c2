//! The TOML schema of a policy file (`[[allow]]` / `[[deny]]` tables).

use std::ops::RangeInclusive;

use serde::Deserialize;

use crate::PolicyError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default)]
    pub(super) allow: Vec<RawRule>,
    #[serde(default)]
    pub(super) deny: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) host: Option<String>,
    pub(super) cidr: Option<String>,
    pub(super) ports: Option<Vec<RawPort>>,
    pub(super) private: Option<bool>,
    #[allow(dead_code)] // Free text for the policy's reader; accepted and ignored.
    pub(super) comment: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawPort {
    Num(i64),
    Range(String),
}

impl RawPort {
    pub(super) fn range(&self) -> Result<RangeInclusive<u16>, PolicyError> {
        let port = |v: i64, s: &str| -> Result<u16, PolicyError> {
            u16::try_from(v)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| PolicyError::InvalidPorts(s.to_owned()))
        };
        match self {
            RawPort::Num(n) => {
                let p = port(*n, &n.to_string())?;
                Ok(p..=p)
            }
            RawPort::Range(s) => {
                let bad = || PolicyError::InvalidPorts(s.clone());
                let (a, b) = s.split_once('-').ok_or_else(bad)?;
                let a = port(a.trim().parse().map_err(|_| bad())?, s)?;
                let b = port(b.trim().parse().map_err(|_| bad())?, s)?;
                if a > b {
                    return Err(bad());
                }
                Ok(a..=b)
            }
        }
    }
}
