//! Telling the application after a rotation: send a signal to a process (found by pid file
//! or by name in a shared process namespace), run a command (an argv, never a shell), or
//! touch a file. Failures are logged and never stop the sidecar. The config file's
//! `notify:` entries are parsed and checked into [`Notify`] by the spec parser.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::names::read_bounded;

/// Longest a notify command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest pid file read, in bytes.
const MAX_PID_FILE_BYTES: usize = 64;
/// Environment variable a notify command receives: the rotated roles, comma-separated.
pub const ENV_ROTATED_ROLES: &str = "LANYARD_ROTATED_ROLES";

/// Signals the sidecar may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalName {
    /// SIGHUP
    Hup,
    /// SIGUSR1
    Usr1,
    /// SIGUSR2
    Usr2,
    /// SIGTERM
    Term,
    /// SIGINT
    Int,
    /// SIGQUIT
    Quit,
    /// SIGWINCH
    Winch,
}

impl SignalName {
    /// Parses `HUP`, `SIGHUP`, `hup`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let up = s.trim().to_ascii_uppercase();
        let name = up.strip_prefix("SIG").unwrap_or(&up);
        Ok(match name {
            "HUP" => Self::Hup,
            "USR1" => Self::Usr1,
            "USR2" => Self::Usr2,
            "TERM" => Self::Term,
            "INT" => Self::Int,
            "QUIT" => Self::Quit,
            "WINCH" => Self::Winch,
            _ => {
                return Err(format!(
                    "signal {s:?} is not supported; use HUP, USR1, USR2, TERM, INT, QUIT or WINCH"
                ));
            }
        })
    }

    fn to_rustix(self) -> rustix::process::Signal {
        use rustix::process::Signal;
        match self {
            Self::Hup => Signal::HUP,
            Self::Usr1 => Signal::USR1,
            Self::Usr2 => Signal::USR2,
            Self::Term => Signal::TERM,
            Self::Int => Signal::INT,
            Self::Quit => Signal::QUIT,
            Self::Winch => Signal::WINCH,
        }
    }
}

impl fmt::Display for SignalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hup => "SIGHUP",
            Self::Usr1 => "SIGUSR1",
            Self::Usr2 => "SIGUSR2",
            Self::Term => "SIGTERM",
            Self::Int => "SIGINT",
            Self::Quit => "SIGQUIT",
            Self::Winch => "SIGWINCH",
        })
    }
}

/// A checked notify action.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notify {
    /// Signal the pid in a file.
    SignalPidFile {
        /// The signal.
        signal: SignalName,
        /// The pid file.
        pid_file: PathBuf,
    },
    /// Signal every process with this name.
    SignalProcessName {
        /// The signal.
        signal: SignalName,
        /// The name.
        name: String,
    },
    /// Run a command.
    Command {
        /// argv (argv\[0\] is the program).
        argv: Vec<String>,
    },
    /// Create the file or update its modification time.
    Touch {
        /// The file.
        path: PathBuf,
    },
}

/// Reads a pid file: one decimal pid above 1.
pub fn read_pid_file(path: &Path) -> Result<i32, String> {
    let text = read_bounded(path, MAX_PID_FILE_BYTES)
        .map_err(|e| format!("pid file {}: {e}", path.display()))?;
    let t = text.trim();
    match t.parse::<i32>() {
        Ok(p) if p > 1 => Ok(p),
        _ => Err(format!(
            "pid file {} does not hold a process id above 1",
            path.display()
        )),
    }
}

/// The pids (other than our own) under `proc_root` (normally `/proc`) whose `comm`, or the
/// base name of `argv[0]`, is `name`.
pub fn find_processes(proc_root: &Path, name: &str) -> Vec<i32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p > 1 && u32::try_from(*p).ok() != Some(me))
        .filter(|p| {
            let dir = proc_root.join(p.to_string());
            let comm = read_bounded(&dir.join("comm"), 256).unwrap_or_default();
            if comm.trim_end_matches('\n') == name {
                return true;
            }
            let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
                return false;
            };
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or(&[]);
            let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or(&[]);
            base == name.as_bytes()
        })
        .collect();
    pids.sort_unstable();
    pids
}

fn send(pid: i32, signal: SignalName) -> Result<(), String> {
    let p = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| format!("pid {pid} is not a process id"))?;
    rustix::process::kill_process(p, signal.to_rustix())
        .map_err(|e| format!("cannot send {signal} to pid {pid}: {e}"))
}

impl Notify {
    /// Carries the action out. `roles` are the rotated roles; `now` sets a touched file's
    /// time. Returns what was done, or why it failed.
    pub async fn fire(&self, roles: &[String], now: SystemTime) -> Result<String, String> {
        match self {
            Self::SignalPidFile { signal, pid_file } => {
                let pid = read_pid_file(pid_file)?;
                send(pid, *signal)?;
                Ok(format!(
                    "sent {signal} to pid {pid} (from {})",
                    pid_file.display()
                ))
            }
            Self::SignalProcessName { signal, name } => {
                let (signal, name2) = (*signal, name.clone());
                let pids =
                    tokio::task::spawn_blocking(move || find_processes(Path::new("/proc"), &name2))
                        .await
                        .map_err(|e| format!("process scan failed: {e}"))?;
                if pids.is_empty() {
                    return Err(format!(
                        "no process named {name:?} is visible; does the pod set shareProcessNamespace: true?"
                    ));
                }
                let mut errors = Vec::new();
                for pid in &pids {
                    if let Err(e) = send(*pid, signal) {
                        errors.push(e);
                    }
                }
                if errors.is_empty() {
                    Ok(format!("sent {signal} to {name:?} (pids {pids:?})"))
                } else {
                    Err(errors.join("; "))
                }
            }
            Self::Command { argv } => {
                let mut cmd = tokio::process::Command::new(&argv[0]);
                cmd.args(&argv[1..])
                    .env(ENV_ROTATED_ROLES, roles.join(","))
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true);
                let mut child = cmd
                    .spawn()
                    .map_err(|e| format!("cannot start {:?}: {e}", argv[0]))?;
                match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
                    Ok(Ok(status)) if status.success() => Ok(format!("ran {:?}", argv[0])),
                    Ok(Ok(status)) => Err(format!("{:?} exited with {status}", argv[0])),
                    Ok(Err(e)) => Err(format!("waiting for {:?}: {e}", argv[0])),
                    Err(_) => {
                        let _ = child.kill().await;
                        Err(format!(
                            "{:?} ran longer than {} s and was killed",
                            argv[0],
                            COMMAND_TIMEOUT.as_secs()
                        ))
                    }
                }
            }
            Self::Touch { path } => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot touch {}: {e}", path.display()))?;
                f.set_modified(now)
                    .map_err(|e| format!("cannot touch {}: {e}", path.display()))?;
                Ok(format!("touched {}", path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_hold_one_pid_above_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("pid");
        std::fs::write(&f, "4242\n").expect("write");
        assert_eq!(read_pid_file(&f), Ok(4242));
        for bad in ["1", "0", "-5", "abc", "", "99999999999"] {
            std::fs::write(&f, bad).expect("write");
            assert!(read_pid_file(&f).is_err(), "{bad:?}");
        }
        std::fs::write(&f, "1".repeat(100)).expect("write");
        assert!(read_pid_file(&f).is_err());
    }

    #[test]
    fn process_scan_matches_comm_or_argv0_and_skips_self() {
        let root = tempfile::tempdir().expect("tmp");
        let mk = |pid: &str, comm: &str, cmdline: &[u8]| {
            let d = root.path().join(pid);
            std::fs::create_dir(&d).expect("mkdir");
            std::fs::write(d.join("comm"), format!("{comm}\n")).expect("comm");
            std::fs::write(d.join("cmdline"), cmdline).expect("cmdline");
        };
        mk("10", "nginx", b"nginx: master\0");
        mk(
            "11",
            "a-very-long-pro",
            b"/usr/bin/a-very-long-program-name\0--x\0",
        );
        mk("12", "bash", b"/bin/bash\0");
        mk(&std::process::id().to_string(), "nginx", b"nginx\0");
        mk("1", "nginx", b"nginx\0");
        std::fs::create_dir(root.path().join("self")).expect("mkdir");
        assert_eq!(find_processes(root.path(), "nginx"), [10]);
        assert_eq!(
            find_processes(root.path(), "a-very-long-program-name"),
            [11]
        );
        assert!(find_processes(root.path(), "java").is_empty());
    }

    #[tokio::test]
    async fn touch_creates_and_updates_mtime() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("rotated");
        let t1 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let a = Notify::Touch { path: f.clone() };
        a.fire(&[], t1).await.expect("touch");
        assert_eq!(
            std::fs::metadata(&f).expect("meta").modified().ok(),
            Some(t1)
        );
        let t2 = t1 + Duration::from_secs(60);
        a.fire(&[], t2).await.expect("touch");
        assert_eq!(
            std::fs::metadata(&f).expect("meta").modified().ok(),
            Some(t2)
        );
        let missing = Notify::Touch {
            path: dir.path().join("no/such/dir/x"),
        };
        assert!(missing.fire(&[], t1).await.is_err());
    }

    #[tokio::test]
    async fn command_runs_without_a_shell_and_sees_the_roles() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("out");
        let a = Notify::Command {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "printf '%s|%s' \"$LANYARD_ROTATED_ROLES\" \"$1\" > \"$0\"".into(),
                out.display().to_string(),
                "$(id) ; rm -rf /".into(),
            ],
        };
        a.fire(&["db".into(), "cache".into()], SystemTime::UNIX_EPOCH)
            .await
            .expect("runs");
        assert_eq!(
            std::fs::read_to_string(&out).expect("out"),
            "db,cache|$(id) ; rm -rf /"
        );
        let fails = Notify::Command {
            argv: vec!["/bin/false".into()],
        };
        assert!(fails.fire(&[], SystemTime::UNIX_EPOCH).await.is_err());
        let missing = Notify::Command {
            argv: vec!["/no/such/program".into()],
        };
        let e = missing
            .fire(&[], SystemTime::UNIX_EPOCH)
            .await
            .expect_err("missing");
        assert!(e.contains("cannot start"), "{e}");
    }

    #[tokio::test]
    async fn signal_by_pid_file_reaches_a_child() {
        let dir = tempfile::tempdir().expect("tmp");
        let marker = dir.path().join("got-hup");
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "trap 'echo hup > {}; exit 0' HUP; echo ready; while :; do sleep 0.05; done",
                marker.display()
            ))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        // Wait until the trap is installed.
        {
            use std::io::BufRead;
            let mut line = String::new();
            let stdout = child.stdout.take().expect("stdout");
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .expect("ready");
        }
        let pid_file = dir.path().join("pid");
        std::fs::write(&pid_file, child.id().to_string()).expect("pid");
        let a = Notify::SignalPidFile {
            signal: SignalName::Hup,
            pid_file,
        };
        a.fire(&[], SystemTime::UNIX_EPOCH).await.expect("signal");
        let status = child.wait().expect("wait");
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(&marker).expect("marker"), "hup\n");
    }
}
