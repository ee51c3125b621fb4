//! [`Postgres`]: a real, throwaway PostgreSQL cluster on a free loopback port.
//!
//! `tests/peers/postgres.sh` (run by `./test.sh`) installs Debian's `postgresql` and exports
//! `LANYARD_PG_BIN`. Each [`Postgres::start`] runs `initdb` into a fresh temporary directory
//! and `pg_ctl start` on a free port, listening on 127.0.0.1 only. Connections over TCP need
//! a password (`scram-sha-256`, so a role's password is really checked — the superuser is
//! `test` with password [`SUPERUSER_PASSWORD`]); the server's own Unix socket, in the
//! temporary directory, trusts, and is what [`Postgres::psql`] uses; dropping it stops the server (immediate mode)
//! and removes the directory. `fsync` is off by default: these clusters are for functional
//! tests; [`Postgres::start_durable`] keeps it on for benchmarks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::child::free_ports;

/// The superuser `test`'s password (a throwaway cluster on loopback).
pub const SUPERUSER_PASSWORD: &str = "lanyard-test-superuser";

/// How many ports [`Postgres::start`] tries (another process may take a free port first).
const ATTEMPTS: u32 = 3;

/// A running throwaway cluster. Stopped and deleted on drop.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The server options `pg_ctl start -o` was given (reused by [`Postgres::restart`]).
    opts: String,
    /// Files the server reads besides its data directory (a TLS certificate and key).
    keep: Option<tempfile::TempDir>,
}

fn bin_dir() -> PathBuf {
    let bin = std::env::var_os("LANYARD_PG_BIN")
        .map(PathBuf::from)
        .expect(
            "LANYARD_PG_BIN is not set: run the tests through ./test.sh, or \
         `source tests/peers/postgres.sh` first",
        );
    assert!(
        bin.join("initdb").is_file(),
        "LANYARD_PG_BIN={} has no initdb",
        bin.display()
    );
    bin
}

/// Runs `cmd`, as the `postgres` user when this process is root (initdb and postgres refuse
/// to run as root).
fn run_as_owner(bin: &Path, program: &str, args: &[&str]) -> Output {
    let exe = bin.join(program);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Postgres {
    /// Starts a cluster with `fsync=off` (functional tests).
    pub fn start() -> Self {
        Self::start_with(&["-c", "fsync=off"])
    }

    /// Starts a cluster with PostgreSQL's durability settings left on (benchmarks).
    pub fn start_durable() -> Self {
        Self::start_with(&[])
    }

    /// Starts a cluster serving TLS (`ssl=on`) with the certificate and key of `pki` (its
    /// server certificate names `localhost` and `127.0.0.1`), besides plain TCP.
    pub fn start_tls(pki: &crate::TestPki) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lanyard-pg-tls-")
            .tempdir()
            .expect("temp dir for the server certificate");
        let cert = dir.path().join("server.crt");
        let key = dir.path().join("server.key");
        std::fs::copy(pki.cert_path(), &cert).expect("copy cert");
        std::fs::copy(pki.key_path(), &key).expect("copy key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("chmod key");
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod dir");
        }
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                st.success(),
                "chown postgres {} failed",
                dir.path().display()
            );
        }
        let cert_opt = format!("ssl_cert_file={}", cert.display());
        let key_opt = format!("ssl_key_file={}", key.display());
        let mut pg = Self::start_with(&[
            "-c",
            "fsync=off",
            "-c",
            "ssl=on",
            "-c",
            &cert_opt,
            "-c",
            &key_opt,
        ]);
        pg.keep = Some(dir);
        pg
    }

    /// One cluster for the whole test process, started on first use (`fsync=off`). A
    /// watcher process stops it and removes its directory once this process has exited
    /// (statics are never dropped). Give each test its own database
    /// ([`Postgres::create_database`]).
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(|| {
            let pg = Self::start();
            pg.watch_parent();
            pg
        })
    }

    /// Creates a fresh, empty database named after `prefix` plus a counter; returns its URL
    /// (as [`Postgres::url`]).
    pub fn create_database(&self, prefix: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name: String = format!("{prefix}_{n}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        self.psql(&format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Starts `sh` watching this process: when it is gone, stop the cluster (immediate mode)
    /// and remove its directory.
    // The watcher must outlive this process, which therefore never waits for it.
    #[allow(clippy::zombie_processes)]
    fn watch_parent(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {owner}{pg_ctl} -D {data} -m immediate -w stop >/dev/null 2>&1; rm -rf {root}",
            pid = std::process::id(),
            owner = if is_root() {
                "runuser -u postgres -- "
            } else {
                ""
            },
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.data_dir(),
            root = self.dir.path().display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the PostgreSQL watcher");
    }

    fn start_with(settings: &[&str]) -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("lanyard-pg-")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        let root = dir.path().to_str().expect("utf-8 temp path").to_owned();
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres", &root])
                .status()
                .expect("chown");
            assert!(st.success(), "chown postgres {root} failed");
        }
        let data = format!("{root}/data");
        let pwfile = format!("{root}/pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).expect("write password file");
        let out = run_as_owner(
            &bin,
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "test",
                "--pwfile",
                &pwfile,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "-N",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = format!("{root}/log");
        let mut why = String::new();
        for _ in 0..ATTEMPTS {
            let [port] = free_ports();
            let mut opts = format!("-p {port} -k {root} -c listen_addresses=127.0.0.1");
            for s in settings {
                opts.push(' ');
                opts.push_str(s);
            }
            let out = run_as_owner(
                &bin,
                "pg_ctl",
                &[
                    "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "30", "start",
                ],
            );
            if out.status.success() {
                return Self {
                    dir,
                    bin,
                    port,
                    opts,
                    keep: None,
                };
            }
            why = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("PostgreSQL did not start in {ATTEMPTS} attempts: {why}");
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` as the superuser `test`, over TCP with its password.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://test:{SUPERUSER_PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Runs SQL through `psql` over TCP (so the password is checked) as `user` with
    /// `password` against `db`; returns the unaligned, tuples-only output, or psql's error
    /// text.
    pub fn psql_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
        sql: &str,
    ) -> Result<String, String> {
        self.run_psql("127.0.0.1", user, Some(password), db, sql)
    }

    /// Runs SQL as the superuser against database `postgres` over the trusted Unix socket;
    /// panics on error.
    pub fn psql(&self, sql: &str) -> String {
        let socket_dir = self.dir.path().to_str().expect("utf-8").to_owned();
        self.run_psql(&socket_dir, "test", None, "postgres", sql)
            .unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    }

    /// Like [`Postgres::psql`] against database `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        let socket_dir = self.dir.path().to_str().expect("utf-8").to_owned();
        self.run_psql(&socket_dir, "test", None, db, sql)
            .unwrap_or_else(|e| panic!("psql -d {db} {sql:?}: {e}"))
    }

    fn run_psql(
        &self,
        host: &str,
        user: &str,
        password: Option<&str>,
        db: &str,
        sql: &str,
    ) -> Result<String, String> {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args([
            "-h",
            host,
            "-p",
            &self.port.to_string(),
            "-U",
            user,
            "-d",
            db,
        ])
        .args(["-w", "-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-c", sql])
        .env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE")
        .stdin(Stdio::null());
        if let Some(p) = password {
            cmd.env("PGPASSWORD", p);
        }
        let out = cmd.output().expect("running psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Stops the server (fast mode) without removing its data; [`Postgres::restart`] starts
    /// it again on the same port.
    pub fn stop(&self) {
        let data = self.data_dir();
        let out = run_as_owner(
            &self.bin,
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "stop"],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a stopped server again on the same port, with the same settings.
    pub fn restart(&self) {
        let data = self.data_dir();
        let log = self.dir.path().join("log");
        let out = run_as_owner(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                &data,
                "-l",
                log.to_str().expect("utf-8"),
                "-o",
                &self.opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    fn data_dir(&self) -> String {
        self.dir
            .path()
            .join("data")
            .to_str()
            .expect("utf-8")
            .to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = run_as_owner(
            &self.bin,
            "pg_ctl",
            &["-D", &data, "-m", "immediate", "-w", "stop"],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_answers_restarts_and_goes_away() {
        if std::env::var_os("LANYARD_PG_BIN").is_none() {
            eprintln!("skipped: LANYARD_PG_BIN unset (run through ./test.sh)");
            return;
        }
        let pg = Postgres::start();
        assert_eq!(pg.psql("SELECT 1 + 1"), "2");
        pg.psql("CREATE ROLE app LOGIN PASSWORD 'pw'");
        let who = pg.psql_as("app", "pw", "postgres", "SELECT current_user");
        assert_eq!(who.as_deref(), Ok("app"));
        let wrong = pg.psql_as("app", "not-pw", "postgres", "SELECT 1");
        let wrong = wrong.expect_err("a wrong password is refused");
        assert!(wrong.contains("password authentication failed"), "{wrong}");
        let root = pg.psql_as("test", SUPERUSER_PASSWORD, "postgres", "SELECT 2");
        assert_eq!(root.as_deref(), Ok("2"));
        pg.stop();
        assert!(
            pg.psql_as("test", SUPERUSER_PASSWORD, "postgres", "SELECT 1")
                .is_err()
        );
        pg.restart();
        assert_eq!(pg.psql("SELECT 3"), "3");
        let dir = pg.dir.path().to_owned();
        drop(pg);
        assert!(!dir.exists());
    }
}
