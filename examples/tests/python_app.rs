//! The Python example (`examples/python-app`): its manifest is valid, and every environment
//! variable the program reads is one the manifest gives it (from `[app]`, a derived service
//! variable, or a `[[secret]]`), so the program runs unmodified in the enclave.

use std::collections::BTreeSet;
use std::path::Path;

use nitro_manifest::{Manifest, SecretTarget};

fn app_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/python-app"))
}

/// The names in `os.environ["NAME"]` (required) and `os.environ.get("NAME", ...)` (optional),
/// with either quote: (name, required).
fn variables_read(source: &str) -> BTreeSet<(String, bool)> {
    let mut names = BTreeSet::new();
    for (pattern, required) in [
        ("os.environ[\"", true),
        ("os.environ['", true),
        ("os.environ.get(\"", false),
        ("os.environ.get('", false),
    ] {
        let quote = if pattern.ends_with('"') { '"' } else { '\'' };
        for (at, _) in source.match_indices(pattern) {
            let rest = &source[at + pattern.len()..];
            if let Some(end) = rest.find(quote) {
                names.insert((rest[..end].to_owned(), required));
            }
        }
    }
    names
}

#[test]
fn the_manifest_gives_the_program_every_variable_it_reads() {
    let manifest = Manifest::load(app_dir().join("enclave.toml")).expect("manifest");
    let source = std::fs::read_to_string(app_dir().join("main.py")).expect("main.py");

    let mut given: BTreeSet<String> = manifest
        .app_environment()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for secret in &manifest.secrets {
        if let SecretTarget::Env(name) = secret.target() {
            given.insert(name.to_owned());
        }
    }
    let read = variables_read(&source);
    assert!(read.len() >= 8, "parsed too few variables: {read:?}");
    let missing: Vec<_> = read
        .iter()
        .filter(|(name, required)| *required && !given.contains(name))
        .collect();
    assert!(missing.is_empty(), "not given by the manifest: {missing:?}");

    // The program's file secret and data directory are where the manifest puts them.
    let env: std::collections::BTreeMap<_, _> = manifest.app_environment().into_iter().collect();
    let file_secrets: Vec<_> = manifest
        .secrets
        .iter()
        .filter_map(|s| match s.target() {
            SecretTarget::File(f) => Some(f.to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(file_secrets, vec![env["SECRET_FILE"].clone()]);
    assert!(manifest.volumes.iter().any(|v| v.mount == env["DATA_DIR"]));
    assert!(
        manifest
            .ingress
            .iter()
            .any(|i| i.port.to_string() == env["PORT"])
    );
}

#[test]
fn the_program_compiles() {
    let Some(python) = nitro_test_support::tool("python3") else {
        return;
    };
    let out = std::process::Command::new(python)
        .args(["-c", "import ast,sys; ast.parse(open(sys.argv[1]).read())"])
        .arg(app_dir().join("main.py"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
