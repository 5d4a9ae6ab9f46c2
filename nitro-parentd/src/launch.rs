//! Launching enclaves: `nitro-cli` on an EC2 parent. Argument building and output parsing are
//! pure functions; [`NitroCli`] runs the program.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::Cid;
use crate::error::Error;
use crate::plan::EnclavePlan;

/// What `nitro-cli run-enclave` (and `describe-enclaves`) says about an enclave.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct EnclaveInfo {
    /// `EnclaveName`.
    #[serde(default)]
    pub enclave_name: Option<String>,
    /// `EnclaveID`.
    #[serde(rename = "EnclaveID")]
    pub enclave_id: String,
    /// `ProcessID`.
    #[serde(rename = "ProcessID", default)]
    pub process_id: Option<u64>,
    /// `EnclaveCID`.
    #[serde(rename = "EnclaveCID")]
    pub enclave_cid: u64,
    /// `NumberOfCPUs`.
    #[serde(rename = "NumberOfCPUs")]
    pub number_of_cpus: u32,
    /// `CPUIDs`.
    #[serde(rename = "CPUIDs", default)]
    pub cpu_ids: Vec<u32>,
    /// `MemoryMiB`.
    #[serde(rename = "MemoryMiB")]
    pub memory_mib: u64,
    /// `State` (`describe-enclaves` only: `RUNNING`, `TERMINATING`).
    #[serde(default)]
    pub state: Option<String>,
    /// `Flags` (`describe-enclaves` only: `NONE`, `DEBUG_MODE`).
    #[serde(default)]
    pub flags: Option<String>,
}

/// What `nitro-cli terminate-enclave` says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Terminated {
    /// `EnclaveName`.
    #[serde(rename = "EnclaveName", default)]
    pub enclave_name: Option<String>,
    /// `EnclaveID`.
    #[serde(rename = "EnclaveID")]
    pub enclave_id: String,
    /// `Terminated`.
    #[serde(rename = "Terminated")]
    pub terminated: bool,
}

/// The `nitro-cli run-enclave` arguments for an enclave of the plan: resources from its
/// manifest, the CID and debug mode from the configuration.
///
/// For an enclave `web` with 2 CPUs, 1024 MiB and CID 16:
/// `run-enclave --enclave-name web --eif-path /srv/web.eif --cpu-count 2 --memory 1024
/// --enclave-cid 16` (`--debug-mode` added in debug mode; no `--enclave-cid` for `"auto"`).
pub fn run_enclave_args(e: &EnclavePlan) -> Vec<String> {
    run_args(
        &e.name,
        &e.eif,
        e.manifest.resources.cpus,
        e.manifest.resources.memory_mib,
        e.cid,
        e.debug_mode,
    )
}

fn run_args(name: &str, eif: &Path, cpus: u32, memory: u32, cid: Cid, debug: bool) -> Vec<String> {
    let mut v = vec![
        "run-enclave".to_owned(),
        "--enclave-name".to_owned(),
        name.to_owned(),
        "--eif-path".to_owned(),
        eif.display().to_string(),
        "--cpu-count".to_owned(),
        cpus.to_string(),
        "--memory".to_owned(),
        memory.to_string(),
    ];
    if let Cid::Fixed(c) = cid {
        v.push("--enclave-cid".to_owned());
        v.push(c.to_string());
    }
    if debug {
        v.push("--debug-mode".to_owned());
    }
    v
}

/// Parses the JSON `nitro-cli run-enclave` prints on success.
pub fn parse_run_output(stdout: &str) -> Result<EnclaveInfo, Error> {
    let info: EnclaveInfo = parse_json("run-enclave", stdout)?;
    check_cid("run-enclave", &info)?;
    Ok(info)
}

/// Parses the JSON array `nitro-cli describe-enclaves` prints.
pub fn parse_describe_output(stdout: &str) -> Result<Vec<EnclaveInfo>, Error> {
    let v: Vec<EnclaveInfo> = parse_json("describe-enclaves", stdout)?;
    for i in &v {
        check_cid("describe-enclaves", i)?;
    }
    Ok(v)
}

/// Parses the JSON `nitro-cli terminate-enclave` prints.
pub fn parse_terminate_output(stdout: &str) -> Result<Terminated, Error> {
    parse_json("terminate-enclave", stdout)
}

fn check_cid(command: &'static str, info: &EnclaveInfo) -> Result<(), Error> {
    if !(4..u64::from(u32::MAX)).contains(&info.enclave_cid) {
        return Err(Error::NitroCli {
            command,
            reason: format!("EnclaveCID {} is not an enclave CID", info.enclave_cid),
        });
    }
    Ok(())
}

fn parse_json<T: serde::de::DeserializeOwned>(
    command: &'static str,
    stdout: &str,
) -> Result<T, Error> {
    // nitro-cli may print progress lines before the JSON document, which starts a line.
    let mut start = None;
    let mut offset = 0;
    for line in stdout.split_inclusive('\n') {
        if line.trim_start().starts_with(['{', '[']) {
            start = Some(offset);
            break;
        }
        offset += line.len();
    }
    let start = start.ok_or_else(|| Error::NitroCli {
        command,
        reason: "no JSON in its output".into(),
    })?;
    serde_json::from_str(&stdout[start..]).map_err(|e| Error::NitroCli {
        command,
        reason: format!("unexpected output: {e}"),
    })
}

/// `nitro-cli` on the parent instance.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NitroCli {
    /// The program (default `nitro-cli` from `PATH`).
    pub program: PathBuf,
}

impl Default for NitroCli {
    fn default() -> Self {
        NitroCli {
            program: "nitro-cli".into(),
        }
    }
}

impl NitroCli {
    async fn run(&self, command: &'static str, args: &[String]) -> Result<String, Error> {
        let out = tokio::process::Command::new(&self.program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| Error::io(format!("running {} {command}", self.program.display()), e))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(Error::NitroCli {
                command,
                reason: format!("{}: {}", out.status, err.trim()),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `nitro-cli run-enclave ...` for an enclave of the plan.
    pub async fn run_enclave(&self, e: &EnclavePlan) -> Result<EnclaveInfo, Error> {
        parse_run_output(&self.run("run-enclave", &run_enclave_args(e)).await?)
    }

    /// `nitro-cli describe-enclaves`.
    pub async fn describe(&self) -> Result<Vec<EnclaveInfo>, Error> {
        parse_describe_output(
            &self
                .run("describe-enclaves", &["describe-enclaves".into()])
                .await?,
        )
    }

    /// `nitro-cli terminate-enclave --enclave-id ID`.
    pub async fn terminate(&self, enclave_id: &str) -> Result<Terminated, Error> {
        let args = [
            "terminate-enclave".into(),
            "--enclave-id".into(),
            enclave_id.into(),
        ];
        parse_terminate_output(&self.run("terminate-enclave", &args).await?)
    }

    /// `nitro-cli console --enclave-id ID` (debug-mode enclaves), attached to this process's
    /// standard output until the enclave stops.
    pub async fn console(&self, enclave_id: &str) -> Result<std::process::ExitStatus, Error> {
        tokio::process::Command::new(&self.program)
            .args(["console", "--enclave-id", enclave_id])
            .status()
            .await
            .map_err(|e| Error::io(format!("running {} console", self.program.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The documented examples of the AWS Nitro Enclaves user guide.
    const RUN: &str = r#"Start allocating memory...
Started enclave with enclave-cid: 16, memory: 512 MiB, cpu-ids: [1, 3]
{
  "EnclaveName": "my-enclave",
  "EnclaveID": "i-05f6ed443aEXAMPLE-enc173dfe3eEXAMPLE",
  "ProcessID": 7077,
  "EnclaveCID": 16,
  "NumberOfCPUs": 2,
  "CPUIDs": [1, 3],
  "MemoryMiB": 512
}"#;
    const DESCRIBE: &str = r#"[ { "EnclaveName": "my_enclave", "EnclaveID": "i-abc12345def67890a-enc9876abcd543210ef12", "ProcessID": 12345, "EnclaveCID": 10, "NumberOfCPUs": 2, "CPUIDs": [ 1, 3 ], "MemoryMiB": 1600, "State": "RUNNING", "Flags": "NONE" } ]"#;
    const TERMINATE: &str = r#"{ "EnclaveName": "my_enclave", "EnclaveID": "i-05f6ed443aEXAMPLE-enc173dfe3eEXAMPLE", "Terminated": true }"#;

    #[test]
    fn parses_documented_outputs() {
        let r = parse_run_output(RUN).unwrap();
        assert_eq!(r.enclave_id, "i-05f6ed443aEXAMPLE-enc173dfe3eEXAMPLE");
        assert_eq!(
            (r.enclave_cid, r.number_of_cpus, r.memory_mib),
            (16, 2, 512)
        );
        assert_eq!(r.cpu_ids, [1, 3]);
        let d = parse_describe_output(DESCRIBE).unwrap();
        assert_eq!(d[0].state.as_deref(), Some("RUNNING"));
        assert_eq!(d[0].enclave_cid, 10);
        let t = parse_terminate_output(TERMINATE).unwrap();
        assert!(t.terminated);
    }

    #[test]
    fn refuses_bad_outputs() {
        for bad in [
            "",
            "error",
            "{}",
            r#"{"EnclaveID":"x","EnclaveCID":3,"NumberOfCPUs":2,"MemoryMiB":1}"#,
            "[1,2",
        ] {
            let e = parse_run_output(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::NitroCli {
                        command: "run-enclave",
                        ..
                    }
                ),
                "{e}"
            );
        }
        assert!(parse_describe_output(r#"[{"EnclaveID":"x"}]"#).is_err());
    }

    #[test]
    fn builds_arguments() {
        let a = run_args(
            "web",
            Path::new("/srv/web.eif"),
            2,
            1024,
            Cid::Fixed(16),
            true,
        );
        assert_eq!(
            a.join(" "),
            "run-enclave --enclave-name web --eif-path /srv/web.eif --cpu-count 2 --memory 1024 --enclave-cid 16 --debug-mode"
        );
        let a = run_args("web", Path::new("/srv/web.eif"), 4, 2048, Cid::Auto, false);
        assert_eq!(
            a.join(" "),
            "run-enclave --enclave-name web --eif-path /srv/web.eif --cpu-count 4 --memory 2048"
        );
    }
}
