//! The application: started with its environment, its output forwarded, stopped in order.

use std::future::Future;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nitro_init::LogStream;
use nitro_net::Addr;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use zeroize::Zeroizing;

use crate::plan::AppPlan;
use crate::{Error, Result, logs, say};

/// How long the supervisor waits, after the application exited, for its output streams to
/// end (a background process may keep them open).
pub const OUTPUT_GRACE: Duration = Duration::from_secs(5);

/// The exit status as a shell reports it: the code, or `128 + signal` when killed.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(255),
        (None, Some(sig)) => 128u8.saturating_add(u8::try_from(sig).unwrap_or(127)),
        (None, None) => 255,
    }
}

/// Runs the application of `plan` with the supervisor's environment, `plan.env` and
/// `secret_env`, in its own process group; forwards its stdout and stderr to `log_sink`
/// (and the console when `console`); when `stop` completes first, sends SIGTERM to its process
/// group and SIGKILL after `plan.stop_timeout`. Returns its exit status.
pub async fn run(
    plan: &AppPlan,
    secret_env: &[(String, Zeroizing<String>)],
    log_sink: Option<Addr>,
    write_cap: Option<usize>,
    console: bool,
    stop: impl Future<Output = ()>,
) -> Result<u8> {
    let argv0 = plan
        .argv
        .first()
        .ok_or_else(|| Error::plan("app.entrypoint", "empty command"))?;
    let mut cmd = tokio::process::Command::new(argv0);
    cmd.args(&plan.argv[1..])
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .envs(secret_env.iter().map(|(k, v)| (k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &plan.workdir {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(|e| {
        Error::io(
            format!("app.entrypoint: starting {argv0:?} (from the manifest or the image)"),
            e,
        )
    })?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    say(format_args!(
        "started {argv0} (pid {})",
        pid.map_or("?".into(), |p| p.to_string())
    ));
    let mut forwarders = Vec::new();
    if let Some(out) = child.stdout.take() {
        let echo = console.then(tokio::io::stdout);
        forwarders.push(tokio::spawn(logs::forward(
            out,
            LogStream::Stdout,
            log_sink.clone(),
            write_cap,
            echo,
        )));
    }
    if let Some(err) = child.stderr.take() {
        let echo = console.then(tokio::io::stderr);
        forwarders.push(tokio::spawn(logs::forward(
            err,
            LogStream::Stderr,
            log_sink,
            write_cap,
            echo,
        )));
    }
    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| Error::io("waiting for the application", e))?,
        () = stop => {
            say(format_args!(
                "stopping the application: SIGTERM, SIGKILL after {:?}",
                plan.stop_timeout
            ));
            let group = pid.map(Pid::from_raw);
            if let Some(g) = group {
                let _ = killpg(g, Signal::SIGTERM);
            }
            match tokio::time::timeout(plan.stop_timeout, child.wait()).await {
                Ok(s) => s.map_err(|e| Error::io("waiting for the application", e))?,
                Err(_) => {
                    say(format_args!("the application did not stop: SIGKILL"));
                    if let Some(g) = group {
                        let _ = killpg(g, Signal::SIGKILL);
                    }
                    let _ = child.start_kill();
                    child
                        .wait()
                        .await
                        .map_err(|e| Error::io("waiting for the application", e))?
                }
            }
        }
    };
    let code = exit_code(status);
    // Its output until the end of file (bounded: a background process may keep it open).
    for f in forwarders {
        let abort = f.abort_handle();
        if tokio::time::timeout(OUTPUT_GRACE, f).await.is_err() {
            say(format_args!(
                "the application's output stayed open {OUTPUT_GRACE:?} after it exited"
            ));
            abort.abort();
        }
    }
    say(format_args!("the application exited with status {code}"));
    Ok(code)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }
}
