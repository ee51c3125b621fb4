//! The sidecar's targets, readiness, notifications, resilience and exits against the real
//! broker (over TLS, with a real OIDC issuer on loopback), plus the SDK's watch stream and
//! file source.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use lanyard::TokenSource;
use lanyard::clock::SystemClock;
use lanyard_sidecar::notify::{Notify, SignalName};
use lanyard_sidecar::spec::{check_all, parse_target_keys};
use lanyard_sidecar::{OnExpiry, Options, SidecarConfig, SidecarError};
use lanyard_test_support::{OidcIssuer, TestBroker, TestBrokerOptions};

/// Role `short` (jwt, 3 s) for bootstrap tokens, and `app` for `shop/api`.
const SHORT_POLICY: &str = r#"
roles:
  short:
    backend: jwt
    max_ttl_seconds: 3
  app:
    backend: jwt
    max_ttl_seconds: 600
    default_ttl_seconds: 300
    settings: {audience: app}
rules:
  - name: boot
    match: {bootstrap_role: short}
    roles: [short]
  - name: shop-api
    match: {namespace: shop, service_account: api}
    roles: [app]
"#;

fn targets(keys: &[&str]) -> Vec<lanyard_sidecar::Target> {
    let specs: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (format!("target {i}"), parse_target_keys(k).expect("parse")))
        .collect();
    check_all(&specs).expect("valid targets")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(
                p.strip_prefix(dir)
                    .expect("under dir")
                    .display()
                    .to_string(),
            );
        }
    }
    out.sort();
    out
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

struct Sidecar {
    task: tokio::task::JoinHandle<Result<(), SidecarError>>,
    stop: tokio::sync::watch::Sender<bool>,
    health: String,
}

async fn start(cfg: SidecarConfig, opts: Options) -> Sidecar {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let health = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        lanyard_sidecar::run_with(
            &cfg,
            &opts,
            Some(listener),
            Arc::new(SystemClock),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )
        .await
    });
    Sidecar { task, stop, health }
}

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_and_templates_are_rendered_byte_for_byte_with_mode_and_owner() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let work = tempfile::tempdir().expect("tmp");
    let token_file = work.path().join("sa-token");
    std::fs::write(&token_file, issuer.k8s_token("shop", "api", "lanyard", 600)).expect("write");
    let secrets = work.path().join("secrets");
    let cfg = SidecarConfig {
        client: broker.client(TokenSource::JwtFile(token_file)),
        dir: secrets.clone(),
    };
    // Root can hand files to another user; anyone else keeps them.
    let probe = work.path().join("probe");
    std::fs::write(&probe, "").expect("probe");
    let root = std::fs::metadata(&probe).expect("meta").uid() == 0;
    let owner = if root { ",uid=65534,gid=65534" } else { "" };
    let opts = Options {
        targets: targets(&[
            &format!("role=app,field=token,path=app/token,mode=0440{owner}"),
            "role=app,format=env,field=token,key=APP_TOKEN,path=env/app.env",
            "role=app,format=json,path=app.json,mode=0400",
            "role=app,format=template,path=conf/app.conf,mode=0444,template=token={{ data.token }}\nrole={{ role }}\nlease={{ lease_id }}\nexpires={{ expires_at }}\nttl={{ ttl_seconds }}\n",
        ]),
        ..Options::default()
    };
    let written = lanyard_sidecar::init_with(&cfg, &opts)
        .await
        .expect("init writes the targets");
    assert_eq!(written.credentials.len(), 1);
    let c = &written.credentials[0];
    assert_eq!(c.files.len(), 4);

    // Ask the broker's answer what the bytes must be: the raw token is the JWT itself.
    let token = std::fs::read_to_string(secrets.join("app/token")).expect("raw");
    assert_eq!(token.split('.').count(), 3, "a JWT");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(secrets.join("app.json")).expect("json"))
            .expect("parse");
    let (lease, expires) = (
        json["lease_id"].as_str().expect("lease").to_owned(),
        json["expires_at"].as_str().expect("exp").to_owned(),
    );
    assert_eq!(lease, c.lease_id);
    assert_eq!(
        std::fs::read_to_string(secrets.join("env/app.env")).expect("env"),
        format!("APP_TOKEN={token}\n")
    );
    assert_eq!(
        std::fs::read_to_string(secrets.join("app.json")).expect("json"),
        format!(
            "{{\n  \"role\": \"app\",\n  \"kind\": \"jwt\",\n  \"expires_at\": \"{expires}\",\n  \"refresh_after\": \"{}\",\n  \"lease_id\": \"{lease}\",\n  \"ttl_seconds\": 300,\n  \"data\": {{\n    \"token\": \"{token}\"\n  }}\n}}\n",
            json["refresh_after"].as_str().expect("refresh")
        )
    );
    assert_eq!(
        std::fs::read_to_string(secrets.join("conf/app.conf")).expect("tmpl"),
        format!("token={token}\nrole=app\nlease={lease}\nexpires={expires}\nttl=300\n")
    );
    assert_eq!(mode(&secrets.join("app/token")), 0o440);
    assert_eq!(mode(&secrets.join("env/app.env")), 0o400);
    assert_eq!(mode(&secrets.join("conf/app.conf")), 0o444);
    let meta = std::fs::metadata(secrets.join("app/token")).expect("meta");
    if root {
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }
    // Targets only: no default layout alongside, and no temp file left.
    assert_eq!(
        tree(&secrets),
        [
            "app",
            "app.json",
            "app/token",
            "conf",
            "conf/app.conf",
            "env",
            "env/app.env"
        ]
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_targets_write_nothing() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let work = lanyard_test_support::Workload::kubernetes(&issuer, "shop", "api");
    let (token_file, secrets) = (work.token_file.clone(), work.secrets.clone());
    let cfg = SidecarConfig {
        client: broker.client(TokenSource::JwtFile(token_file)),
        dir: secrets.clone(),
    };
    let init = |keys: &[&str]| {
        let opts = Options {
            targets: targets(keys),
            ..Options::default()
        };
        let cfg = cfg.clone();
        async move { lanyard_sidecar::init_with(&cfg, &opts).await }
    };

    // A template naming a field the credential does not have: nothing at all is written,
    // not even the valid target listed before it.
    let e = init(&[
        "role=app,path=ok",
        "role=app,format=template,path=dsn,template=pw={{ data.password }}",
    ])
    .await
    .expect_err("missing field");
    let msg = e.to_string();
    assert!(
        msg.contains("dsn") && msg.contains("undefined") && msg.contains("token"),
        "{msg}"
    );
    assert!(tree(&secrets).is_empty(), "{:?}", tree(&secrets));

    // An AWS file from a credential without AWS keys.
    let e = init(&["role=app,format=aws,path=aws/credentials"])
        .await
        .expect_err("not aws");
    assert!(e.to_string().contains("access_key_id"), "{e}");
    // A role the policy does not grant.
    let e = init(&["role=db,path=db"]).await.expect_err("not granted");
    assert!(
        e.to_string().contains("\"db\"") && e.to_string().contains("granted only: app"),
        "{e}"
    );
    assert!(tree(&secrets).is_empty());

    // A symlink planted where a target's directory goes, and one in place of the file.
    let elsewhere = tempfile::tempdir().expect("tmp");
    std::os::unix::fs::symlink(elsewhere.path(), secrets.join("app")).expect("symlink");
    let e = init(&["role=app,path=first", "role=app,path=app/token"])
        .await
        .expect_err("symlinked dir");
    assert!(matches!(e, SidecarError::Refused { .. }), "{e:?}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    std::fs::remove_file(secrets.join("app")).expect("rm link");
    std::os::unix::fs::symlink(elsewhere.path().join("passwd"), secrets.join("token"))
        .expect("symlink");
    let e = init(&["role=app,path=token"])
        .await
        .expect_err("symlinked file");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(tree(&secrets), ["token"], "only the planted link");
    assert!(
        tree(elsewhere.path()).is_empty(),
        "nothing written through links"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flips_only_after_the_write_and_quit_ends_run() {
    let broker = TestBroker::start_with(
        None,
        TestBrokerOptions {
            policies: vec![("p.yaml".into(), SHORT_POLICY.into())],
            ..Default::default()
        },
    )
    .await;
    let work = tempfile::tempdir().expect("tmp");
    let token_file = work.path().join("bootstrap");
    let secrets = work.path().join("secrets");
    let cfg = SidecarConfig {
        // The token is not there yet: the first fetches fail.
        client: broker.client(TokenSource::BootstrapFile(token_file.clone())),
        dir: secrets.clone(),
    };
    let sc = start(
        cfg,
        Options {
            targets: targets(&["role=short,path=short/token"]),
            ..Options::default()
        },
    )
    .await;
    let target = secrets.join("short/token");
    let readyz = format!("{}/readyz", sc.health);
    let mut seen_unready = false;
    for _ in 0..40 {
        let (status, _) = get(&readyz).await;
        if status == 503 {
            seen_unready = true;
            assert!(!target.exists());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        seen_unready,
        "readyz answers 503 before anything is written"
    );
    assert_eq!(get(&format!("{}/healthz", sc.health)).await.0, 200);
    // readyz answers 503 before the first fetch has even run: wait until it has failed on
    // the missing token, so the failure counted below is certain.
    let metrics = format!("{}/metrics", sc.health);
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = get(&metrics).await;
        if metric(&m, "lanyard_sidecar_refresh_failures_total") >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no failed fetch without the token: {m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    std::fs::write(&token_file, broker.mint(&["short"], 60).await).expect("token");
    // The first 200 from readyz implies the file is complete on disk.
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = get(&readyz).await;
        if status == 200 {
            let t = std::fs::read_to_string(&target).expect("written before ready");
            assert_eq!(t.split('.').count(), 3);
            break;
        }
        assert!(tokio::time::Instant::now() < end, "never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, metrics) = get(&metrics).await;
    assert!(
        metric(&metrics, "lanyard_sidecar_refresh_failures_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "lanyard_sidecar_refreshes_total") >= 1.0,
        "{metrics}"
    );
    let expiry = metric(
        &metrics,
        "lanyard_sidecar_credential_expiry_timestamp_seconds{role=\"short\"}",
    );
    let now = lanyard_test_support::now_unix() as f64;
    assert!(expiry > now - 1.0 && expiry <= now + 4.0, "{metrics}");

    // quitquitquit: GET is not enough, POST ends run with Ok (exit 0).
    let http = reqwest::Client::new();
    let quit = format!("{}/quitquitquit", sc.health);
    assert_eq!(
        http.get(&quit).send().await.expect("get").status().as_u16(),
        405
    );
    assert_eq!(
        http.post(&quit)
            .send()
            .await
            .expect("post")
            .status()
            .as_u16(),
        200
    );
    tokio::time::timeout(Duration::from_secs(3), sc.task)
        .await
        .expect("run ends after quitquitquit")
        .expect("join")
        .expect("run ends with Ok");
    drop(sc.stop);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_signals_the_app_and_reaches_watch_streams() {
    let broker = TestBroker::start_with(
        None,
        TestBrokerOptions {
            policies: vec![("p.yaml".into(), SHORT_POLICY.into())],
            ..Default::default()
        },
    )
    .await;
    let work = tempfile::tempdir().expect("tmp");
    let secrets = work.path().join("secrets");
    std::fs::create_dir(&secrets).expect("mkdir");

    // The "application": counts SIGHUPs in a file. A shell cannot trap a signal it started
    // with ignored (as under `nohup`), so `env` sets SIGHUP back to its default first; the
    // guard kills the app however the test ends, so no leftover holds the output open.
    let hups = work.path().join("hups");
    let mut app = KillOnDrop(
        std::process::Command::new("env")
            .args(["--default-signal=HUP", "/bin/sh", "-c"])
            .arg(format!(
                "trap 'echo hup >> {}' HUP; echo ready; while :; do sleep 0.05; done",
                hups.display()
            ))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn app"),
    );
    {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(app.0.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("trap installed");
    }
    let pid_file = work.path().join("app.pid");
    std::fs::write(&pid_file, app.0.id().to_string()).expect("pid");

    // An app that only reads files watches the directory.
    let files = lanyard::files::FileSource::new(&secrets);
    let mut file_events = files.watch().expect("watch dir");

    let token_file = work.path().join("bootstrap");
    std::fs::write(&token_file, broker.mint(&["short"], 60).await).expect("token");
    let sc = start(
        SidecarConfig {
            client: broker.client(TokenSource::BootstrapFile(token_file)),
            dir: secrets.clone(),
        },
        Options {
            targets: targets(&["role=short,path=token"]),
            notify: vec![
                Notify::SignalPidFile {
                    signal: SignalName::Hup,
                    pid_file,
                },
                Notify::Touch {
                    path: work.path().join("rotated"),
                },
            ],
            ..Options::default()
        },
    )
    .await;

    // The baseline is read right after the first write: the SDK watch below may take long
    // enough for the ~2.1 s rotation to happen first. The SIGHUP count is read after it, so
    // only a later rotation's signal counts.
    wait_until("the first write", Duration::from_secs(10), || {
        secrets.join("token").exists()
    })
    .await;
    let before = files.read("token").expect("read");
    let hups_before = std::fs::read_to_string(&hups).map_or(0, |s| s.lines().count());

    // And an SDK app keeps its own credentials fresh with a watch stream.
    let sdk_token = work.path().join("bootstrap-sdk");
    std::fs::write(&sdk_token, broker.mint(&["short"], 60).await).expect("token");
    let mut watch = broker.client(TokenSource::BootstrapFile(sdk_token)).watch();
    let first = tokio::time::timeout(Duration::from_secs(3), watch.next())
        .await
        .expect("first update")
        .expect("open")
        .expect("fetch ok");
    let first_lease = first.credentials[0].lease_id.clone();

    // A 3 s credential is refreshed at about 2.1 s: the app gets a SIGHUP.
    wait_until(
        "a SIGHUP after the rotation",
        Duration::from_secs(6),
        || std::fs::read_to_string(&hups).is_ok_and(|s| s.lines().count() > hups_before),
    )
    .await;
    let after = files.read("token").expect("read");
    assert_ne!(
        before.expose(),
        after.expose(),
        "the signal follows a new credential"
    );
    assert!(work.path().join("rotated").exists(), "touch ran too");
    let ev = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let ev = file_events.next().await.expect("open");
            if ev.path == Path::new("token") && !ev.removed {
                return ev;
            }
        }
    })
    .await
    .expect("the file source saw the rotation");
    assert_eq!(ev.path, PathBuf::from("token"));

    let second = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("second update")
        .expect("open")
        .expect("refresh ok");
    assert_ne!(second.credentials[0].lease_id, first_lease, "a new lease");
    assert_eq!(
        watch.current().map(|c| c.credentials[0].lease_id.clone()),
        Some(second.credentials[0].lease_id.clone())
    );

    let _ = sc.stop.send(true);
    sc.task.await.expect("join").expect("run ok");
    drop(app);
    broker.stop().await;
}

/// A child process killed (and reaped) when the test lets go of it, panicking or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_keeps_the_old_credential_marks_it_at_expiry_and_recovers() {
    let mut broker = TestBroker::start_with(
        None,
        TestBrokerOptions {
            policies: vec![("p.yaml".into(), SHORT_POLICY.into())],
            ..Default::default()
        },
    )
    .await;
    let work = tempfile::tempdir().expect("tmp");
    let secrets = work.path().join("secrets");
    let token_file = work.path().join("bootstrap");
    std::fs::write(&token_file, broker.mint(&["short"], 60).await).expect("token");
    let sc = start(
        SidecarConfig {
            client: broker.client(TokenSource::BootstrapFile(token_file)),
            dir: secrets.clone(),
        },
        Options {
            targets: targets(&["role=short,path=token"]),
            on_expiry: OnExpiry::Mark,
            ..Options::default()
        },
    )
    .await;
    let file = secrets.join("token");
    let marker = secrets.join("token.expired");
    wait_until("the first write", Duration::from_secs(3), || file.exists()).await;
    let first = std::fs::read_to_string(&file).expect("first");
    broker.pause().await;

    // The refresh at ~70% fails, and again after a backoff; the file keeps the old token.
    // Generous: this is the real clock, and the loop ends as soon as both are counted.
    let metrics = format!("{}/metrics", sc.health);
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = get(&metrics).await;
        if metric(&m, "lanyard_sidecar_refresh_failures_total") >= 2.0 {
            break;
        }
        assert_eq!(std::fs::read_to_string(&file).expect("kept"), first);
        assert!(
            tokio::time::Instant::now() < end,
            "no failures counted: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past its expiry it is marked (and readiness drops), the file itself is kept.
    wait_until("the expired marker", Duration::from_secs(4), || {
        marker.exists()
    })
    .await;
    assert_eq!(std::fs::read_to_string(&file).expect("kept"), first);
    assert_eq!(get(&format!("{}/readyz", sc.health)).await.0, 503);

    // The broker comes back on the same address: the next retry writes a new credential.
    broker.resume().await;
    wait_until("recovery", Duration::from_secs(5), || {
        std::fs::read_to_string(&file).is_ok_and(|t| t != first)
    })
    .await;
    wait_until("the marker goes", Duration::from_secs(1), || {
        !marker.exists()
    })
    .await;
    assert_eq!(get(&format!("{}/readyz", sc.health)).await.0, 200);

    let _ = sc.stop.send(true);
    sc.task.await.expect("join").expect("run ok");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_revoked_on_shutdown_when_asked() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let work = tempfile::tempdir().expect("tmp");
    let token_file = work.path().join("sa-token");
    std::fs::write(&token_file, issuer.k8s_token("shop", "api", "lanyard", 600)).expect("write");
    let secrets = work.path().join("secrets");
    let sc = start(
        SidecarConfig {
            client: broker.client(TokenSource::JwtFile(token_file)),
            dir: secrets.clone(),
        },
        Options {
            revoke_on_shutdown: true,
            ..Options::default()
        },
    )
    .await;
    // Counted once the write is complete and the lease is held.
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    while metric(
        &get(&format!("{}/metrics", sc.health)).await.1,
        "lanyard_sidecar_refreshes_total",
    ) < 1.0
    {
        assert!(tokio::time::Instant::now() < end, "never wrote");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(secrets.join("app.json")).expect("json"))
            .expect("parse");
    let lease = json["lease_id"].as_str().expect("lease").to_owned();
    let _ = sc.stop.send(true);
    sc.task.await.expect("join").expect("run ok");
    let revoked: Vec<_> = broker
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "lease_revoke")
        .collect();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["lease_id"], lease.as_str());
    broker.stop().await;
}
