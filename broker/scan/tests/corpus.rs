//! The evaluation corpus (`tests/corpus/`): labelled secret and not-secret snippets in the
//! file forms containers carry. Each snippet becomes a file in one image layer (an OCI layout
//! this test writes with GNU tar and gzip); the image is scanned through the same path as any
//! other (`lanyard_scan::scan`), and recall (secrets found) and the false-positive rate
//! (hard negatives flagged) are computed per class, printed, and held to the thresholds:
//! recall ≥ 90% and false positives ≤ 1%.
//!
//! Secret values are generated here from `{{gen:KIND}}` slots with a seeded generator, so the
//! repository holds no token-shaped strings; the output names snippets, never values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use lanyard_scan::report::counts;
use lanyard_scan::{Location, ScanOptions, Source, scan};

/// Minimum recall over all secret snippets.
const MIN_RECALL: f64 = 0.90;
/// Maximum false-positive rate over all hard negatives.
const MAX_FP_RATE: f64 = 0.01;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus")
}

/// Deterministic generator (splitmix64): values that look random without being anyone's.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn s(&mut self, alphabet: &str, len: usize) -> String {
        let a = alphabet.as_bytes();
        (0..len).map(|_| a[self.below(a.len())] as char).collect()
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
}

const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
const DIGITS: &str = "0123456789";
const HEX: &str = "0123456789abcdef";
const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const B64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URLSAFE: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
const B32: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const B32L: &str = "abcdefghijklmnopqrstuvwxyz234567";
const UPALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const LOWALNUM: &str = "abcdefghijklmnopqrstuvwxyz0123456789";

fn base64(data: &[u8]) -> String {
    let a = B64.as_bytes();
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(a[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn uuid(r: &mut Rng) -> String {
    format!(
        "{}-{}-4{}-{}{}-{}",
        r.s(HEX, 8),
        r.s(HEX, 4),
        r.s(HEX, 3),
        r.s("89ab", 1),
        r.s(HEX, 3),
        r.s(HEX, 12)
    )
}

/// A password a person might pick: letters, digits and a symbol, 8 to 16 characters.
fn password(r: &mut Rng) -> String {
    let len = r.range(8, 16);
    let mut p = r.s(ALNUM, len - 2);
    p.push_str(&r.s(DIGITS, 1));
    p.push_str(&r.s("!#%&*+-=?@^_", 1));
    p
}

fn pem(r: &mut Rng, label: &str, lines: usize) -> String {
    let mut s = format!("-----BEGIN {label}-----\n");
    for _ in 0..lines {
        s.push_str(&r.s(B64, 64));
        s.push('\n');
    }
    s.push_str(&r.s(B64, 24));
    s.push_str("==\n");
    s.push_str(&format!("-----END {label}-----"));
    s
}

/// One generated value of `kind`.
fn generate(kind: &str, r: &mut Rng) -> String {
    let digits = |r: &mut Rng, n| r.s("123456789", 1) + &r.s(DIGITS, n - 1);
    match kind {
        // --- cloud
        "aws_akid" => format!("AKIA{}", r.s(B32, 16)),
        "aws_asia" => format!("ASIA{}", r.s(B32, 16)),
        "aws_secret" => r.s(B64, 40),
        "aws_session" => format!("IQoJb3JpZ2luX2Vj{}", r.s(B64, 300)),
        "gcp_api" => format!("AIza{}", r.s(URLSAFE, 35)),
        "gcp_oauth_secret" => format!("GOCSPX-{}", r.s(URLSAFE, 28)),
        "gcp_key_id" => r.s(HEX, 40),
        "gcp_access_token" => format!("ya29.{}", r.s(URLSAFE, 120)),
        "gcp_refresh_token" => format!("1//0{}", r.s(URLSAFE, 100)),
        "azure_storage_key" => format!("{}==", r.s(B64, 86)),
        "azure_sb_key" => format!("{}=", r.s(B64, 43)),
        "azure_sas_sig" => format!("{}%3D", r.s(ALNUM, 43)),
        "azure_client_secret" => {
            format!("{}{}Q~{}", r.s(ALNUM, 3), r.s(DIGITS, 1), r.s(URLSAFE, 34))
        }
        "azure_devops_pat" => r.s(B32L, 52),
        "azure_key32" => r.s(HEX, 32),
        "do_token" => format!("dop_v1_{}", r.s(HEX, 64)),
        "alibaba_akid" => format!("LTAI{}", r.s(ALNUM, 20)),
        "alibaba_secret" => r.s(ALNUM, 30),
        "heroku_key" => uuid(r),
        "heroku_new" => format!("HRKU-AA{}", r.s(URLSAFE, 58)),
        "scaleway_akid" => format!("SCW{}", r.s(UPALNUM, 17)),
        "ibm_key" => r.s(URLSAFE, 44),
        "linode_token" => r.s(HEX, 64),
        "cloudflare_token" => r.s(URLSAFE, 40),
        // --- code hosting and CI
        "github_pat" => format!("ghp_{}", r.s(ALNUM, 36)),
        "github_oauth" => format!("gho_{}", r.s(ALNUM, 36)),
        "github_app" => format!("ghs_{}", r.s(ALNUM, 36)),
        "github_user" => format!("ghu_{}", r.s(ALNUM, 36)),
        "github_refresh" => format!("ghr_{}", r.s(ALNUM, 76)),
        "github_fine" => format!("github_pat_{}_{}", r.s(ALNUM, 22), r.s(ALNUM, 59)),
        "gitlab_pat" => format!("glpat-{}", r.s(URLSAFE, 20)),
        "gitlab_oauth_secret" => format!("gloas-{}", r.s(HEX, 64)),
        "gitlab_deploy" => format!("gldt-{}", r.s(URLSAFE, 20)),
        "gitlab_runner" => format!("glrt-{}", r.s(URLSAFE, 20)),
        "gitlab_runner_reg" => format!("GR1348941{}", r.s(URLSAFE, 20)),
        "gitlab_job" => format!("glcbt-{}_{}", r.s(HEX, 2), r.s(URLSAFE, 20)),
        "gitlab_trigger" => format!("glptt-{}", r.s(HEX, 40)),
        "gitlab_feed" => format!("glft-{}", r.s(URLSAFE, 20)),
        "gitlab_mail" => format!("glimt-{}", r.s(LOWALNUM, 25)),
        "gitlab_agent" => format!("glagent-{}", r.s(URLSAFE, 50)),
        "gitlab_scim" => format!("glsoat-{}", r.s(URLSAFE, 20)),
        "gitlab_ffc" => format!("glffct-{}", r.s(URLSAFE, 20)),
        "bitbucket_app_pw" => format!("ATBB{}", r.s(ALNUM, 32)),
        "atlassian_token" => format!("ATATT3xFfGF0{}", r.s(URLSAFE, 180)),
        "buildkite" => format!("bkua_{}", r.s(HEX, 40)),
        "circleci_pat" => format!("CCIPAT_{}_{}", r.s(ALNUM, 22), r.s(HEX, 40)),
        "travis_token" => r.s(URLSAFE, 22),
        "sourcegraph" => format!("sgp_{}", r.s(HEX, 40)),
        "jenkins_token" => format!("11{}", r.s(HEX, 32)),
        "azure_devops_token" => r.s(B32L, 52),
        "drone_token" => r.s(ALNUM, 32),
        // --- registries
        "npm" => format!("npm_{}", r.s(ALNUM, 36)),
        "pypi" => format!("pypi-AgEIcHlwaS5vcmc{}", r.s(URLSAFE, 70)),
        "rubygems" => format!("rubygems_{}", r.s(HEX, 48)),
        "dockerhub" => format!("dckr_pat_{}", r.s(URLSAFE, 27)),
        "nuget" => format!("oy2{}", r.s(LOWALNUM, 43)),
        "cargo" => format!("cio{}", r.s(ALNUM, 32)),
        "jfrog" => format!("AKCp{}", r.s(ALNUM, 69)),
        "clojars" => format!("CLOJARS_{}", r.s(LOWALNUM, 60)),
        "packagist" => format!("packagist_uut_{}", r.s(HEX, 68)),
        "docker_auth" => {
            let u = format!("{}{}", r.s(LOWER, 6), r.s(DIGITS, 2));
            base64(format!("{u}:{}", password(r)).as_bytes())
        }
        "dockerconfigjson" => {
            let auth = generate("docker_auth", r);
            base64(
                format!("{{\"auths\":{{\"registry.shop.example\":{{\"auth\":\"{auth}\"}}}}}}")
                    .as_bytes(),
            )
        }
        "registry_token" => r.s(URLSAFE, 64),
        // --- messaging and SaaS
        "slack_bot" => format!(
            "xoxb-{}-{}-{}",
            digits(r, 12),
            digits(r, 13),
            r.s(ALNUM, 24)
        ),
        "slack_user" => format!(
            "xoxp-{}-{}-{}-{}",
            digits(r, 12),
            digits(r, 12),
            digits(r, 13),
            r.s(HEX, 32)
        ),
        "slack_app" => format!(
            "xapp-1-A{}-{}-{}",
            r.s(UPALNUM, 10),
            digits(r, 13),
            r.s(HEX, 64)
        ),
        "slack_config" => format!("xoxe.xoxp-1-{}", r.s(URLSAFE, 160)),
        "slack_refresh" => format!("xoxe-1-{}", r.s(URLSAFE, 140)),
        "slack_webhook" => format!(
            "https://hooks.slack.com/services/T{}/B{}/{}",
            r.s(UPALNUM, 10),
            r.s(UPALNUM, 10),
            r.s(ALNUM, 24)
        ),
        "slack_workflow" => format!(
            "https://hooks.slack.com/triggers/T{}/{}/{}",
            r.s(UPALNUM, 10),
            digits(r, 13),
            r.s(HEX, 32)
        ),
        "discord_webhook" => format!(
            "https://discord.com/api/webhooks/{}/{}",
            digits(r, 18),
            r.s(URLSAFE, 68)
        ),
        "discord_bot" => format!(
            "M{}.{}.{}",
            r.s(URLSAFE, 25),
            r.s(URLSAFE, 6),
            r.s(URLSAFE, 38)
        ),
        "teams_webhook" => format!(
            "https://acme.webhook.office.com/webhookb2/{}@{}/IncomingWebhook/{}/{}",
            uuid(r),
            uuid(r),
            r.s(HEX, 32),
            uuid(r)
        ),
        "telegram" => format!("{}:AA{}", digits(r, 10), r.s(URLSAFE, 33)),
        "stripe_live" => format!("sk_live_{}", r.s(ALNUM, 99)),
        "stripe_restricted" => format!("rk_live_{}", r.s(ALNUM, 99)),
        "stripe_whsec" => format!("whsec_{}", r.s(ALNUM, 32)),
        "square" => format!("EAAA{}", r.s(URLSAFE, 60)),
        "shopify" => format!("shpat_{}", r.s(HEX, 32)),
        "twilio_sid" => format!("SK{}", r.s(HEX, 32)),
        "twilio_auth" => r.s(HEX, 32),
        "sendgrid" => format!("SG.{}.{}", r.s(URLSAFE, 22), r.s(URLSAFE, 43)),
        "mailgun" => format!("key-{}", r.s(HEX, 32)),
        "mailchimp" => format!("{}-us{}", r.s(HEX, 32), r.range(1, 21)),
        "brevo" => format!("xkeysib-{}-{}", r.s(HEX, 64), r.s(ALNUM, 16)),
        "postmark" => uuid(r),
        "datadog" => r.s(HEX, 32),
        "newrelic" => format!("NRAK-{}", r.s(UPALNUM, 27)),
        "newrelic_insert" => format!("NRII-{}", r.s(URLSAFE, 32)),
        "sentry" => format!("sntrys_eyJpYXQiOjE3{}", r.s(ALNUM, 120)),
        "grafana_sa" => format!("glsa_{}_{}", r.s(ALNUM, 32), r.s(HEX, 8)),
        "linear" => format!("lin_api_{}", r.s(ALNUM, 40)),
        "postman" => format!("PMAK-{}-{}", r.s(HEX, 24), r.s(HEX, 34)),
        "databricks" => format!("dapi{}", r.s("abcdefgh0123456789", 32)),
        "terraform" => format!("{}.atlasv1.{}", r.s(ALNUM, 14), r.s(URLSAFE, 67)),
        "pulumi" => format!("pul-{}", r.s(HEX, 40)),
        "doppler" => format!("dp.st.{}", r.s(ALNUM, 43)),
        "openai" => format!("sk-proj-{}", r.s(URLSAFE, 120)),
        "anthropic" => format!("sk-ant-api03-{}AA", r.s(URLSAFE, 93)),
        "huggingface" => format!("hf_{}", r.s(&(UPPER.to_owned() + LOWER), 34)),
        "airtable" => format!("pat{}.{}", r.s(ALNUM, 14), r.s(HEX, 64)),
        "contentful" => format!("CFPAT-{}", r.s(URLSAFE, 43)),
        "dynatrace" => format!("dt0c01.{}.{}", r.s(UPALNUM, 24), r.s(UPALNUM, 64)),
        "easypost" => format!("EZAK{}", r.s(ALNUM, 54)),
        "figma" => format!("figd_{}", r.s(URLSAFE, 40)),
        "flyio" => format!("fo1_{}", r.s(URLSAFE, 43)),
        "netlify" => format!("nfp_{}", r.s(ALNUM, 36)),
        "notion" => format!("ntn_{}", r.s(ALNUM, 46)),
        "planetscale" => format!("pscale_tkn_{}", r.s(URLSAFE, 43)),
        "prefect" => format!("pnu_{}", r.s(ALNUM, 36)),
        "readme" => format!("rdme_{}", r.s(LOWALNUM, 70)),
        "render" => format!("rnd_{}", r.s(ALNUM, 32)),
        "replicate" => format!("r8_{}", r.s(ALNUM, 37)),
        "supabase" => format!("sbp_{}", r.s(HEX, 40)),
        "tailscale" => format!("tskey-auth-k{}-{}", r.s(ALNUM, 16), r.s(ALNUM, 32)),
        "groq" => format!("gsk_{}", r.s(ALNUM, 52)),
        "langsmith" => format!("lsv2_pt_{}_{}", r.s(HEX, 32), r.s(HEX, 10)),
        "pinecone" => format!("pcsk_{}_{}", r.s(ALNUM, 6), r.s(ALNUM, 63)),
        "mapbox" => format!("sk.eyJ1Ijoi{}.{}", r.s(ALNUM, 50), r.s(URLSAFE, 22)),
        "onepassword" => format!("ops_eyJzaWduSW5BZGRyZXNzIjoi{}", r.s(ALNUM, 300)),
        "octopus" => format!("API-{}", r.s(UPALNUM, 26)),
        "harness" => format!(
            "pat.{}.{}.{}",
            r.s(URLSAFE, 22),
            r.s(HEX, 24),
            r.s(ALNUM, 20)
        ),
        "adafruit" => format!("aio_{}", r.s(ALNUM, 28)),
        "braintree" => format!(
            "access_token$production${}${}",
            r.s(LOWALNUM, 16),
            r.s(HEX, 32)
        ),
        "plaid" => format!("access-production-{}", uuid(r)),
        "resend" => format!("re_{}_{}", r.s(ALNUM, 8), r.s(ALNUM, 24)),
        "dropbox" => format!("sl.{}", r.s(URLSAFE, 136)),
        "age" => format!(
            "AGE-SECRET-KEY-1{}",
            r.s("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)
        ),
        "jwt" => format!(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{}.{}",
            r.s(URLSAFE, 60),
            r.s(URLSAFE, 43)
        ),
        "vault_hvs" => format!("hvs.{}", r.s(URLSAFE, 90)),
        "vault_hvb" => format!("hvb.AAAAAQ{}", r.s(URLSAFE, 130)),
        "vault_hvr" => format!("hvr.{}", r.s(ALNUM, 24)),
        "vault_legacy" => format!("s.{}", r.s(ALNUM, 24)),
        "vault_legacy_batch" => format!("b.AAAAAQ{}", r.s(URLSAFE, 130)),
        "uuid" => uuid(r),
        "hex32" => r.s(HEX, 32),
        "hex40" => r.s(HEX, 40),
        "hex64" => r.s(HEX, 64),
        "alnum20" => r.s(ALNUM, 20),
        "alnum32" => r.s(ALNUM, 32),
        "b64_44" => format!("{}=", r.s(B64, 43)),
        "okta" => format!("00{}", r.s(URLSAFE, 40)),
        // --- passwords and private keys
        "pw" => password(r),
        "pw_short" => format!("{}{}", r.s(LOWER, 3), r.s(DIGITS, 2)),
        "pw_alpha" => {
            let n = r.range(9, 14);
            r.s(LOWER, n)
        }
        "pw_long" => r.s(URLSAFE, 32),
        "pem_rsa" => pem(r, "RSA PRIVATE KEY", 12),
        "pem_ec" => pem(r, "EC PRIVATE KEY", 2),
        "pem_pkcs8" => pem(r, "PRIVATE KEY", 14),
        "pem_openssh" => pem(r, "OPENSSH PRIVATE KEY", 6),
        "pem_encrypted" => pem(r, "ENCRYPTED PRIVATE KEY", 14),
        "pem_dsa" => pem(r, "DSA PRIVATE KEY", 6),
        "pgp_private" => {
            let p = pem(r, "PGP PRIVATE KEY BLOCK", 10);
            p.replacen("-----\n", "-----\n\n", 1)
        }
        // --- negatives: identifiers and hashes
        "sha256" => r.s(HEX, 64),
        "sha1" => r.s(HEX, 40),
        "md5" => r.s(HEX, 32),
        "sha512_b64" => format!("sha512-{}==", r.s(B64, 86)),
        "git_sha" => r.s(HEX, 40),
        "ec2_id" => format!("i-0{}", r.s(HEX, 16)),
        "account_id" => digits(r, 12),
        "int" => {
            let n = r.range(4, 9);
            digits(r, n)
        }
        "ssh_pub" => format!("AAAAC3NzaC1lZDI1NTE5AAAAI{}", r.s(B64, 43)),
        "word" => {
            let n = r.range(5, 10);
            r.s(LOWER, n)
        }
        other => panic!("unknown generator {other}"),
    }
}

/// Applies a slot modifier to a generated value.
fn modify(v: String, modifier: Option<&str>) -> String {
    match modifier {
        None => v,
        Some("json") => v.replace('\n', "\\n"),
        Some("b64") => base64(v.as_bytes()),
        Some(m) if m.starts_with("ind") => {
            let n: usize = m[3..].parse().expect("indent width");
            v.replace('\n', &format!("\n{}", " ".repeat(n)))
        }
        Some(m) => panic!("unknown modifier {m}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Secret,
    Negative,
}

/// One labelled snippet, rendered.
struct Snippet {
    id: String,
    label: Label,
    class: String,
    /// Path inside the image (no leading `/`).
    path: String,
    text: String,
    /// Line ranges (1-based, inclusive) that hold a generated secret value.
    secret_lines: Vec<(u64, u64)>,
}

/// Expands `{{gen:KIND}}` and `{{gen:KIND|MOD}}` slots; records the lines each slot covers.
fn render(body: &str, rng: &mut Rng) -> (String, Vec<(u64, u64)>) {
    let mut out = String::new();
    let mut lines = Vec::new();
    let mut rest = body;
    while let Some(pos) = rest.find("{{gen:") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 6..];
        let end = after.find("}}").expect("unclosed {{gen:");
        let spec = &after[..end];
        let (kind, modifier) = match spec.split_once('|') {
            Some((k, m)) => (k, Some(m)),
            None => (spec, None),
        };
        let value = modify(generate(kind, rng), modifier);
        let start = out.matches('\n').count() as u64 + 1;
        out.push_str(&value);
        lines.push((start, start + value.matches('\n').count() as u64));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    (out, lines)
}

/// Parses one corpus file: `=== secret|negative CLASS PATH` headers, each followed by the
/// snippet's text up to the next header. Lines before the first header are comments.
fn parse(name: &str, text: &str) -> Vec<Snippet> {
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut out = Vec::new();
    let mut header: Option<(Label, String, String)> = None;
    let mut body = String::new();
    let mut flush = |header: &mut Option<(Label, String, String)>, body: &mut String| {
        if let Some((label, class, path)) = header.take() {
            let n = out.len();
            let mut rng = Rng(seed ^ (n as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let trimmed = body.trim_end_matches('\n');
            let (text, secret_lines) = render(&format!("{trimmed}\n"), &mut rng);
            let stem = name.trim_end_matches(".txt");
            out.push(Snippet {
                id: format!("{stem}#{}", n + 1),
                label,
                class,
                path: format!("srv/corpus/{stem}-{:03}/{path}", n + 1),
                text,
                secret_lines,
            });
        }
        body.clear();
    };
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("=== ") {
            flush(&mut header, &mut body);
            let parts: Vec<&str> = h.split_whitespace().collect();
            assert_eq!(parts.len(), 3, "{name}: bad header {line:?}");
            let label = match parts[0] {
                "secret" => Label::Secret,
                "negative" => Label::Negative,
                other => panic!("{name}: bad label {other}"),
            };
            header = Some((label, parts[1].to_owned(), parts[2].to_owned()));
        } else if header.is_some() {
            body.push_str(line);
            body.push('\n');
        }
    }
    flush(&mut header, &mut body);
    out
}

fn load_corpus() -> Vec<Snippet> {
    let mut names: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("tests/corpus")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".txt"))
        .collect();
    names.sort();
    let mut all = Vec::new();
    for n in names {
        let text = std::fs::read_to_string(corpus_dir().join(&n)).expect("read corpus file");
        all.extend(parse(&n, &text));
    }
    all
}

/// Writes the snippets as files of a one-layer OCI image layout (GNU tar, gzip).
fn write_image(dir: &Path, snippets: &[Snippet]) -> PathBuf {
    use std::io::Write as _;
    let root = dir.join("root");
    for s in snippets {
        let p = root.join(&s.path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, &s.text).expect("write snippet");
    }
    let tar = dir.join("layer.tar");
    let status = Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
        ])
        .arg(&tar)
        .arg("-C")
        .arg(&root)
        .arg("srv")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
    let raw = std::fs::read(&tar).expect("read tar");
    let diff_id = lanyard_scan::util::sha256_digest(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    let layer = gz.finish().expect("gzip");
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let put = |bytes: &[u8]| -> (String, usize) {
        let d = lanyard_scan::util::sha256_digest(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes).expect("blob");
        (d, bytes.len())
    };
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "COPY corpus /srv/corpus"}],
    })
    .to_string();
    let (config_digest, config_size) = put(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}],
    })
    .to_string();
    let (manifest_digest, manifest_size) = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"org.opencontainers.image.ref.name": "corpus"},
                       "platform": {"os": "linux", "architecture": "amd64"}}],
    })
    .to_string();
    std::fs::write(layout.join("index.json"), index).expect("index");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    layout
}

#[derive(Default)]
struct Tally {
    total: usize,
    flagged: usize,
    ids: Vec<String>,
}

#[tokio::test]
async fn corpus_recall_and_false_positive_rate_meet_the_thresholds() {
    let snippets = load_corpus();
    assert!(snippets.len() >= 300, "only {} snippets", snippets.len());
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = write_image(dir.path(), &snippets);
    let report = scan(
        &Source::OciDir {
            path: layout,
            tag: Some("corpus".into()),
        },
        &ScanOptions::default(),
    )
    .await
    .expect("scan");
    assert_eq!(report.images.len(), 1);
    let image = &report.images[0];
    assert!(image.incomplete.is_empty(), "{:?}", image.incomplete);
    // Counting findings by path: (line, rule).
    let mut by_path: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    for f in image.findings.iter().filter(|f| counts(f)) {
        if let Location::File { path, line, .. } = &f.location {
            by_path
                .entry(path.as_str())
                .or_default()
                .push((*line, f.rule.as_str()));
        }
    }
    let mut secrets: BTreeMap<String, Tally> = BTreeMap::new();
    let mut negatives: BTreeMap<String, Tally> = BTreeMap::new();
    for s in &snippets {
        let found = by_path.get(s.path.as_str()).cloned().unwrap_or_default();
        let (tally, hit) = match s.label {
            Label::Secret => {
                assert!(
                    !s.secret_lines.is_empty(),
                    "{}: a secret snippet needs a {{{{gen:}}}} slot",
                    s.id
                );
                let hit = found
                    .iter()
                    .any(|(line, _)| s.secret_lines.iter().any(|(a, b)| (*a..=*b).contains(line)));
                (secrets.entry(s.class.clone()).or_default(), hit)
            }
            Label::Negative => (
                negatives.entry(s.class.clone()).or_default(),
                !found.is_empty(),
            ),
        };
        tally.total += 1;
        if hit {
            tally.flagged += 1;
        }
        if hit == (s.label == Label::Negative) {
            let rules: Vec<&str> = found.iter().map(|(_, r)| *r).collect();
            tally.ids.push(format!("{} [{}]", s.id, rules.join(",")));
        }
    }
    let sum = |m: &BTreeMap<String, Tally>| {
        m.values()
            .fold((0, 0), |(t, f), x| (t + x.total, f + x.flagged))
    };
    println!(
        "corpus: {} snippets, ruleset {}",
        snippets.len(),
        report.ruleset_version
    );
    println!(
        "{:<14} {:>6} {:>6} {:>8}",
        "secret class", "n", "found", "recall"
    );
    for (class, t) in &secrets {
        println!(
            "{class:<14} {:>6} {:>6} {:>7.1}%",
            t.total,
            t.flagged,
            100.0 * t.flagged as f64 / t.total as f64
        );
    }
    let (st, sf) = sum(&secrets);
    let recall = sf as f64 / st as f64;
    println!("{:<14} {st:>6} {sf:>6} {:>7.1}%", "ALL", 100.0 * recall);
    println!(
        "{:<14} {:>6} {:>6} {:>8}",
        "negative class", "n", "flagged", "FP rate"
    );
    for (class, t) in &negatives {
        println!(
            "{class:<14} {:>6} {:>6} {:>7.1}%",
            t.total,
            t.flagged,
            100.0 * t.flagged as f64 / t.total as f64
        );
    }
    let (nt, nf) = sum(&negatives);
    let fp = nf as f64 / nt as f64;
    println!("{:<14} {nt:>6} {nf:>6} {:>7.1}%", "ALL", 100.0 * fp);
    for (class, t) in &secrets {
        if !t.ids.is_empty() {
            println!("missed ({class}): {}", t.ids.join(" "));
        }
    }
    for (class, t) in &negatives {
        if !t.ids.is_empty() {
            println!("false positive ({class}): {}", t.ids.join(" "));
        }
    }
    assert!(
        recall >= MIN_RECALL,
        "recall {:.1}% < {:.0}%",
        100.0 * recall,
        100.0 * MIN_RECALL
    );
    assert!(
        fp <= MAX_FP_RATE,
        "false-positive rate {:.1}% > {:.0}%",
        100.0 * fp,
        100.0 * MAX_FP_RATE
    );
}

#[test]
fn generated_values_are_stable_and_slots_are_located() {
    let text =
        "=== secret cloud a.env\nX=1\nKEY={{gen:aws_secret}}\n=== negative code b.py\nx = 1\n";
    let a = parse("t.txt", text);
    let b = parse("t.txt", text);
    assert_eq!(a.len(), 2);
    assert_eq!(
        a[0].text, b[0].text,
        "seeded: the same corpus gives the same values"
    );
    assert_eq!(a[0].secret_lines, vec![(2, 2)]);
    assert_eq!(a[0].path, "srv/corpus/t-001/a.env");
    assert!(a[1].secret_lines.is_empty());
    let (pem, lines) = render("k: |\n  {{gen:pem_ec|ind2}}\n", &mut Rng(1));
    assert_eq!(
        lines,
        vec![(2, 6)],
        "header, two body lines, the last line, footer"
    );
    assert!(pem.lines().skip(1).all(|l| l.starts_with("  ")));
}
