//! Picking one image: the OCI `index.json` (and nested image indexes, by platform) or the
//! `docker save` `manifest.json`, down to its config and its list of layers.

use serde_json::Value;

use super::digest::Verifier;
use super::store::Store;
use super::{ImageConfig, ImageOptions};
use crate::error::{Error, Result};
use crate::format::Arch;

pub(super) struct Layer {
    pub(super) path: String,
    /// Digest of the stored (possibly compressed) blob, and its size.
    pub(super) blob: Option<(Verifier, u64)>,
}

pub(super) struct Picked {
    pub(super) config: ImageConfig,
    pub(super) layers: Vec<Layer>,
    pub(super) name: String,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

fn is_index(desc_type: Option<&str>, doc: &Value) -> bool {
    match desc_type {
        Some(t) if INDEX_TYPES.contains(&t) => true,
        Some(t) if t.ends_with("manifest.v1+json") || t.ends_with("manifest.v2+json") => false,
        _ => doc.get("manifests").is_some() && doc.get("layers").is_none(),
    }
}

fn ref_matches(wanted: &str, names: &[&str]) -> bool {
    names.iter().any(|n| {
        *n == wanted
            || n.strip_prefix("docker.io/library/") == Some(wanted)
            || n.strip_prefix("docker.io/") == Some(wanted)
            || n.rsplit_once(':').map(|(_, tag)| tag) == Some(wanted) && !wanted.contains(':')
    })
}

fn desc_names(d: &Value) -> Vec<&str> {
    let a = d.get("annotations");
    [
        "io.containerd.image.name",
        "org.opencontainers.image.ref.name",
    ]
    .iter()
    .filter_map(|k| a.and_then(|a| a.get(*k)).and_then(Value::as_str))
    .collect()
}

fn platform_arch(d: &Value) -> Option<(&str, &str)> {
    let p = d.get("platform")?;
    Some((
        p.get("architecture")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        p.get("os").and_then(Value::as_str).unwrap_or_default(),
    ))
}

pub(super) fn pick_oci(store: &Store, opts: &ImageOptions) -> Result<Picked> {
    let index = store.read_json("index.json", None)?;
    let target = opts.arch.or_else(Arch::host).unwrap_or(Arch::X86_64);
    let mut desc: Value = {
        let manifests = index
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Image("index.json has no manifests".into()))?;
        let mut cands: Vec<&Value> = manifests.iter().collect();
        if let Some(r) = &opts.reference {
            cands.retain(|d| ref_matches(r, &desc_names(d)));
            if cands.is_empty() {
                return Err(Error::ImageNotFound {
                    reference: Some(r.clone()),
                    arch: None,
                });
            }
        }
        if cands.len() > 1 {
            cands.retain(|d| match platform_arch(d) {
                Some((a, os)) => a == target.oci_name() && (os == "linux" || os.is_empty()),
                None => true,
            });
        }
        match cands.as_slice() {
            [one] => (*one).clone(),
            [] => {
                return Err(Error::ImageNotFound {
                    reference: opts.reference.clone(),
                    arch: Some(target),
                });
            }
            many => {
                let candidates: Vec<String> = many
                    .iter()
                    .flat_map(|d| desc_names(d))
                    .map(str::to_owned)
                    .collect();
                return Err(Error::AmbiguousImage { candidates });
            }
        }
    };
    let name = desc_names(&desc)
        .first()
        .map(|s| (*s).to_owned())
        .unwrap_or_default();
    for _ in 0..8 {
        let digest = desc
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Image("descriptor without digest".into()))?;
        let v = Verifier::new(digest)?;
        let doc = store.read_json(&v.blob_path(), Some(digest))?;
        if is_index(desc.get("mediaType").and_then(Value::as_str), &doc) {
            let manifests = doc
                .get("manifests")
                .and_then(Value::as_array)
                .ok_or_else(|| Error::Image("image index without manifests".into()))?;
            let found = manifests.iter().find(|d| {
                platform_arch(d).is_some_and(|(a, os)| {
                    a == target.oci_name() && (os == "linux" || os.is_empty())
                })
            });
            desc = found
                .ok_or_else(|| Error::ImageNotFound {
                    reference: opts.reference.clone(),
                    arch: Some(target),
                })?
                .clone();
            continue;
        }
        let cdesc = doc
            .get("config")
            .ok_or_else(|| Error::Image("manifest without config".into()))?;
        let cdigest = cdesc
            .get("digest")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Image("config descriptor without digest".into()))?;
        let config = ImageConfig::from_json(
            store.read_json(&Verifier::new(cdigest)?.blob_path(), Some(cdigest))?,
        )?;
        let mut layers = Vec::new();
        for l in doc
            .get("layers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let d = l
                .get("digest")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Image("layer descriptor without digest".into()))?;
            let size = l.get("size").and_then(Value::as_u64).unwrap_or(u64::MAX);
            let v = Verifier::new(d)?;
            layers.push(Layer {
                path: v.blob_path(),
                blob: Some((v, size)),
            });
        }
        return Ok(Picked {
            config,
            layers,
            name,
        });
    }
    Err(Error::Image("image indexes nested too deeply".into()))
}

pub(super) fn pick_docker(store: &Store, opts: &ImageOptions) -> Result<Picked> {
    let manifest = store.read_json("manifest.json", None)?;
    let items = manifest
        .as_array()
        .ok_or_else(|| Error::Image("manifest.json is not an array".into()))?;
    let tags = |m: &Value| -> Vec<String> {
        m.get("RepoTags")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut cands: Vec<&Value> = items.iter().collect();
    if let Some(r) = &opts.reference {
        cands.retain(|m| {
            let t = tags(m);
            ref_matches(r, &t.iter().map(String::as_str).collect::<Vec<_>>())
        });
    }
    let m = match cands.as_slice() {
        [one] => *one,
        [] => {
            return Err(Error::ImageNotFound {
                reference: opts.reference.clone(),
                arch: None,
            });
        }
        many => {
            let candidates: Vec<String> = many.iter().flat_map(|m| tags(m)).collect();
            return Err(Error::AmbiguousImage { candidates });
        }
    };
    let cpath = m
        .get("Config")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Image("manifest.json entry without Config".into()))?;
    let config = ImageConfig::from_json(store.read_json(cpath, None)?)?;
    let layers = m
        .get("Layers")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Image("manifest.json entry without Layers".into()))?
        .iter()
        .map(|l| {
            l.as_str()
                .map(|p| Layer {
                    path: p.to_owned(),
                    blob: None,
                })
                .ok_or_else(|| Error::Image("non-string layer path".into()))
        })
        .collect::<Result<Vec<_>>>()?;
    let name = tags(m).first().cloned().unwrap_or_default();
    Ok(Picked {
        config,
        layers,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert!(ref_matches("app:1", &["docker.io/library/app:1"]));
        assert!(ref_matches("1", &["app:1"]));
        assert!(!ref_matches("app:2", &["app:1"]));
    }
}
