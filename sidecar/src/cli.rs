//! The command line: `lanyard-sidecar init|run`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use lanyard::{Client, TokenSource};

use crate::{SidecarConfig, SidecarError};

const EXAMPLES: &str = "\
Examples:
  # Kubernetes init container: fetch once into /run/secrets, then exit 0
  lanyard-sidecar init \\
      --broker https://lanyard.lanyard-system.svc:8443 \\
      --ca /etc/lanyard/ca.pem \\
      --token-file /var/run/secrets/tokens/lanyard \\
      --dir /run/secrets --role app-db

  # Native sidecar: write, then keep the files fresh until SIGTERM
  lanyard-sidecar run --broker https://lanyard.lanyard-system.svc:8443 \\
      --ca /etc/lanyard/ca.pem --token-file /var/run/secrets/tokens/lanyard --dir /run/secrets

  # Outside Kubernetes, with a single-use bootstrap token minted by an operator
  lanyard-sidecar init --broker https://broker.example:8443 --ca ca.pem \\
      --bootstrap-token-file ./bootstrap-token --dir ./secrets

Files written (mode 0400), for each granted role R and each field F of its credential:
  DIR/R/F      the raw secret value, e.g. DIR/app-db/token
  DIR/R.json   {\"role\",\"kind\",\"expires_at\",\"refresh_after\",\"lease_id\",\"data\":{...}}

Exit codes: 0 success, 1 failure (broker unreachable or refused, cannot write), 2 usage.
Logs go to stderr; set LANYARD_LOG (e.g. debug, or lanyard_sidecar=debug) to change the level.";

/// Writes short-lived credentials from a lanyard broker into a directory and keeps them fresh.
#[derive(Debug, Parser)]
#[command(
    name = "lanyard-sidecar",
    version,
    about,
    long_about = "Writes short-lived credentials from a lanyard broker into a directory \
                  (e.g. /run/secrets) and keeps them fresh. `init` fetches once and exits; \
                  `run` writes, then refreshes each credential at about 70% of its lifetime, \
                  backs off when the broker is down and keeps the last good files until they \
                  expire.",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch credentials once, write them, exit (0 on success).
    #[command(after_help = EXAMPLES)]
    Init(CommonArgs),
    /// Fetch and write, then keep refreshing until SIGTERM or Ctrl-C.
    #[command(after_help = EXAMPLES)]
    Run(CommonArgs),
}

/// Options shared by `init` and `run`.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Broker base URL (https://; http:// only for loopback).
    #[arg(long, value_name = "URL", env = "LANYARD_BROKER_URL")]
    pub broker: String,

    /// PEM file of the CA that signed the broker's certificate (required for https).
    #[arg(long, value_name = "FILE", env = "LANYARD_CA_FILE")]
    pub ca: Option<PathBuf>,

    /// How the sidecar proves who it is.
    #[command(flatten)]
    pub auth: AuthArgs,

    /// Directory to write credentials into (created with mode 0700 if missing).
    #[arg(long, value_name = "DIR", env = "LANYARD_SECRETS_DIR")]
    pub dir: PathBuf,

    /// Ask only for this role (repeatable, or comma-separated; default: every role the
    /// policy grants).
    #[arg(
        long = "role",
        value_name = "ROLE",
        env = "LANYARD_ROLES",
        value_delimiter = ','
    )]
    pub roles: Vec<String>,

    /// Ask for this lifetime in seconds (the broker lowers it to each role's cap).
    #[arg(long, value_name = "N", env = "LANYARD_TTL_SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl_seconds: Option<u64>,

    /// Time limit for one request to the broker, in seconds.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout_seconds: u64,
}

/// Exactly one identity token source.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct AuthArgs {
    /// File holding a JWT, e.g. a projected service-account token (re-read on every refresh).
    #[arg(long, value_name = "FILE", env = "LANYARD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// File holding a single-use bootstrap token (lbt_...); later refreshes use the session
    /// the broker returns.
    #[arg(long, value_name = "FILE", env = "LANYARD_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
}

impl CommonArgs {
    /// Builds the client and config these options describe. Errors are usage errors.
    pub fn to_config(&self) -> Result<SidecarConfig, SidecarError> {
        if self.broker.trim_start().starts_with("https://") && self.ca.is_none() {
            return Err(SidecarError::Usage(
                "--ca FILE (or LANYARD_CA_FILE) is required for an https broker: give the CA \
                 that signed the broker's certificate"
                    .to_owned(),
            ));
        }
        let token = match (&self.auth.token_file, &self.auth.bootstrap_token_file) {
            (Some(f), _) => TokenSource::JwtFile(f.clone()),
            (None, Some(f)) => TokenSource::BootstrapFile(f.clone()),
            (None, None) => {
                return Err(SidecarError::Usage(
                    "give --token-file or --bootstrap-token-file".to_owned(),
                ));
            }
        };
        let mut b = Client::builder()
            .broker_url(self.broker.clone())
            .token_source(token)
            .timeout(Duration::from_secs(self.timeout_seconds));
        if let Some(ca) = &self.ca {
            b = b.ca_file(ca.clone());
        }
        let roles: Vec<String> = self
            .roles
            .iter()
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect();
        if !roles.is_empty() {
            b = b.roles(roles);
        }
        if let Some(ttl) = self.ttl_seconds {
            b = b.ttl_seconds(ttl);
        }
        let client = b.build().map_err(|e| match e {
            lanyard::Error::Config(m) => SidecarError::Usage(m),
            other => SidecarError::Fetch(other),
        })?;
        Ok(SidecarConfig {
            client,
            dir: self.dir.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lanyard-sidecar").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_teaches_with_examples() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("init") && help.contains("run"), "{help}");
        assert!(
            help.contains("Examples:") && help.contains("DIR/R.json"),
            "{help}"
        );
        let mut cmd = Cli::command();
        let init = cmd.find_subcommand_mut("init").expect("init");
        let help = init.render_long_help().to_string();
        for flag in [
            "--broker",
            "--ca",
            "--token-file",
            "--bootstrap-token-file",
            "--dir",
            "--role",
            "--ttl-seconds",
        ] {
            assert!(help.contains(flag), "{flag} missing from:\n{help}");
        }
        assert!(help.contains("LANYARD_SECRETS_DIR"), "{help}");
    }

    #[test]
    fn missing_dir_is_a_usage_error() {
        let e = parse(&[
            "init",
            "--broker",
            "http://127.0.0.1:1",
            "--token-file",
            "/t",
        ])
        .expect_err("no --dir");
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(e.to_string().contains("--dir"), "{e}");
    }

    #[test]
    fn exactly_one_token_source() {
        let e =
            parse(&["run", "--broker", "http://127.0.0.1:1", "--dir", "/d"]).expect_err("no token");
        assert_eq!(e.exit_code(), 2);
        let e = parse(&[
            "run",
            "--broker",
            "http://127.0.0.1:1",
            "--dir",
            "/d",
            "--token-file",
            "/a",
            "--bootstrap-token-file",
            "/b",
        ])
        .expect_err("both");
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn roles_repeat_or_split_and_build_a_client() {
        let cli = parse(&[
            "init",
            "--broker",
            "http://127.0.0.1:1",
            "--token-file",
            "/t",
            "--dir",
            "/d",
            "--role",
            "a",
            "--role",
            "b,c",
            "--ttl-seconds",
            "300",
        ])
        .expect("parse");
        let Command::Init(args) = cli.command else {
            panic!("expected init");
        };
        assert_eq!(args.roles, ["a", "b", "c"]);
        let cfg = args.to_config().expect("config");
        assert_eq!(cfg.client.request().ttl_seconds, Some(300));
        assert_eq!(cfg.client.request().roles.as_ref().map(Vec::len), Some(3));
        assert_eq!(cfg.dir, PathBuf::from("/d"));
    }

    #[test]
    fn https_without_ca_is_a_usage_error() {
        let cli = parse(&[
            "init",
            "--broker",
            "https://broker.example",
            "--token-file",
            "/t",
            "--dir",
            "/d",
        ])
        .expect("parse");
        let Command::Init(args) = cli.command else {
            panic!("expected init");
        };
        let e = args.to_config().expect_err("no ca");
        assert!(matches!(e, SidecarError::Usage(_)), "{e:?}");
        assert!(e.to_string().contains("--ca"), "{e}");
    }
}
