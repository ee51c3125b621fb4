//! The command line: `lanyard-sidecar init|run`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use lanyard::{Client, TokenSource};

use crate::error::SidecarError;
use crate::notify::Notify;
use crate::options::{Options, SidecarConfig};
use crate::spec::{
    ConfigFile, NotifySpec, TargetSpec, check_all, parse_command, parse_target_keys,
};
use crate::target::OnExpiry;

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

  # Unmodified AWS SDKs in the app: serve the AWS container-credentials endpoint
  # (app env: AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:8098/v1/aws-credentials,
  #  AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/run/secrets/aws-container-token)
  lanyard-sidecar run --broker https://lanyard.lanyard-system.svc:8443 --ca /etc/lanyard/ca.pem \\
      --token-file /var/run/secrets/tokens/lanyard --dir /run/secrets --aws-listen 127.0.0.1:8098

  # Outside Kubernetes, with a single-use bootstrap token minted by an operator
  lanyard-sidecar init --broker https://broker.example:8443 --ca ca.pem \\
      --bootstrap-token-file ./bootstrap-token --dir ./secrets

Files written (mode 0400), for each granted role R and each field F of its credential:
  DIR/R/F      the raw secret value, e.g. DIR/app-db/token
  DIR/R.json   {\"role\",\"kind\",\"expires_at\",\"refresh_after\",\"lease_id\",\"ttl_seconds\",\"data\":{...}}

With targets (--config FILE, --target KEYS, LANYARD_TARGET_<N>), only the targets are written:
  --target 'role=db,field=password,path=db/password,mode=0440,uid=1000'
  --target 'role=db,format=env,prefix=DB_,path=db.env'
  --target 'role=aws,format=aws,profile=default,path=aws/credentials'
  --target 'role=db,format=template,path=dsn,template=postgres://app:{{ data.password }}@db/app'
Formats: raw (one field), env (KEY=value), json, aws (shared-credentials file), template
(minijinja; undefined values are errors). Paths are relative to --dir; links are refused.

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
                  backs off when the broker is down, asks again only minutes later when it \
                  refuses, and keeps the last good files until they expire.",
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
    /// Print an aws-sts credential as AWS `credential_process` JSON, for ~/.aws/config.
    #[command(after_help = PROCESS_EXAMPLES)]
    CredentialProcess(ProcessArgs),
}

const PROCESS_EXAMPLES: &str = "\
Example, in the AWS config file (~/.aws/config or AWS_CONFIG_FILE):
  [profile app]
  credential_process = lanyard-sidecar credential-process --broker https://lanyard:8443 --ca /etc/lanyard/ca.pem --token-file /var/run/secrets/tokens/lanyard --role aws-read

Prints {\"Version\":1,\"AccessKeyId\",\"SecretAccessKey\",\"SessionToken\",\"Expiration\"} on stdout
and exits 0; on failure prints the reason on stderr and exits 1 (2 for usage errors). Each
run asks the broker, which serves the role from its STS cache.";

/// How to reach the broker and prove who we are; shared by every subcommand.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Broker base URL (https://; http:// only for loopback).
    #[arg(long, value_name = "URL", env = "LANYARD_BROKER_URL")]
    pub broker: String,

    /// PEM file of the CA that signed the broker's certificate (required for https).
    #[arg(long, value_name = "FILE", env = "LANYARD_CA_FILE")]
    pub ca: Option<PathBuf>,

    /// How the sidecar proves who it is.
    #[command(flatten)]
    pub auth: AuthArgs,

    /// Ask for this lifetime in seconds (the broker lowers it to each role's cap).
    #[arg(long, value_name = "N", env = "LANYARD_TTL_SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl_seconds: Option<u64>,

    /// Time limit for one request to the broker, in seconds.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout_seconds: u64,
}

impl BrokerArgs {
    /// The client these options describe, asking for `roles` (empty: every granted role).
    /// Errors are usage errors.
    pub fn client(&self, roles: &[String]) -> Result<Client, SidecarError> {
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
        let roles: Vec<String> = roles
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
        b.build().map_err(|e| match e {
            lanyard::Error::Config(m) => SidecarError::Usage(m),
            other => SidecarError::Fetch(other),
        })
    }
}

/// Options of `credential-process`.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Broker and identity.
    #[command(flatten)]
    pub conn: BrokerArgs,

    /// The aws-sts role to print (default: the only AWS credential the policy grants).
    #[arg(long, value_name = "ROLE", env = "LANYARD_AWS_ROLE")]
    pub role: Option<String>,
}

impl ProcessArgs {
    /// The client; a bootstrap token is refused (the AWS SDK runs the process at every
    /// refresh, and a bootstrap token works once).
    pub fn to_client(&self) -> Result<Client, SidecarError> {
        if self.conn.auth.bootstrap_token_file.is_some() {
            return Err(SidecarError::Usage(
                "credential-process runs again at every AWS SDK refresh and a bootstrap token \
                 works once; use --token-file (e.g. a projected service-account token)"
                    .to_owned(),
            ));
        }
        self.conn.client(self.role.as_slice())
    }
}

/// Options shared by `init` and `run`.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Broker and identity.
    #[command(flatten)]
    pub conn: BrokerArgs,

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

    /// YAML file with `targets:`, `notify:` and `on_expiry:` (see docs/SIDECAR.md).
    #[arg(long, value_name = "FILE", env = "LANYARD_SIDECAR_CONFIG")]
    pub config: Option<PathBuf>,

    /// A target, annotation style: `role=db,field=password,format=raw,path=db/password,mode=0400`
    /// (repeatable; also `LANYARD_TARGET_<N>` variables, in order of N). Formats: raw, env,
    /// json, aws, template. Without targets every credential is written in the default layout.
    #[arg(long = "target", value_name = "KEYS")]
    pub targets: Vec<String>,

    /// `init`: give up after this many seconds, retrying retryable failures with backoff
    /// inside it (0: one attempt); a refusal fails at once.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 60,
        env = "LANYARD_DEADLINE_SECONDS"
    )]
    pub deadline_seconds: u64,

    /// `run`: serve /healthz, /readyz, /metrics and POST /quitquitquit on this address,
    /// e.g. 127.0.0.1:8099 (quitquitquit answers loopback callers only).
    #[arg(long, value_name = "ADDR", env = "LANYARD_HEALTH_LISTEN")]
    pub health_listen: Option<std::net::SocketAddr>,

    /// After a rotation, send this signal (HUP, USR1, ...) to the process in
    /// --notify-pid-file or named --notify-process-name.
    #[arg(long, value_name = "SIG")]
    pub notify_signal: Option<String>,

    /// File holding the pid to signal.
    #[arg(long, value_name = "FILE", requires = "notify_signal")]
    pub notify_pid_file: Option<PathBuf>,

    /// Name of the process(es) to signal (needs a shared process namespace in Kubernetes).
    #[arg(
        long,
        value_name = "NAME",
        requires = "notify_signal",
        conflicts_with = "notify_pid_file"
    )]
    pub notify_process_name: Option<String>,

    /// After a rotation, run this command: a JSON array (["nginx","-s","reload"]) or words;
    /// never through a shell. It gets LANYARD_ROTATED_ROLES.
    #[arg(long, value_name = "CMD")]
    pub notify_command: Option<String>,

    /// After a rotation, create this file or update its modification time.
    #[arg(long, value_name = "FILE")]
    pub notify_touch: Option<PathBuf>,

    /// What to do with the files of a credential that expired without a refresh: remove,
    /// mark (write FILE.expired next to each) or keep [default: remove].
    #[arg(long, value_name = "ACTION")]
    pub on_expiry: Option<String>,

    /// `run`: exit 0 once this file exists (e.g. written by a Job's main container).
    #[arg(long, value_name = "FILE", env = "LANYARD_EXIT_WHEN_FILE")]
    pub exit_when_file: Option<PathBuf>,

    /// `run`: revoke the held leases at shutdown (the broker records it; backends that can
    /// revoke upstream do).
    #[arg(long)]
    pub revoke_on_shutdown: bool,

    /// `run`: serve the AWS container-credentials endpoint on this loopback address (e.g.
    /// 127.0.0.1:8098), so unmodified AWS SDKs get the aws-sts credential. Set
    /// AWS_CONTAINER_CREDENTIALS_FULL_URI=http://ADDR/v1/aws-credentials and
    /// AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=DIR/aws-container-token in the app.
    #[arg(long, value_name = "ADDR", env = "LANYARD_AWS_LISTEN")]
    pub aws_listen: Option<std::net::SocketAddr>,

    /// The aws-sts role the endpoint serves (default: the only AWS credential granted).
    #[arg(
        long,
        value_name = "ROLE",
        env = "LANYARD_AWS_ROLE",
        requires = "aws_listen"
    )]
    pub aws_role: Option<String>,

    /// Name, in --dir, of the file the endpoint's random authorization token is written to.
    #[arg(long, value_name = "NAME", default_value = crate::aws::DEFAULT_TOKEN_FILE, requires = "aws_listen")]
    pub aws_token_file: String,

    /// Mode of the token file (octal), e.g. 0440 with --aws-token-gid for an app running
    /// as another user.
    #[arg(
        long,
        value_name = "MODE",
        default_value = "0400",
        requires = "aws_listen"
    )]
    pub aws_token_mode: String,

    /// Owner uid of the token file (needs CAP_CHOWN).
    #[arg(long, value_name = "UID", requires = "aws_listen")]
    pub aws_token_uid: Option<u32>,

    /// Owner gid of the token file (needs CAP_CHOWN).
    #[arg(long, value_name = "GID", requires = "aws_listen")]
    pub aws_token_gid: Option<u32>,
}

/// `LANYARD_TARGET_<N>` values from `env`, in order of N.
pub fn env_targets(env: &[(String, String)]) -> Result<Vec<(String, String)>, SidecarError> {
    let mut found = Vec::new();
    for (k, v) in env {
        let Some(n) = k.strip_prefix("LANYARD_TARGET_") else {
            continue;
        };
        let n: u32 = n.parse().map_err(|_| {
            SidecarError::Usage(format!(
                "environment variable {k}: the suffix must be a number, e.g. LANYARD_TARGET_1"
            ))
        })?;
        found.push((n, k.clone(), v.clone()));
    }
    found.sort();
    Ok(found.into_iter().map(|(_, k, v)| (k, v)).collect())
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
        Ok(SidecarConfig {
            client: self.conn.client(&self.roles)?,
            dir: self.dir.clone(),
        })
    }

    /// Mode and owner of the AWS endpoint's token file.
    pub fn aws_token_opts(&self) -> Result<crate::files::FileOpts, SidecarError> {
        let mode = crate::names::parse_mode(&self.aws_token_mode)
            .map_err(|e| SidecarError::Usage(format!("--aws-token-mode: {e}")))?;
        Ok(crate::files::FileOpts {
            mode,
            uid: self.aws_token_uid,
            gid: self.aws_token_gid,
        })
    }

    /// Builds the [`Options`]: targets from the config file, `--target` and
    /// `LANYARD_TARGET_<N>` in `env` (in that order), notify actions, expiry handling and
    /// the rest. Errors are usage errors naming the flag, variable or file.
    pub fn to_options(
        &self,
        is_run: bool,
        env: &[(String, String)],
    ) -> Result<Options, SidecarError> {
        let usage = SidecarError::Usage;
        let file = match &self.config {
            Some(p) => ConfigFile::load(p).map_err(usage)?,
            None => ConfigFile::default(),
        };
        let origin = |i: usize| match &self.config {
            Some(p) => format!("{} targets[{i}]", p.display()),
            None => format!("targets[{i}]"),
        };
        let mut specs: Vec<(String, TargetSpec)> = file
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| (origin(i), t.clone()))
            .collect();
        for (i, t) in self.targets.iter().enumerate() {
            let what = format!("--target #{}", i + 1);
            let spec = parse_target_keys(t).map_err(|e| usage(format!("{what}: {e}")))?;
            specs.push((what, spec));
        }
        for (k, v) in env_targets(env)? {
            let spec = parse_target_keys(&v).map_err(|e| usage(format!("{k}: {e}")))?;
            specs.push((k, spec));
        }
        let targets = check_all(&specs).map_err(usage)?;

        let mut notify = Vec::new();
        for (i, n) in file.notify.iter().enumerate() {
            let what = match &self.config {
                Some(p) => format!("{} notify[{i}]", p.display()),
                None => format!("notify[{i}]"),
            };
            notify.push(n.check(&what).map_err(usage)?);
        }
        if self.notify_signal.is_some() {
            let spec = NotifySpec {
                signal: self.notify_signal.clone(),
                pid_file: self.notify_pid_file.clone(),
                process_name: self.notify_process_name.clone(),
                ..NotifySpec::default()
            };
            notify.push(
                spec.check("--notify-signal").map_err(|e| {
                    usage(format!("{e} (--notify-pid-file or --notify-process-name)"))
                })?,
            );
        }
        if let Some(c) = &self.notify_command {
            notify.push(Notify::Command {
                argv: parse_command(c).map_err(usage)?,
            });
        }
        if let Some(t) = &self.notify_touch {
            notify.push(Notify::Touch { path: t.clone() });
        }
        let on_expiry = match &self.on_expiry {
            Some(s) => OnExpiry::parse(s).map_err(|e| usage(format!("--on-expiry: {e}")))?,
            None => file.on_expiry.unwrap_or_default(),
        };
        if !is_run
            && (self.health_listen.is_some()
                || self.exit_when_file.is_some()
                || self.revoke_on_shutdown
                || self.aws_listen.is_some())
        {
            return Err(usage(
                "--health-listen, --exit-when-file, --revoke-on-shutdown and --aws-listen apply to `run`, not `init`".to_owned(),
            ));
        }
        if let Some(addr) = self.aws_listen
            && !addr.ip().is_loopback()
        {
            return Err(usage(format!(
                "--aws-listen {addr}: the endpoint hands out AWS keys over plain HTTP, so it \
                 listens on loopback only (127.0.0.1 is shared by the containers of a pod)"
            )));
        }
        Ok(Options {
            targets,
            notify,
            on_expiry,
            deadline: (!is_run && self.deadline_seconds > 0)
                .then(|| Duration::from_secs(self.deadline_seconds)),
            exit_when_file: self.exit_when_file.clone(),
            revoke_on_shutdown: self.revoke_on_shutdown,
            aws: None,
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
    fn aws_endpoint_is_loopback_only_and_run_only() {
        let base = [
            "--broker",
            "http://127.0.0.1:1",
            "--token-file",
            "/t",
            "--dir",
            "/d",
            "--aws-listen",
        ];
        let options = |cmd: &str, addr: &str| {
            let cli = parse(&[&[cmd][..], &base[..], &[addr][..]].concat()).expect("parse");
            match cli.command {
                Command::Init(a) => a.to_options(false, &[]),
                Command::Run(a) => a.to_options(true, &[]),
                Command::CredentialProcess(_) => unreachable!("not parsed here"),
            }
        };
        let e = options("run", "0.0.0.0:8098").expect_err("not loopback");
        assert!(
            matches!(e, SidecarError::Usage(_)) && e.to_string().contains("loopback"),
            "{e}"
        );
        let e = options("init", "127.0.0.1:8098").expect_err("run only");
        assert!(e.to_string().contains("--aws-listen"), "{e}");
        options("run", "127.0.0.1:8098").expect("loopback is fine");
        options("run", "[::1]:8098").expect("loopback is fine");

        let e = parse(&[
            "run",
            "--broker",
            "http://x",
            "--token-file",
            "/t",
            "--dir",
            "/d",
            "--aws-role",
            "r",
        ])
        .expect_err("--aws-role needs --aws-listen");
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let cli = parse(
            &[
                &["run"][..],
                &base[..],
                &[
                    "127.0.0.1:1",
                    "--aws-token-mode",
                    "0440",
                    "--aws-token-gid",
                    "7",
                ][..],
            ]
            .concat(),
        )
        .expect("parse");
        let Command::Run(a) = cli.command else {
            panic!("run")
        };
        assert_eq!(
            a.aws_token_opts().expect("opts"),
            crate::files::FileOpts {
                mode: 0o440,
                uid: None,
                gid: Some(7)
            }
        );
    }

    #[test]
    fn credential_process_has_help_and_refuses_bootstrap_tokens() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("credential-process")
            .expect("subcommand")
            .render_long_help()
            .to_string();
        assert!(
            help.contains("credential_process = lanyard-sidecar credential-process"),
            "{help}"
        );
        let process = |extra: &[&str]| {
            let args = [
                &["credential-process", "--broker", "http://127.0.0.1:1"][..],
                extra,
            ]
            .concat();
            match parse(&args).expect("parse").command {
                Command::CredentialProcess(a) => a,
                _ => panic!("credential-process"),
            }
        };
        let e = process(&["--bootstrap-token-file", "/b"])
            .to_client()
            .expect_err("single-use token");
        assert!(e.to_string().contains("--token-file"), "{e}");
        let a = process(&["--token-file", "/t", "--role", "aws"]);
        let client = a.to_client().expect("client");
        assert_eq!(
            client.request().roles.as_deref(),
            Some(&["aws".to_owned()][..])
        );
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
