//! Sources produce the byte streams a snapshot stores.
//!
//! This module has the simplest kinds — standard input and an arbitrary
//! command whose stdout is the stream (e.g. `tar -C /data -c .`) — and the
//! process plumbing the database sources share.

pub mod etcd;
pub mod kubernetes;
pub mod mapped;
pub mod postgres;
pub mod redis;
pub mod wal;

use std::io::Read;
use std::process::{Child, Command, Stdio};

use crate::chunker::Layout;
use crate::error::{Error, Result};
use crate::pipeline::BackupSession;

/// Run `sh -c CMD`, back up its stdout as one stream, and fail (without a
/// visible snapshot — the caller does not commit) if it exits non-zero.
pub async fn backup_command(session: &mut BackupSession, job: &str, command: &str) -> Result<serde_json::Value> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command);
    let (size, _stderr) = stream_process(session, "stdout", cmd, job, Layout::Cdc).await?;
    Ok(serde_json::json!({ "command_exit": 0, "bytes": size }))
}

/// Spawn `cmd`, back up its stdout as stream `stream`, capture its stderr,
/// and fail if it exits non-zero (the error quotes the end of its stderr).
/// Returns the stream size and the captured stderr.
pub async fn stream_process(
    session: &mut BackupSession,
    stream: &str,
    mut cmd: Command,
    source_name: &str,
    layout: Layout,
) -> Result<(u64, String)> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let program = cmd.get_program().to_string_lossy().to_string();
    let mut child = cmd.spawn().map_err(|e| Error::Source {
        source_name: source_name.to_string(),
        detail: format!("cannot start {program}: {e}"),
    })?;
    let stdout = child.stdout.take().ok_or_else(|| Error::Other("no stdout pipe".into()))?;
    widen_pipe(&stdout);
    let stderr = capture(child.stderr.take());
    let result = session.add_stream_with_layout(stream, stdout, layout).await.map(|s| s.size);
    let status = wait(child, result.is_err()).await?;
    let err_text = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::Source {
            source_name: source_name.to_string(),
            detail: format!("{program} exited with {}{}", describe(status), tail(&err_text)),
        });
    }
    Ok((result?, err_text))
}

/// Give a data pipe to or from a child 1 MiB of buffer instead of Linux's
/// 64 KiB: gigabytes go through it, and each time a small pipe fills, the
/// writer sleeps until the reader drains it (tar reads 10 KiB at a time).
/// Best effort: an unprivileged process may be capped lower, which is fine.
pub fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    #[cfg(target_os = "linux")]
    // SAFETY: F_SETPIPE_SZ on a descriptor we own; failure only leaves the default size.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
}

/// Collect a child's stderr on a thread (bounded to the last 64 KiB).
pub fn capture<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let Some(mut r) = r else { return String::new() };
        let mut keep: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            keep.extend_from_slice(&buf[..n]);
            if keep.len() > 65536 {
                keep.drain(..keep.len() - 65536);
            }
        }
        String::from_utf8_lossy(&keep).to_string()
    })
}

/// The last lines of a tool's stderr, formatted to follow a message.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let start = lines.len().saturating_sub(6);
    format!(": {}", lines[start..].join(" | "))
}

/// Restore into the stdin of `sh -c CMD`; fails if the command fails.
pub fn spawn_restore_command(command: &str) -> Result<Child> {
    let child = spawn(command, Stdio::piped(), Stdio::inherit())
        .map_err(|e| Error::Other(format!("cannot start restore command: {e}")))?;
    if let Some(stdin) = &child.stdin {
        widen_pipe(stdin);
    }
    Ok(child)
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

pub async fn wait(mut child: Child, kill_first: bool) -> Result<std::process::ExitStatus> {
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

pub fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "an unknown status".into(),
    }
}

pub use self::mapped::Mapped;

/// Standard input as a `Read + Send + 'static` stream.
pub fn stdin() -> impl Read + Send + 'static {
    std::io::stdin()
}
