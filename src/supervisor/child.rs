//! Starting and stopping one model process: its own process group, a parent-death signal, and
//! SIGTERM → `stop_timeout` → SIGKILL of the whole group.

use super::types::ExitInfo;
use crate::config::{Config, ModelConfig};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Longest path a Unix socket address holds (`sun_path`, less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Where a model spawned as `warden serve-model` also listens for the gateway: a Unix socket
/// beside the control socket, `model-NAME.sock`. `None` for a `command` override (it may not
/// speak it) or when the path would be too long for a socket address.
pub fn model_socket(model: &ModelConfig, config: &Config) -> Option<PathBuf> {
    if model.command.is_some() {
        return None;
    }
    let control = config.resolve(&config.agent.control_socket);
    let path = control.parent()?.join(format!("model-{}.sock", model.name));
    (path.as_os_str().len() <= MAX_SOCKET_PATH).then_some(path)
}

/// The argv for a model: its `command` override, or `warden serve-model NAME ...`.
pub fn model_argv(
    model: &ModelConfig,
    config: &Config,
    warden_exe: &std::path::Path,
) -> Vec<String> {
    if let Some(cmd) = &model.command {
        return cmd.clone();
    }
    let mut argv = vec![
        warden_exe.display().to_string(),
        "serve-model".into(),
        model.name.clone(),
        "--port".into(),
        model.port.to_string(),
    ];
    if let Some(socket) = model_socket(model, config) {
        argv.extend(["--unix-socket".into(), socket.display().to_string()]);
    }
    // serve-model takes either a weight file or the models dir, not both.
    match &model.weights {
        Some(w) => argv.extend(["--weights".into(), config.resolve(w).display().to_string()]),
        None => argv.extend([
            "--models-dir".into(),
            config
                .resolve(&config.agent.models_dir)
                .display()
                .to_string(),
        ]),
    }
    argv.extend(["--device".into(), model.device.as_str().into()]);
    if let Some(t) = model.threads {
        argv.extend(["--threads".into(), t.to_string()]);
    }
    argv.extend([
        "--max-batch".into(),
        model.max_batch.to_string(),
        "--batch-timeout".into(),
        humantime::format_duration(model.batch_timeout).to_string(),
        "--queue-capacity".into(),
        model.queue_capacity.to_string(),
    ]);
    argv
}

/// Spawns `argv` with piped stdout/stderr in a new process group that dies with the agent.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked exits, so call this from a runtime
/// worker thread (they live as long as the agent), never from a `spawn_blocking` thread.
pub fn spawn(argv: &[String], cwd: Option<&PathBuf>) -> std::io::Result<Child> {
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        ));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The agent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.spawn()
}

pub fn exit_info(status: ExitStatus) -> ExitInfo {
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitInfo::Code(c),
        (None, Some(s)) => ExitInfo::Signal(s),
        (None, None) => ExitInfo::Code(-1),
    }
}

/// SIGKILLs every process left in the child's group (grandchildren, or the child itself).
pub fn kill_group(pid: u32) {
    // ESRCH just means the group is already empty.
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// Asks the child to stop, waits up to `timeout`, then kills the group. Returns how it ended.
pub async fn stop(child: &mut Child, timeout: Duration) -> std::io::Result<ExitStatus> {
    let Some(pid) = child.id() else {
        return child.wait().await;
    };
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    // A SIGSTOPped child cannot act on SIGTERM until continued.
    let _ = kill(target, Signal::SIGCONT);
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            kill_group(pid);
            child.wait().await?
        }
    };
    kill_group(pid);
    Ok(status)
}

/// Kills a hung child's group at once and reaps it.
pub async fn kill_now(child: &mut Child) -> std::io::Result<ExitStatus> {
    if let Some(pid) = child.id() {
        kill_group(pid);
    }
    child.wait().await
}
