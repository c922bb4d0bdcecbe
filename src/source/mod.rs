//! Sources produce the byte streams a snapshot stores.
//!
//! This module has the simplest kinds: standard input and an arbitrary
//! command whose stdout is the stream (e.g. `tar -C /data -c .`).

use std::io::Read;
use std::process::{Child, Command, Stdio};

use crate::error::{Error, Result};
use crate::pipeline::BackupSession;

/// Run `sh -c CMD`, back up its stdout as one stream, and fail (without a
/// visible snapshot — the caller does not commit) if it exits non-zero.
pub async fn backup_command(session: &mut BackupSession, job: &str, command: &str) -> Result<serde_json::Value> {
    let mut child = spawn(command, Stdio::null(), Stdio::piped()).map_err(|e| Error::Source {
        source_name: job.to_string(),
        detail: format!("cannot start the command: {e}"),
    })?;
    let stdout = child.stdout.take().ok_or_else(|| Error::Other("no stdout pipe".into()))?;
    let result = session.add_stream("stdout", stdout).await.map(|s| s.size);
    let status = wait(child, result.is_err()).await?;
    let size = result?;
    if !status.success() {
        return Err(Error::Source {
            source_name: job.to_string(),
            detail: format!("the command exited with {}", describe(status)),
        });
    }
    Ok(serde_json::json!({ "command_exit": 0, "bytes": size }))
}

/// Restore into the stdin of `sh -c CMD`; fails if the command fails.
pub fn spawn_restore_command(command: &str) -> Result<Child> {
    spawn(command, Stdio::piped(), Stdio::inherit())
        .map_err(|e| Error::Other(format!("cannot start restore command: {e}")))
}

pub async fn finish_restore_command(child: Child) -> Result<()> {
    let status = wait(child, false).await?;
    if !status.success() {
        return Err(Error::Other(format!("the restore command exited with {}", describe(status))));
    }
    Ok(())
}

fn spawn(command: &str, stdin: Stdio, stdout: Stdio) -> std::io::Result<Child> {
    Command::new("sh").arg("-c").arg(command).stdin(stdin).stdout(stdout).stderr(Stdio::inherit()).spawn()
}

async fn wait(mut child: Child, kill_first: bool) -> Result<std::process::ExitStatus> {
    tokio::task::spawn_blocking(move || {
        if kill_first {
            let _ = child.kill();
        }
        child.wait()
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))?
    .map_err(|e| Error::Other(format!("waiting for the command: {e}")))
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "an unknown status".into(),
    }
}

/// Standard input as a `Read + Send + 'static` stream.
pub fn stdin() -> impl Read + Send + 'static {
    std::io::stdin()
}
