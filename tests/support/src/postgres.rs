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
