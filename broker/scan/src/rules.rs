//! Detection rules: provider patterns behind a keyword prefilter, generic assignments, secret
//! environment names, and credential files recognised by name. All decisions here are pure
//! functions over bytes; the layer reader feeds them.
//!
//! # Layout
//! - this file: the rule types, the built-in provider rules, file kinds, the compiled
//!   [`RuleSet`] (keyword prefilter, regexes, the assignment pass), entropy, the placeholder
//!   filter, overlap resolution, secret names, test-material and package paths.
//! - [`families`]: token families completed from providers' documentation (GitLab, Slack,
//!   Vault, embedded private keys, the long tail of SaaS keys).
//! - [`assign`]: the structured-assignment detector behind the `generic-*` rules.
//! - [`placeholder`]: filler, sample credentials, references and non-literal values.

pub mod assign;
pub mod families;
pub mod placeholder;

use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::bytes::Regex;
use serde::{Deserialize, Serialize};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Reported, never makes an image dirty (public test material shipped in packages).
    Info,
    /// A weak credential or one of limited reach.
    Low,
    /// A credential with some reach (a password in a URL, a JWT).
    Medium,
    /// A provider credential or private key.
    High,
    /// A cloud root-like credential (cloud keys, payment live keys).
    Critical,
}

/// How sure the rule is that the match is a real secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// A generic pattern (`password=...`); may be a false positive.
    Low,
    /// A structured match without a provider-specific prefix.
    Medium,
    /// A provider-specific format (`ghp_`, `AKIA`, PEM header...).
    High,
}

/// What kind of value a rule finds; decides how it is fingerprinted and previewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretClass {
    /// Random, long values (API keys, private keys): the fingerprint hashes the value.
    HighEntropy,
    /// Possibly guessable values (passwords): the fingerprint hashes the location, never the
    /// value, so it cannot be used to confirm a guess.
    PasswordLike,
}

/// One rule's definition.
#[derive(Debug, Clone)]
pub struct RuleDef {
    /// Stable identifier, e.g. `github-pat`.
    pub id: &'static str,
    /// One line for humans.
    pub description: &'static str,
    /// Case-insensitive keywords; the regex runs only on text that holds one. Empty: never
    /// runs on content (assignment-only rules).
    pub keywords: &'static [&'static str],
    /// Regex over bytes (`(?-u)` is prepended). The secret is the group named `s`, else the
    /// whole match.
    pub pattern: &'static str,
    /// Default severity.
    pub severity: Severity,
    /// Confidence.
    pub confidence: Confidence,
    /// Fingerprint/preview class.
    pub class: SecretClass,
    /// 0 generic, 1 structured, 2 provider-specific: on overlapping matches the higher wins.
    pub priority: u8,
    /// Minimum Shannon entropy (bits per byte) of the secret.
    pub min_entropy: f64,
    /// Skip in binary files (generic patterns are noise there).
    pub text_only: bool,
}

const fn rule(
    id: &'static str,
    description: &'static str,
    keywords: &'static [&'static str],
    pattern: &'static str,
    severity: Severity,
) -> RuleDef {
    RuleDef {
        id,
        description,
        keywords,
        pattern,
        severity,
        confidence: Confidence::High,
        class: SecretClass::HighEntropy,
        priority: 2,
        min_entropy: 0.0,
        text_only: false,
    }
}

impl RuleDef {
    const fn conf(mut self, c: Confidence) -> Self {
        self.confidence = c;
        self
    }
    const fn password(mut self) -> Self {
        self.class = SecretClass::PasswordLike;
        self
    }
    const fn prio(mut self, p: u8) -> Self {
        self.priority = p;
        self
    }
    const fn entropy(mut self, e: f64) -> Self {
        self.min_entropy = e;
        self
    }
    const fn text(mut self) -> Self {
        self.text_only = true;
        self
    }
}

use Confidence as C;
use Severity as S;

/// End of a token: a non-token byte or the end of the text.
macro_rules! end {
    () => {
        r"(?:[^A-Za-z0-9_\-]|$)"
    };
}

/// The built-in content rules, in reporting order: the provider rules below, then
/// [`families::rules`], then the assignment rules (`generic-*`, found by [`assign`]).
pub fn builtin_rules() -> Vec<RuleDef> {
    let mut v = provider_rules();
    v.extend(families::rules());
    v.extend(assignment_rules());
    v
}

/// The three rules the structured-assignment detector ([`assign`]) reports. They have no
/// keywords and no pattern of their own: [`RuleSet::scan_form`] runs the detector behind the
/// keyword prefilter ([`assign::KEYWORDS`]) in text files.
fn assignment_rules() -> Vec<RuleDef> {
    vec![
        rule(
            "generic-password",
            "password assigned to a credential-named key",
            &[],
            "",
            S::Medium,
        )
        .prio(0)
        .password()
        .conf(C::Low)
        .text(),
        rule(
            "generic-secret",
            "secret assigned to a credential-named key",
            &[],
            "",
            S::Medium,
        )
        .prio(0)
        .password()
        .conf(C::Low)
        .text(),
        rule(
            "generic-token",
            "token or API key assigned to a credential-named key",
            &[],
            "",
            S::Medium,
        )
        .prio(0)
        .conf(C::Low)
        .text(),
    ]
}

fn provider_rules() -> Vec<RuleDef> {
    vec![
        // --- cloud providers
        rule("aws-access-key-id", "AWS access key ID", &["AKIA", "ASIA", "ABIA", "ACCA"],
            concat!(r"\b(?P<s>(?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})", end!()), S::Critical),
        rule("aws-secret-access-key", "AWS secret access key", &["aws"],
            r#"(?i)aws[a-z0-9_ .\-]{0,20}(?:secret|sk)[a-z0-9_ .\-]{0,20}["']?[ \t]*(?::|=|=>)[ \t]*["']?(?P<s>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
            S::Critical).entropy(3.5),
        rule("aws-session-token", "AWS session token", &["session_token", "sessiontoken"],
            r#"(?i)(?:aws_)?session_?token["']?[ \t]*[:=][ \t]*["']?(?P<s>[A-Za-z0-9/+=]{100,})"#,
            S::High).entropy(4.0),
        rule("gcp-service-account-key", "Google Cloud service account key (JSON)", &["private_key_id"],
            r#""private_key_id"[ \t]*:[ \t]*"(?P<s>[a-f0-9]{40})""#, S::Critical),
        rule("gcp-api-key", "Google API key", &["AIza"],
            concat!(r"\b(?P<s>AIza[0-9A-Za-z_\-]{35})", end!()), S::High),
        rule("gcp-oauth-client-secret", "Google OAuth client secret", &["GOCSPX-"],
            concat!(r"(?P<s>GOCSPX-[A-Za-z0-9_\-]{28})", end!()), S::High),
        rule("azure-storage-account-key", "Azure storage account key", &["AccountKey="],
            r"(?i)AccountKey=(?P<s>[A-Za-z0-9+/]{86}==)", S::Critical),
        rule("azure-shared-access-key", "Azure Service Bus / Event Hubs shared access key", &["SharedAccessKey="],
            r"SharedAccessKey=(?P<s>[A-Za-z0-9+/]{42,44}=)", S::High),
        rule("azure-sas-token", "Azure shared access signature", &["sig="],
            r"(?i)\bsv=\d{4}-\d{2}-\d{2}&[^\s'\x22]{0,300}?\bsig=(?P<s>[A-Za-z0-9%+/]{40,}(?:%3D|=)*)", S::High)
            // A query string, not a provider-prefixed token: medium, so a pristine vendor
            // file's documentation example (botocore's DataSync model) can go down to info.
            .conf(C::Medium),
        rule("azure-client-secret", "Azure AD (Entra ID) client secret", &["Q~"],
            concat!(r"(?:^|[^A-Za-z0-9_~.\-])(?P<s>[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.\-]{31,34})", end!()), S::High),
        rule("digitalocean-token", "DigitalOcean token", &["dop_v1_", "doo_v1_", "dor_v1_"],
            concat!(r"\b(?P<s>do[por]_v1_[a-f0-9]{64})", end!()), S::High),
        rule("alibaba-access-key-id", "Alibaba Cloud access key ID", &["LTAI"],
            concat!(r"\b(?P<s>LTAI[A-Za-z0-9]{20})", end!()), S::High).entropy(3.0),
        rule("heroku-api-key", "Heroku API key", &["heroku"],
            r"(?i)heroku[a-z0-9_ .\-]{0,20}(?:key|token)[a-z0-9_ .\-]{0,10}[\x22']?[ \t]*[:=][ \t]*[\x22']?(?P<s>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})",
            S::High),
        // --- code hosting
        rule("github-pat", "GitHub personal access token (classic)", &["ghp_"],
            concat!(r"\b(?P<s>ghp_[A-Za-z0-9]{36})", end!()), S::High),
        rule("github-oauth-token", "GitHub OAuth access token", &["gho_"],
            concat!(r"\b(?P<s>gho_[A-Za-z0-9]{36})", end!()), S::High),
        rule("github-app-token", "GitHub App user or installation token", &["ghu_", "ghs_"],
            concat!(r"\b(?P<s>gh[us]_[A-Za-z0-9]{36})", end!()), S::High),
        rule("github-refresh-token", "GitHub refresh token", &["ghr_"],
            concat!(r"\b(?P<s>ghr_[A-Za-z0-9]{36,76})", end!()), S::High),
        rule("github-fine-grained-pat", "GitHub fine-grained personal access token", &["github_pat_"],
            concat!(r"\b(?P<s>github_pat_[A-Za-z0-9_]{82})", end!()), S::High),
        rule("gitlab-pat", "GitLab personal access token", &["glpat-"],
            concat!(r"\b(?P<s>glpat-[A-Za-z0-9_\-]{20,})", end!()), S::High),
        rule("gitlab-runner-token", "GitLab runner authentication token", &["glrt-"],
            concat!(r"\b(?P<s>glrt-[A-Za-z0-9_\-]{20,})", end!()), S::High),
        rule("gitlab-deploy-token", "GitLab deploy token", &["gldt-"],
            concat!(r"\b(?P<s>gldt-[A-Za-z0-9_\-]{20,})", end!()), S::High),
        rule("atlassian-api-token", "Atlassian API token", &["ATATT3"],
            concat!(r"\b(?P<s>ATATT3[A-Za-z0-9_\-=]{180,})", end!()), S::High),
        // --- messaging
        rule("slack-bot-token", "Slack bot token", &["xoxb-"],
            concat!(r"\b(?P<s>xoxb-[0-9]{10,13}-[0-9]{10,13}-[A-Za-z0-9]{24,})", end!()), S::High),
        rule("slack-user-token", "Slack user or legacy token", &["xoxp-", "xoxe-", "xoxa-", "xoxs-"],
            concat!(r"\b(?P<s>xox[pease]-[0-9]{10,13}-[0-9A-Za-z\-]{20,})", end!()), S::High),
        rule("slack-app-token", "Slack app-level token", &["xapp-"],
            concat!(r"\b(?P<s>xapp-\d-[A-Z0-9]+-\d+-[a-f0-9]{32,})", end!()), S::High),
        rule("slack-webhook-url", "Slack incoming webhook URL", &["hooks.slack.com"],
            r"https://hooks\.slack\.com/(?:services|workflows|triggers)/(?P<s>T[A-Z0-9]+/[A-Z0-9]+/[A-Za-z0-9]{20,})",
            S::High),
        rule("discord-webhook-url", "Discord webhook URL", &["discord"],
            r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/(?P<s>[A-Za-z0-9_\-]{60,})",
            S::High),
        rule("microsoft-teams-webhook-url", "Microsoft Teams incoming webhook URL", &["webhook.office.com"],
            r"https://[a-z0-9\-]+\.webhook\.office\.com/webhookb2/(?P<s>[a-z0-9\-@]{40,}/IncomingWebhook/[a-z0-9]{32}/[a-z0-9\-]{36})",
            S::Medium),
        rule("telegram-bot-token", "Telegram bot token", &[":AA"],
            concat!(r"\b(?P<s>\d{8,10}:AA[A-Za-z0-9_\-]{33})", end!()), S::High),
        // --- payments and SaaS
        rule("stripe-secret-key", "Stripe live secret key", &["sk_live_"],
            concat!(r"\b(?P<s>sk_live_[0-9A-Za-z]{24,99})", end!()), S::Critical),
        rule("stripe-restricted-key", "Stripe live restricted key", &["rk_live_"],
            concat!(r"\b(?P<s>rk_live_[0-9A-Za-z]{24,99})", end!()), S::Critical),
        rule("stripe-webhook-secret", "Stripe webhook signing secret", &["whsec_"],
            concat!(r"\b(?P<s>whsec_[A-Za-z0-9+/]{32,})", end!()), S::High),
        rule("square-access-token", "Square access token", &["sq0atp-", "EAAA"],
            concat!(r"\b(?P<s>(?:sq0atp-[0-9A-Za-z_\-]{22}|EAAA[A-Za-z0-9_\-]{60}))", end!()), S::High)
            .entropy(3.5),
        rule("square-oauth-secret", "Square OAuth secret", &["sq0csp-"],
            concat!(r"\b(?P<s>sq0csp-[0-9A-Za-z_\-]{43})", end!()), S::High),
        rule("shopify-token", "Shopify access token or shared secret", &["shpat_", "shpca_", "shppa_", "shpss_"],
            concat!(r"\b(?P<s>shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32})", end!()), S::High),
        rule("twilio-api-key", "Twilio API key SID", &["twilio"],
            concat!(r"\b(?P<s>SK[0-9a-fA-F]{32})", end!()), S::High).conf(C::Medium),
        rule("twilio-auth-token", "Twilio auth token", &["twilio"],
            r"(?i)twilio[a-z0-9_ .\-]{0,20}(?:auth_?token|secret)[a-z0-9_]{0,10}[\x22']?[ \t]*[:=][ \t]*[\x22']?(?P<s>[a-f0-9]{32})",
            S::High),
        rule("sendgrid-api-key", "SendGrid API key", &["SG."],
            concat!(r"\b(?P<s>SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})", end!()), S::High),
        rule("mailgun-api-key", "Mailgun API key", &["mailgun"],
            concat!(r"\b(?P<s>key-[0-9a-f]{32})", end!()), S::High).conf(C::Medium),
        rule("mailchimp-api-key", "Mailchimp API key", &["-us"],
            concat!(r"\b(?P<s>[0-9a-f]{32}-us[0-9]{1,2})", end!()), S::High).entropy(3.0),
        rule("datadog-api-key", "Datadog API or application key", &["datadog", "dd_api", "dd_app"],
            r"(?i)(?:datadog|dd)_?(?:api|app(?:lication)?)_?key[\x22']?[ \t]*[:=][ \t]*[\x22']?(?P<s>[a-f0-9]{32,40})\b",
            S::High),
        rule("newrelic-user-key", "New Relic user API key", &["NRAK-"],
            concat!(r"\b(?P<s>NRAK-[A-Z0-9]{27})", end!()), S::High),
        rule("sentry-auth-token", "Sentry auth token", &["sntrys_", "sntryu_"],
            concat!(r"\b(?P<s>sntry[su]_[A-Za-z0-9+/=_]{40,})", end!()), S::High),
        rule("grafana-token", "Grafana Cloud or service account token", &["glc_", "glsa_"],
            concat!(r"\b(?P<s>(?:glc_[A-Za-z0-9+/]{32,}={0,2}|glsa_[A-Za-z0-9]{32}_[a-f0-9]{8}))", end!()), S::High),
        rule("linear-api-key", "Linear API key", &["lin_api_"],
            concat!(r"\b(?P<s>lin_api_[A-Za-z0-9]{40})", end!()), S::High),
        rule("postman-api-key", "Postman API key", &["PMAK-"],
            concat!(r"\b(?P<s>PMAK-[a-f0-9]{24}-[a-f0-9]{34})", end!()), S::High),
        rule("databricks-token", "Databricks personal access token", &["dapi"],
            concat!(r"\b(?P<s>dapi[a-h0-9]{32}(?:-\d)?)", end!()), S::High).entropy(3.0),
        rule("terraform-cloud-token", "Terraform Cloud / Enterprise API token", &["atlasv1"],
            concat!(r"\b(?P<s>[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_\-=]{60,70})", end!()), S::High),
        rule("pulumi-token", "Pulumi access token", &["pul-"],
            concat!(r"\b(?P<s>pul-[a-f0-9]{40})", end!()), S::High),
        rule("doppler-token", "Doppler token", &["dp.pt.", "dp.st.", "dp.ct."],
            concat!(r"\b(?P<s>dp\.(?:pt|st|ct|sa|scim|audit)\.[A-Za-z0-9]{40,44})", end!()), S::High),
        rule("openai-api-key", "OpenAI API key", &["T3BlbkFJ", "sk-proj-", "sk-svcacct-", "sk-admin-"],
            concat!(r"\b(?P<s>sk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,}|[A-Za-z0-9_\-]{20,}T3BlbkFJ[A-Za-z0-9_\-]{20,}))", end!()),
            S::High),
        rule("anthropic-api-key", "Anthropic API key", &["sk-ant-"],
            concat!(r"\b(?P<s>sk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_\-]{80,})", end!()), S::High),
        rule("huggingface-token", "Hugging Face access token", &["hf_"],
            concat!(r"\b(?P<s>hf_[A-Za-z]{34})", end!()), S::High).entropy(3.5),
        // --- package registries
        rule("npm-token", "npm access token", &["npm_"],
            concat!(r"\b(?P<s>npm_[A-Za-z0-9]{36})", end!()), S::High),
        rule("npmrc-auth-token", "npm registry _authToken in .npmrc form", &["_authToken"],
            r"_authToken[ \t]*=[ \t]*[\x22']?(?P<s>[^\s\x22']{8,})", S::High).prio(1),
        rule("npmrc-auth", "npm registry _auth or _password in .npmrc form", &["_auth", "_password"],
            r"(?m)(?:^|:)_(?:auth|password)[ \t]*=[ \t]*[\x22']?(?P<s>[A-Za-z0-9+/=]{8,})", S::High)
            .prio(1).password(),
        rule("pypi-token", "PyPI upload token", &["pypi-AgE"],
            concat!(r"\b(?P<s>pypi-AgE[A-Za-z0-9_\-]{50,})", end!()), S::High),
        rule("rubygems-api-key", "RubyGems API key", &["rubygems_"],
            concat!(r"\b(?P<s>rubygems_[a-f0-9]{48})", end!()), S::High),
        rule("dockerhub-pat", "Docker Hub personal access token", &["dckr_pat_"],
            concat!(r"\b(?P<s>dckr_pat_[A-Za-z0-9_\-]{27})", end!()), S::High),
        rule("docker-config-auth", "registry credentials in a Docker config.json", &["\"auths\""],
            r#""auth"[ \t]*:[ \t]*"(?P<s>[A-Za-z0-9+/]{8,}={0,2})""#, S::High).prio(1).password(),
        // --- private keys
        rule("private-key-rsa", "RSA private key (PEM)", &["BEGIN RSA PRIVATE KEY"],
            r"-----BEGIN RSA PRIVATE KEY-----[ \t]*\r?\n(?:[A-Za-z\-]+:[^\r\n]*\r?\n)*\r?\n?(?P<s>[A-Za-z0-9+/=\r\n]{40}[A-Za-z0-9+/=\r\n]*)",
            S::High),
        rule("private-key-ec", "EC private key (PEM)", &["BEGIN EC PRIVATE KEY"],
            r"-----BEGIN EC PRIVATE KEY-----[ \t]*\r?\n(?:[A-Za-z\-]+:[^\r\n]*\r?\n)*\r?\n?(?P<s>[A-Za-z0-9+/=\r\n]{40}[A-Za-z0-9+/=\r\n]*)",
            S::High),
        rule("private-key-dsa", "DSA private key (PEM)", &["BEGIN DSA PRIVATE KEY"],
            r"-----BEGIN DSA PRIVATE KEY-----[ \t]*\r?\n(?:[A-Za-z\-]+:[^\r\n]*\r?\n)*\r?\n?(?P<s>[A-Za-z0-9+/=\r\n]{40}[A-Za-z0-9+/=\r\n]*)",
            S::High),
        rule("private-key-openssh", "OpenSSH private key", &["BEGIN OPENSSH PRIVATE KEY"],
            r"-----BEGIN OPENSSH PRIVATE KEY-----[ \t]*\r?\n(?P<s>[A-Za-z0-9+/=\r\n]{40}[A-Za-z0-9+/=\r\n]*)",
            S::High),
        rule("private-key-pkcs8", "PKCS#8 private key (PEM)", &["BEGIN PRIVATE KEY"],
            r"-----BEGIN PRIVATE KEY-----[ \t]*\r?\n(?P<s>[A-Za-z0-9+/=\r\n]{40}[A-Za-z0-9+/=\r\n]*)",
            S::High),
        rule("private-key-pkcs8-encrypted", "encrypted PKCS#8 private key (PEM)", &["BEGIN ENCRYPTED PRIVATE KEY"],
            r"-----BEGIN ENCRYPTED PRIVATE KEY-----[ \t]*\r?\n(?P<s>[A-Za-z0-9+/=\r\n]{40}[A-Za-z0-9+/=\r\n]*)",
            S::Medium),
        rule("private-key-pgp", "PGP private key block", &["BEGIN PGP PRIVATE KEY BLOCK"],
            r"-----BEGIN PGP PRIVATE KEY BLOCK-----[ \t]*\r?\n(?:[A-Za-z\-]+:[^\r\n]*\r?\n)*\r?\n?(?P<s>[A-Za-z0-9+/=\r\n]{40}[A-Za-z0-9+/=\r\n]*)",
            S::High),
        rule("private-key-putty", "PuTTY private key", &["PuTTY-User-Key-File"],
            r"PuTTY-User-Key-File-[23]:[^\n]*\n(?:[^\n]*\n){0,12}?Private-Lines:[ \t]*\d+\r?\n(?P<s>(?:[A-Za-z0-9+/=]+\r?\n)+)",
            S::High),
        rule("age-secret-key", "age secret key", &["AGE-SECRET-KEY-1"],
            r"\b(?P<s>AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58})\b", S::High),
        // --- tokens
        rule("jwt", "JSON Web Token", &["eyJ"],
            concat!(r"\b(?P<s>eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{16,})", end!()),
            S::Medium).conf(C::Medium),
        rule("vault-service-token", "HashiCorp Vault service token", &["hvs."],
            concat!(r"\b(?P<s>hvs\.[A-Za-z0-9_\-]{24,})", end!()), S::High).entropy(3.5),
        rule("vault-batch-token", "HashiCorp Vault batch token", &["hvb."],
            concat!(r"\b(?P<s>hvb\.[A-Za-z0-9_\-]{24,})", end!()), S::High).entropy(3.5),
        rule("vault-legacy-token", "HashiCorp Vault token (pre-1.10 format)", &["vault"],
            r"(?i)vault[a-z0-9_]{0,10}token[\x22']?[ \t]*[:=][ \t]*[\x22']?(?P<s>s\.[A-Za-z0-9]{24})\b",
            S::High),
        // --- URLs with credentials
        rule("postgres-url", "PostgreSQL URL with a password", &["postgres"],
            r"\bpostgres(?:ql)?://[^:@/\s\x22']+:(?P<s>[^@/\s\x22']+)@[^\s\x22']+", S::High)
            .prio(1).password(),
        rule("mysql-url", "MySQL / MariaDB URL with a password", &["mysql", "mariadb"],
            r"\b(?:mysql|mysql2|mysqlx|mariadb)(?:\+[a-z]+)?://[^:@/\s\x22']+:(?P<s>[^@/\s\x22']+)@[^\s\x22']+",
            S::High).prio(1).password(),
        rule("mongodb-url", "MongoDB URL with a password", &["mongodb"],
            r"\bmongodb(?:\+srv)?://[^:@/\s\x22']+:(?P<s>[^@/\s\x22']+)@[^\s\x22']+", S::High)
            .prio(1).password(),
        rule("redis-url", "Redis URL with a password", &["redis"],
            r"\brediss?://[^:@/\s\x22']*:(?P<s>[^@/\s\x22']+)@[^\s\x22']+", S::High)
            .prio(1).password(),
        rule("amqp-url", "AMQP URL with a password", &["amqp"],
            r"\bamqps?://[^:@/\s\x22']+:(?P<s>[^@/\s\x22']+)@[^\s\x22']+", S::High)
            .prio(1).password(),
        rule("jdbc-url-password", "JDBC URL with a password", &["jdbc:"],
            r"(?i)\bjdbc:[a-z0-9]+:(?:[^\s\x22']*?[?&;:]password=(?P<s>[^&;\s\x22']+)|//[^:@/\s\x22']+:(?P<s2>[^@/\s\x22']+)@)",
            S::High).prio(1).password(),
        rule("basic-auth-url", "URL with a user and password", &["://"],
            r"\b[a-z][a-z0-9+.\-]{1,20}://[A-Za-z0-9._%\-]+:(?P<s>[^@/\s\x22'<>]{3,})@[A-Za-z0-9.\-]+", S::Medium)
            .prio(0).password().conf(C::Medium),
        // --- configuration files
        rule("kubeconfig-token", "bearer token in a kubeconfig user", &["current-context"],
            r"(?m)^[ \t]+token:[ \t]*[\x22']?(?P<s>[A-Za-z0-9_.\-]{20,})[\x22']?[ \t]*$", S::High)
            .prio(1),
        rule("kubeconfig-client-key", "client key in a kubeconfig", &["client-key-data"],
            r"client-key-data:[ \t]*[\x22']?(?P<s>[A-Za-z0-9+/=]{40,})", S::High).prio(1),
        rule("netrc-password", "password in a .netrc entry", &["machine"],
            r"(?m)^[ \t]*machine[ \t]+\S+[ \t\r\n]+login[ \t]+\S+[ \t\r\n]+password[ \t]+(?P<s>\S+)", S::High)
            .prio(1).password().text(),
    ]
}

/// The assignment-only rule: an environment variable, build argument or label whose name says
/// it holds a secret, with a real value ([`secret_assignment`] decides; it has no keywords and
/// no pattern, so it never runs on content).
pub const SECRET_NAME_RULE: RuleDef = RuleDef {
    id: "secret-env-name",
    description: "variable whose name says it holds a secret, with a real value",
    keywords: &[],
    pattern: "",
    severity: Severity::High,
    confidence: Confidence::Medium,
    class: SecretClass::PasswordLike,
    priority: 0,
    min_entropy: 0.0,
    text_only: false,
};

/// A credential file recognised by its path.
#[derive(Debug, Clone)]
pub struct FileKindDef {
    /// Stable identifier, e.g. `file-dotenv`.
    pub id: &'static str,
    /// One line for humans.
    pub description: &'static str,
    /// Does this (normalised, `/`-separated, no leading `/`) path name such a file?
    pub matches: fn(&str) -> bool,
    /// A value in the file: the group `s` must pass the placeholder filter.
    pub value_pattern: &'static str,
}

impl FileKindDef {
    /// The rule a finding of this kind reports: high severity, medium confidence (the path says
    /// what the file is, the value only that it is not a placeholder), and password-like (the
    /// value may be guessable: the fingerprint hashes the location). Its pattern is the value
    /// pattern; it has no keywords, as the path, not the content, selects it.
    pub const fn rule(&self) -> RuleDef {
        RuleDef {
            id: self.id,
            description: self.description,
            keywords: &[],
            pattern: self.value_pattern,
            severity: Severity::High,
            confidence: Confidence::Medium,
            class: SecretClass::PasswordLike,
            priority: 0,
            min_entropy: 0.0,
            text_only: false,
        }
    }
}

fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Built-in credential file kinds.
pub fn builtin_file_kinds() -> Vec<FileKindDef> {
    vec![
        FileKindDef {
            id: "file-ssh-private-key",
            description: "SSH private key file",
            matches: |p| {
                matches!(
                    base(p),
                    "id_rsa"
                        | "id_dsa"
                        | "id_ecdsa"
                        | "id_ed25519"
                        | "id_ecdsa_sk"
                        | "id_ed25519_sk"
                )
            },
            value_pattern: r"(?P<s>[A-Za-z0-9+/=]{40,})",
        },
        FileKindDef {
            id: "file-dotenv",
            description: ".env file with values",
            matches: |p| {
                let b = base(p);
                b == ".env"
                    || (b.starts_with(".env.")
                        && !matches!(
                            b,
                            ".env.example" | ".env.sample" | ".env.template" | ".env.dist"
                        ))
            },
            value_pattern: r"(?m)^[ \t]*(?:export[ \t]+)?[A-Za-z_][A-Za-z0-9_.]*[ \t]*=[ \t]*[\x22']?(?P<s>[^\s\x22'#][^\r\n\x22']*)",
        },
        FileKindDef {
            id: "file-netrc",
            description: ".netrc with a password",
            matches: |p| matches!(base(p), ".netrc" | "_netrc"),
            value_pattern: r"password[ \t]+(?P<s>\S+)",
        },
        FileKindDef {
            id: "file-pgpass",
            description: ".pgpass with a password",
            matches: |p| base(p) == ".pgpass",
            value_pattern: r"(?m)^[^#:\r\n]*:[^:\r\n]*:[^:\r\n]*:[^:\r\n]*:(?P<s>[^\r\n]+)",
        },
        FileKindDef {
            id: "file-aws-credentials",
            description: "AWS shared credentials file",
            matches: |p| p.ends_with(".aws/credentials"),
            value_pattern: r"(?m)^[ \t]*aws_(?:secret_access_key|session_token)[ \t]*=[ \t]*(?P<s>\S+)",
        },
        FileKindDef {
            id: "file-git-credentials",
            description: ".git-credentials with a password",
            matches: |p| base(p) == ".git-credentials",
            value_pattern: r"://[^:/\s]+:(?P<s>[^@\s]+)@",
        },
        FileKindDef {
            id: "file-npmrc",
            description: ".npmrc with registry credentials",
            matches: |p| base(p) == ".npmrc",
            value_pattern: r"(?m)(?:_authToken|_auth|_password)[ \t]*=[ \t]*(?P<s>\S+)",
        },
        FileKindDef {
            id: "file-docker-config",
            description: "Docker config.json with registry credentials",
            matches: |p| p.ends_with(".docker/config.json"),
            value_pattern: r#""(?:auth|identitytoken|password)"[ \t]*:[ \t]*"(?P<s>[^"]+)""#,
        },
        FileKindDef {
            id: "file-kubeconfig",
            description: "kubeconfig with user credentials",
            matches: |p| p.ends_with(".kube/config") || base(p) == "kubeconfig",
            value_pattern: r"(?m)^[ \t]+(?:token|client-key-data|password):[ \t]*(?P<s>\S+)",
        },
        FileKindDef {
            id: "file-pypirc",
            description: ".pypirc with a password",
            matches: |p| base(p) == ".pypirc",
            value_pattern: r"(?m)^[ \t]*password[ \t]*[:=][ \t]*(?P<s>\S+)",
        },
    ]
}

/// A compiled content rule.
#[derive(Debug)]
pub struct CompiledRule {
    /// Its definition.
    pub def: RuleDef,
    re: Regex,
}

/// A compiled file kind.
#[derive(Debug)]
pub struct CompiledFileKind {
    /// Its definition.
    pub def: FileKindDef,
    re: Regex,
}

/// One match of a rule in a piece of text: the secret's byte span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RawMatch {
    /// Index into [`RuleSet::rules`].
    pub rule: usize,
    /// Start of the secret in the text.
    pub start: usize,
    /// End of the secret in the text (exclusive).
    pub end: usize,
}

/// All rules, compiled once.
#[derive(Debug)]
pub struct RuleSet {
    /// Content rules.
    pub rules: Vec<CompiledRule>,
    /// File kinds.
    pub file_kinds: Vec<CompiledFileKind>,
    ac: AhoCorasick,
    keyword_rules: Vec<Vec<usize>>,
    /// Per keyword: does it (or a keyword it contains) put the assignment detector to work?
    assign_keyword: Vec<bool>,
    /// The rules the assignment detector reports, by [`assign::KeyKind`]: password, secret,
    /// token (indices into `rules`; `usize::MAX` when a custom set lacks one).
    assign_rules: [usize; 3],
    /// Identifies the rule set; part of the verdict key. Changes whenever a rule changes.
    pub version: String,
}

/// The rule set's series. Patterns are hashed into the version automatically; bump this when the
/// filters in code change (placeholder, code-reference, overlap, test-material and package
/// decisions), since they change verdicts too.
const RULES_SERIES: &str = "2026.4";

impl RuleSet {
    /// The built-in rule set, compiled on first use.
    pub fn builtin() -> &'static RuleSet {
        static SET: OnceLock<RuleSet> = OnceLock::new();
        SET.get_or_init(|| RuleSet::compile(builtin_rules(), builtin_file_kinds()))
    }

    /// Compiles rules; panics on an invalid built-in pattern (a bug caught by the unit tests).
    pub fn compile(defs: Vec<RuleDef>, kinds: Vec<FileKindDef>) -> RuleSet {
        let mut keywords: Vec<String> = Vec::new();
        let mut keyword_rules: Vec<Vec<usize>> = Vec::new();
        let mut rules = Vec::with_capacity(defs.len());
        let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for (i, def) in defs.into_iter().enumerate() {
            let re = Regex::new(&format!("(?-u){}", def.pattern))
                .unwrap_or_else(|e| panic!("built-in rule {} has a bad pattern: {e}", def.id));
            for kw in def.keywords {
                let kw = kw.to_ascii_lowercase();
                match keywords.iter().position(|k| *k == kw) {
                    Some(p) => keyword_rules[p].push(i),
                    None => {
                        keywords.push(kw);
                        keyword_rules.push(vec![i]);
                    }
                }
            }
            hasher.update(def.id.as_bytes());
            hasher.update(def.pattern.as_bytes());
            hasher
                .update(format!("{:?}", (def.keywords, def.severity, def.min_entropy)).as_bytes());
            rules.push(CompiledRule { def, re });
        }
        for kw in assign::KEYWORDS {
            let kw = kw.to_ascii_lowercase();
            hasher.update(kw.as_bytes());
            if !keywords.contains(&kw) {
                keywords.push(kw);
                keyword_rules.push(Vec::new());
            }
        }
        let assign_set: Vec<String> = assign::KEYWORDS
            .iter()
            .map(|k| k.to_ascii_lowercase())
            .collect();
        let file_kinds = kinds
            .into_iter()
            .map(|def| {
                hasher.update(def.id.as_bytes());
                hasher.update(def.value_pattern.as_bytes());
                let re = Regex::new(&format!("(?-u){}", def.value_pattern)).unwrap_or_else(|e| {
                    panic!("built-in file kind {} has a bad pattern: {e}", def.id)
                });
                CompiledFileKind { def, re }
            })
            .collect();
        // Non-overlapping search (fast, prefilter-friendly) can hide a keyword inside another
        // one (`password` inside `_password`), so a keyword also triggers the rules of every
        // keyword it contains.
        let keyword_rules: Vec<Vec<usize>> = keywords
            .iter()
            .map(|k| {
                let mut rs: Vec<usize> = keywords
                    .iter()
                    .zip(&keyword_rules)
                    .filter(|(other, _)| k.contains(other.as_str()))
                    .flat_map(|(_, r)| r.iter().copied())
                    .collect();
                rs.sort_unstable();
                rs.dedup();
                rs
            })
            .collect();
        let assign_keyword: Vec<bool> = keywords
            .iter()
            .map(|k| assign_set.iter().any(|a| k.contains(a.as_str())))
            .collect();
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(&keywords)
            .expect("keywords are plain strings");
        let digest = hasher.finish();
        let version = format!("{RULES_SERIES}+{}", &hex::encode(digest.as_ref())[..12]);
        let index = |id: &str| {
            rules
                .iter()
                .position(|r: &CompiledRule| r.def.id == id)
                .unwrap_or(usize::MAX)
        };
        let assign_rules = [
            index("generic-password"),
            index("generic-secret"),
            index("generic-token"),
        ];
        RuleSet {
            rules,
            file_kinds,
            ac,
            keyword_rules,
            assign_keyword,
            assign_rules,
            version,
        }
    }

    /// Index of a rule by id.
    pub fn rule_index(&self, id: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.def.id == id)
    }

    /// Finds secrets in `text` of unknown form; see [`RuleSet::scan_form`].
    pub fn scan(&self, text: &[u8], binary: bool) -> Vec<RawMatch> {
        self.scan_form(text, binary, assign::Form::Unknown)
    }

    /// Finds secrets in `text`, a file of `form`. One pass of the keyword prefilter decides
    /// which regexes run and where the assignment detector looks; `binary` skips text-only
    /// rules and the detector. Overlapping matches are resolved by [`resolve_overlaps`].
    pub fn scan_form(&self, text: &[u8], binary: bool, form: assign::Form) -> Vec<RawMatch> {
        let mut triggered = vec![false; self.rules.len()];
        let mut any = false;
        let mut hits: Vec<usize> = Vec::new();
        for m in self.ac.find_iter(text) {
            let p = m.pattern().as_usize();
            for &r in &self.keyword_rules[p] {
                triggered[r] = true;
                any = true;
            }
            if !binary && self.assign_keyword[p] {
                hits.push(m.start());
            }
        }
        if !any && hits.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            if !triggered[i] || (binary && rule.def.text_only) {
                continue;
            }
            for caps in rule.re.captures_iter(text) {
                let Some(m) = caps
                    .name("s")
                    .or_else(|| caps.name("s2"))
                    .or_else(|| caps.get(0))
                else {
                    continue;
                };
                if accept_value(&rule.def, m.as_bytes()) {
                    out.push(RawMatch {
                        rule: i,
                        start: m.start(),
                        end: m.end(),
                    });
                }
            }
        }
        if !hits.is_empty() {
            for a in assign::find(text, &hits, form) {
                let rule = self.assign_rules[match a.kind {
                    assign::KeyKind::Password => 0,
                    assign::KeyKind::Secret => 1,
                    assign::KeyKind::Token | assign::KeyKind::Authorization => 2,
                }];
                if rule != usize::MAX {
                    out.push(RawMatch {
                        rule,
                        start: a.start,
                        end: a.end,
                    });
                }
            }
        }
        resolve_overlaps(out, |i| self.rules[i].def.priority)
    }

    /// Does a credential file of this kind hold at least one real value? Returns the value's
    /// span in `text`.
    pub fn file_kind_value(&self, kind: usize, text: &[u8]) -> Option<(usize, usize)> {
        let k = self.file_kinds.get(kind)?;
        k.re.captures_iter(text).find_map(|c| {
            let m = c.name("s")?;
            let v = trim_value(m.as_bytes());
            (!v.is_empty() && !is_placeholder(v)).then(|| (m.start(), m.start() + v.len()))
        })
    }

    /// File kinds whose name matches `path`.
    pub fn file_kinds_for<'a>(&'a self, path: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.file_kinds
            .iter()
            .enumerate()
            .filter(move |(_, k)| (k.def.matches)(path))
            .map(|(i, _)| i)
    }
}

/// Every rule id with its description and severity, content rules first, then file kinds and
/// the secret-name rule (for SARIF and docs).
pub fn rule_catalog() -> Vec<(String, String, Severity)> {
    let set = RuleSet::builtin();
    let kinds: Vec<RuleDef> = set.file_kinds.iter().map(|k| k.def.rule()).collect();
    set.rules
        .iter()
        .map(|r| &r.def)
        .chain(&kinds)
        .chain([&SECRET_NAME_RULE])
        .map(|d| (d.id.to_owned(), d.description.to_owned(), d.severity))
        .collect()
}

fn trim_value(v: &[u8]) -> &[u8] {
    let mut v = v;
    while let Some((last, rest)) = v.split_last() {
        if last.is_ascii_whitespace() || *last == b'"' || *last == b'\'' {
            v = rest;
        } else {
            break;
        }
    }
    v
}

/// Does a candidate value pass the rule's entropy threshold and the placeholder filter (and,
/// for generic assignment rules, the code-reference filter)?
pub fn accept_value(def: &RuleDef, value: &[u8]) -> bool {
    if value.is_empty() || is_placeholder(value) || names_its_rule(def, value) {
        return false;
    }
    if def.id.starts_with("generic-") && looks_like_code(value) {
        return false;
    }
    def.min_entropy <= 0.0 || shannon_entropy(&strip_ws(value)) >= def.min_entropy
}

/// Does the value spell out its own rule's id after its prefix
/// (`gldt-gitlab-deploy-tokenGitLab`)? Then it is a table of rules or a document naming the
/// kind of secret, not a secret: this scanner's own binary holds each rule's keyword next to
/// its id (`gldt-` then `gitlab-deploy-token`), and the random part of a token never contains
/// a rule id. (Some formats start with their id, `AGE-SECRET-KEY-1…`: that is the prefix, not
/// a spelling out.) Found by scanning the release images (issue 15).
fn names_its_rule(def: &RuleDef, value: &[u8]) -> bool {
    let id = def.id.as_bytes();
    id.len() >= 8
        && value
            .to_ascii_lowercase()
            .windows(id.len())
            .skip(1)
            .any(|w| w == id)
}

fn strip_ws(v: &[u8]) -> Vec<u8> {
    v.iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect()
}

/// Shannon entropy in bits per byte.
pub fn shannon_entropy(v: &[u8]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in v {
        counts[b as usize] += 1;
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Is this value a placeholder, a variable reference or documentation filler rather than a
/// real secret? (`${VAR}`, `{{ x }}`, `<token>`, `EXAMPLE`, `xxxx`, `changeme`...)
pub fn is_placeholder(value: &[u8]) -> bool {
    let v = strip_ws(value);
    if v.is_empty() {
        return true;
    }
    let lower = v.to_ascii_lowercase();
    // Variable and template references (`${`, `{{`, `%(`, `os.environ`…) are
    // [`placeholder::is_reference`]'s, below.
    const MARKERS: &[&[u8]] = &[
        b"<",
        b">",
        b"%s",
        b"%{",
        b"example",
        b"xxxx",
        b"changeme",
        b"change_me",
        b"change-me",
        b"placeholder",
        b"your_",
        b"your-",
        b"yourpass",
        b"yourtoken",
        b"dummy",
        b"redacted",
        b"****",
        b"....",
        b"\xe2\x80\xa6",
        b"replace_",
        b"replace-me",
        b"replaceme",
        b"insert_",
        b"insert-",
        b"notreal",
        b"not-a-real",
        b"not_a_real",
        b"fake",
        b"_here",
        b"-here",
        b"sample",
        b"lorem",
        b"12345678",
        b"abcdefgh",
    ];
    if MARKERS
        .iter()
        .any(|m| lower.windows(m.len()).any(|w| w == *m))
    {
        return true;
    }
    if matches!(v[0], b'$' | b'%' | b'@' | b'&' | b'*') {
        return true;
    }
    if placeholder::is_filler(&v) || placeholder::is_reference(&v) {
        return true;
    }
    const WORDS: &[&[u8]] = &[
        b"null",
        b"none",
        b"nil",
        b"true",
        b"false",
        b"undefined",
        b"password",
        b"passwd",
        b"secret",
        b"token",
        b"pass",
        b"string",
        b"str",
        b"required",
        b"optional",
        b"empty",
        b"test",
        b"testing",
        b"default",
        b"value",
        b"api_key",
        b"apikey",
        b"env",
        b"unset",
    ];
    if WORDS.contains(&lower.as_slice()) {
        return true;
    }
    let mut distinct = [false; 256];
    let mut n = 0;
    for &b in &v {
        if !distinct[b as usize] {
            distinct[b as usize] = true;
            n += 1;
        }
    }
    n <= 2
}

/// Is this assignment value a reference in code (`self.password`, `typing.Optional`,
/// `user_password`, `getPass`) rather than a literal? Identifiers without digits and dotted
/// names are treated as code. Pure.
pub fn looks_like_code(value: &[u8]) -> bool {
    let ident = |p: &[u8]| {
        !p.is_empty()
            && (p[0].is_ascii_alphabetic() || p[0] == b'_')
            && p.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
    };
    let parts: Vec<&[u8]> = value.split(|b| *b == b'.').collect();
    if parts.len() > 1 && parts.iter().all(|p| ident(p)) {
        return true;
    }
    ident(value) && !value.iter().any(u8::is_ascii_digit)
}

/// Drops matches overlapping a match of a higher-priority rule, and exact duplicates.
pub fn resolve_overlaps(
    mut matches: Vec<RawMatch>,
    priority: impl Fn(usize) -> u8,
) -> Vec<RawMatch> {
    matches.sort();
    matches.dedup();
    let keep: Vec<bool> = matches
        .iter()
        .map(|m| {
            !matches.iter().any(|o| {
                o.start < m.end
                    && m.start < o.end
                    && (priority(o.rule) > priority(m.rule)
                        || (priority(o.rule) == priority(m.rule)
                            && o.rule < m.rule
                            && o.start == m.start
                            && o.end == m.end))
            })
        })
        .collect();
    matches
        .into_iter()
        .zip(keep)
        .filter_map(|(m, k)| k.then_some(m))
        .collect()
}

/// Does this variable name say it holds a secret?
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let parts: Vec<&str> = upper
        .split(['_', '-', '.'])
        .filter(|p| !p.is_empty())
        .collect();
    const NOT: &[&str] = &[
        "FILE",
        "PATH",
        "DIR",
        "ENABLED",
        "TYPE",
        "HEADER",
        "NAME",
        "LENGTH",
        "TTL",
        "URL",
        "ENDPOINT",
        "METHOD",
        "MODE",
        "ID",
        "PUBLIC",
        "PUB",
        "FINGERPRINT",
        "SERVER",
        "HOST",
        "PORT",
        "USER",
        "USERNAME",
        "EXPIRY",
        "EXPIRES",
        "TIMEOUT",
        "PREFIX",
        "FORMAT",
        "VERSION",
        "ALGORITHM",
        "ALG",
        "SIZE",
        "COMMAND",
        "CMD",
        "HELPER",
        "REQUIRED",
    ];
    if parts.last().is_some_and(|l| NOT.contains(l)) || parts.contains(&"PUBLIC") {
        return false;
    }
    let joined: Vec<String> = parts
        .windows(2)
        .map(|w| format!("{}{}", w[0], w[1]))
        .collect();
    const SECRET: &[&str] = &[
        "PASSWORD",
        "PASSWD",
        "PASS",
        "PWD",
        "SECRET",
        "TOKEN",
        "APIKEY",
        "ACCESSKEY",
        "PRIVATEKEY",
        "SECRETKEY",
        "CREDENTIAL",
        "CREDENTIALS",
        "AUTHTOKEN",
        "SIGNINGKEY",
        "ENCRYPTIONKEY",
        "MASTERKEY",
        "SESSIONKEY",
        "CLIENTSECRET",
        "DSN",
        "PASSPHRASE",
    ];
    parts.iter().any(|p| SECRET.contains(p)) || joined.iter().any(|p| SECRET.contains(&p.as_str()))
}

/// Is an assignment `name=value` a secret by its name? The value must be real: not a
/// placeholder, not a path or a number, at least 6 characters.
pub fn secret_assignment(name: &str, value: &str) -> bool {
    let v = value.trim();
    if !is_secret_name(name) || v.len() < 6 || is_placeholder(v.as_bytes()) {
        return false;
    }
    if v.starts_with('/') || v.starts_with("./") || v.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    true
}

/// Is the path one where package managers install code (`usr/lib/`, `site-packages/`,
/// `node_modules/`...)? A generic (low-confidence) match there is library code, not the image
/// owner's secret.
pub fn is_package_path(path: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "usr/lib/",
        "usr/share/",
        "usr/libexec/",
        "lib/",
        "usr/local/lib/",
    ];
    const DIRS: &[&str] = &[
        "site-packages",
        "dist-packages",
        "node_modules",
        "vendor",
        "gems",
    ];
    PREFIXES.iter().any(|p| path.starts_with(p)) || path.split('/').any(|c| DIRS.contains(&c))
}

/// Is the path one that packages use for public test material and documentation?
pub fn is_test_material(path: &str) -> bool {
    const DIRS: &[&str] = &[
        "test",
        "tests",
        "testdata",
        "test_data",
        "testing",
        "fixtures",
        "__fixtures__",
        "__tests__",
        "spec",
        "specs",
        "example",
        "examples",
        "samples",
        "testsuite",
    ];
    if path.starts_with("usr/share/doc/") || path.starts_with("usr/share/man/") {
        return true;
    }
    let mut comps: Vec<&str> = path.split('/').collect();
    comps.pop();
    comps
        .iter()
        .any(|c| DIRS.contains(&c.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random string over `alphabet`: test values that look random
    /// without being anybody's secret.
    pub(crate) fn fake(alphabet: &str, len: usize, seed: u64) -> String {
        let a = alphabet.as_bytes();
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                a[((x >> 33) % a.len() as u64) as usize] as char
            })
            .collect()
    }

    pub(crate) const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    pub(crate) const UPPER32: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    pub(crate) const HEX: &str = "0123456789abcdef";
    pub(crate) const B64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub(crate) const URLSAFE: &str =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

    fn ids(text: &str) -> Vec<(&'static str, String)> {
        let set = RuleSet::builtin();
        set.scan(text.as_bytes(), false)
            .into_iter()
            .map(|m| (set.rules[m.rule].def.id, text[m.start..m.end].to_owned()))
            .collect()
    }

    /// Asserts `text` yields exactly one finding of `rule` whose secret is `secret`.
    fn hit(rule: &str, text: &str, secret: &str) {
        let got = ids(text);
        assert!(
            got.iter().any(|(r, s)| *r == rule && s == secret),
            "{rule} should find {secret:?} in {text:?}; got {got:?}"
        );
        assert!(
            got.iter().all(|(r, _)| *r == rule),
            "only {rule} expected in {text:?}; got {got:?}"
        );
    }

    fn miss(rule: &str, text: &str) {
        let got = ids(text);
        assert!(
            got.iter().all(|(r, _)| *r != rule),
            "{rule} must not fire on {text:?}; got {got:?}"
        );
    }

    /// (rule, true example text, secret in it, false example text)
    fn examples() -> Vec<(&'static str, String, String, String)> {
        let mut v: Vec<(&'static str, String, String, String)> = Vec::new();
        let mut add = |rule: &'static str, text: String, secret: String, negative: String| {
            v.push((rule, text, secret, negative));
        };
        let akia = format!("AKIA{}", fake(UPPER32, 16, 1));
        add(
            "aws-access-key-id",
            format!("key = {akia}\n"),
            akia.clone(),
            "key = AKIAIOSFODNN7EXAMPLE".into(),
        );
        let sk = fake(B64, 40, 2);
        add(
            "aws-secret-access-key",
            format!("aws_secret_access_key = {sk}\n"),
            sk.clone(),
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        );
        let st = fake(B64, 160, 3);
        add(
            "aws-session-token",
            format!("aws_session_token={st}\n"),
            st,
            "aws_session_token=${AWS_SESSION_TOKEN}".into(),
        );
        let pk = fake(HEX, 40, 4);
        add(
            "gcp-service-account-key",
            format!("{{\"type\": \"service_account\", \"private_key_id\": \"{pk}\"}}"),
            pk,
            "{\"private_key_id\": \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}".into(),
        );
        let g = format!("AIza{}", fake(URLSAFE, 35, 5));
        add(
            "gcp-api-key",
            format!("key: {g}"),
            g,
            "key: AIza-too-short".into(),
        );
        let g = format!("GOCSPX-{}", fake(URLSAFE, 28, 6));
        add(
            "gcp-oauth-client-secret",
            format!("client_secret={g}"),
            g,
            "GOCSPX-short".into(),
        );
        let a = format!("{}==", fake(B64, 86, 7));
        add(
            "azure-storage-account-key",
            format!("DefaultEndpointsProtocol=https;AccountName=x;AccountKey={a};"),
            a,
            "AccountKey=<your-key>".into(),
        );
        let a = format!("{}=", fake(B64, 43, 8));
        add(
            "azure-shared-access-key",
            format!("Endpoint=sb://x/;SharedAccessKeyName=r;SharedAccessKey={a}"),
            a,
            "SharedAccessKey={{ key }}".into(),
        );
        let a = format!("{}%3D", fake(ALNUM, 44, 9));
        add(
            "azure-sas-token",
            format!("https://a.blob.core.windows.net/c?sv=2022-11-02&ss=b&sig={a}"),
            a,
            "https://a.blob.core.windows.net/c?sv=2022-11-02&ss=b".into(),
        );
        let a = format!("abc8Q~{}", fake(ALNUM, 34, 10));
        add(
            "azure-client-secret",
            format!("secret {a}\n"),
            a,
            "Q~ alone".into(),
        );
        let d = format!("dop_v1_{}", fake(HEX, 64, 11));
        add(
            "digitalocean-token",
            format!("DO={d}"),
            d,
            "dop_v1_short".into(),
        );
        let d = format!("LTAI{}", fake(ALNUM, 20, 12));
        add(
            "alibaba-access-key-id",
            format!("id {d}"),
            d,
            "LTAIxxxxxxxxxxxxxxxxxxxx".into(),
        );
        let h = "6b7c8d9e-1a2b-4c3d-8e9f-0a1b2c3d4e5f".to_owned();
        add(
            "heroku-api-key",
            format!("HEROKU_API_KEY={h}"),
            h,
            "heroku run bash".into(),
        );
        for (rule, prefix, len, seed) in [
            ("github-pat", "ghp_", 36, 13u64),
            ("github-oauth-token", "gho_", 36, 14),
            ("github-app-token", "ghs_", 36, 15),
            ("github-refresh-token", "ghr_", 36, 16),
            ("github-fine-grained-pat", "github_pat_", 82, 17),
            ("gitlab-pat", "glpat-", 20, 18),
            ("gitlab-runner-token", "glrt-", 20, 19),
            ("gitlab-deploy-token", "gldt-", 20, 20),
            ("npm-token", "npm_", 36, 21),
            ("linear-api-key", "lin_api_", 40, 22),
            ("stripe-secret-key", "sk_live_", 24, 23),
            ("stripe-restricted-key", "rk_live_", 24, 24),
            ("stripe-webhook-secret", "whsec_", 32, 25),
            ("newrelic-user-key", "NRAK-", 27, 26),
            ("dockerhub-pat", "dckr_pat_", 27, 27),
            ("doppler-token", "dp.pt.", 43, 28),
        ] {
            let alphabet = if rule == "newrelic-user-key" {
                "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
            } else {
                ALNUM
            };
            let t = format!("{prefix}{}", fake(alphabet, len, seed));
            add(
                rule,
                format!("value: {t}\n"),
                t,
                format!("value: {prefix}{}", "x".repeat(len)),
            );
        }
        let a = format!("ATATT3{}", fake(URLSAFE, 190, 29));
        add(
            "atlassian-api-token",
            format!("tok {a}"),
            a,
            "ATATT3 short".into(),
        );
        let s = format!("xoxb-2034967183-3094721650129-{}", fake(ALNUM, 24, 30));
        add(
            "slack-bot-token",
            format!("SLACK={s}"),
            s,
            "xoxb-not-a-token".into(),
        );
        let s = format!("xoxp-2034967183-{}", fake(ALNUM, 30, 31));
        add("slack-user-token", format!("SLACK={s}"), s, "xoxp-".into());
        let s = format!("xapp-1-A0123BCD-2034967183-{}", fake(HEX, 64, 32));
        add("slack-app-token", format!("SLACK={s}"), s, "xapp-1-".into());
        let s = format!("T0123ABC/B0123DEF/{}", fake(ALNUM, 24, 33));
        add(
            "slack-webhook-url",
            format!("url=https://hooks.slack.com/services/{s}"),
            s,
            "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX".into(),
        );
        let s = fake(URLSAFE, 68, 34);
        add(
            "discord-webhook-url",
            format!("https://discord.com/api/webhooks/123456789012345678/{s}"),
            s,
            "https://discord.com/api/webhooks/123/abc".into(),
        );
        let s = format!(
            "{}@{}/IncomingWebhook/{}/{}",
            fake("abcdef0123456789-", 36, 35),
            fake("abcdef0123456789-", 36, 36),
            fake("abcdef0123456789", 32, 37),
            fake("abcdef0123456789-", 36, 38)
        );
        add(
            "microsoft-teams-webhook-url",
            format!("https://acme.webhook.office.com/webhookb2/{s}"),
            s,
            "https://acme.webhook.office.com/webhookb2/".into(),
        );
        let s = format!("803456719:AA{}", fake(URLSAFE, 33, 39));
        add(
            "telegram-bot-token",
            format!("BOT={s}\n"),
            s,
            "time 12:AA".into(),
        );
        let s = format!("sq0atp-{}", fake(URLSAFE, 22, 40));
        add(
            "square-access-token",
            format!("sq {s}"),
            s,
            "sq0atp-short".into(),
        );
        let s = format!("sq0csp-{}", fake(URLSAFE, 43, 41));
        add(
            "square-oauth-secret",
            format!("sq {s}"),
            s,
            "sq0csp-short".into(),
        );
        let s = format!("shpat_{}", fake("abcdef0123456789", 32, 42));
        add("shopify-token", format!("sh {s}"), s, "shpat_".into());
        let s = format!("SK{}", fake(HEX, 32, 43));
        add(
            "twilio-api-key",
            format!("twilio key {s}"),
            s,
            format!("unrelated SK{}", fake(HEX, 32, 43)),
        );
        let s = fake(HEX, 32, 44);
        add(
            "twilio-auth-token",
            format!("TWILIO_AUTH_TOKEN={s}"),
            s,
            "TWILIO_AUTH_TOKEN=changeme".into(),
        );
        let s = format!("SG.{}.{}", fake(URLSAFE, 22, 45), fake(URLSAFE, 43, 46));
        add(
            "sendgrid-api-key",
            format!("key={s}\n"),
            s,
            "SG.short.x".into(),
        );
        let s = format!("key-{}", fake(HEX, 32, 47));
        add(
            "mailgun-api-key",
            format!("mailgun: {s}"),
            s,
            format!("other: key-{}", fake(HEX, 32, 47)),
        );
        let s = format!("{}-us14", fake(HEX, 32, 48));
        add("mailchimp-api-key", format!("mc {s}"), s, "plus-us".into());
        let s = fake(HEX, 32, 49);
        add(
            "datadog-api-key",
            format!("DD_API_KEY={s}"),
            s,
            "DD_API_KEY=${DD_API_KEY}".into(),
        );
        let s = format!("sntrys_{}", fake(B64, 60, 50));
        add(
            "sentry-auth-token",
            format!("auth {s}\n"),
            s,
            "sntrys_".into(),
        );
        let s = format!("glsa_{}_{}", fake(ALNUM, 32, 51), fake(HEX, 8, 52));
        add("grafana-token", format!("g {s}"), s, "glsa_short".into());
        let s = format!("PMAK-{}-{}", fake(HEX, 24, 53), fake(HEX, 34, 54));
        add("postman-api-key", format!("p {s}"), s, "PMAK-1".into());
        let s = format!("dapi{}", fake("abcdefgh0123456789", 32, 55));
        add("databricks-token", format!("d {s}"), s, "dapi".into());
        let s = format!("{}.atlasv1.{}", fake(ALNUM, 14, 56), fake(ALNUM, 67, 57));
        add(
            "terraform-cloud-token",
            format!("token = \"{s}\""),
            s,
            "atlasv1".into(),
        );
        let s = format!("pul-{}", fake(HEX, 40, 58));
        add("pulumi-token", format!("p {s}"), s, "pul-123".into());
        let s = format!("sk-proj-{}", fake(URLSAFE, 64, 59));
        add(
            "openai-api-key",
            format!("OPENAI {s}\n"),
            s,
            "sk-proj-short".into(),
        );
        let s = format!("sk-ant-api03-{}", fake(URLSAFE, 93, 60));
        add(
            "anthropic-api-key",
            format!("key {s}\n"),
            s,
            "sk-ant-api03-short".into(),
        );
        let s = format!(
            "hf_{}",
            fake(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                34,
                61
            )
        );
        add("huggingface-token", format!("h {s}"), s, "hf_hub".into());
        let s = fake(ALNUM, 30, 62);
        add(
            "npmrc-auth-token",
            format!("//registry.example.org/:_authToken={s}\n"),
            s,
            "//registry.npmjs.org/:_authToken=${NPM_TOKEN}".into(),
        );
        let s = fake(B64, 24, 63);
        add("npmrc-auth", format!("_auth={s}\n"), s, "_auth=\n".into());
        let s = format!("pypi-AgEIcHlwaS5vcmc{}", fake(URLSAFE, 60, 64));
        add(
            "pypi-token",
            format!("password = {s}\n"),
            s,
            "pypi-AgE".into(),
        );
        let s = format!("rubygems_{}", fake(HEX, 48, 65));
        add(
            "rubygems-api-key",
            format!(":rubygems_api_key: {s}"),
            s,
            "rubygems_".into(),
        );
        let s = fake(B64, 32, 66);
        add(
            "docker-config-auth",
            format!("{{\"auths\": {{\"r.example\": {{\"auth\": \"{s}\"}}}}}}"),
            s,
            "{\"auths\": {\"r\": {}}}".into(),
        );
        for (rule, label) in [
            ("private-key-rsa", "RSA PRIVATE KEY"),
            ("private-key-ec", "EC PRIVATE KEY"),
            ("private-key-dsa", "DSA PRIVATE KEY"),
            ("private-key-openssh", "OPENSSH PRIVATE KEY"),
            ("private-key-pkcs8", "PRIVATE KEY"),
            ("private-key-pkcs8-encrypted", "ENCRYPTED PRIVATE KEY"),
            ("private-key-pgp", "PGP PRIVATE KEY BLOCK"),
        ] {
            let body = format!("{}\n{}\n", fake(B64, 64, 67), fake(B64, 40, 68));
            add(
                rule,
                format!("-----BEGIN {label}-----\n{body}-----END {label}-----\n"),
                body,
                format!("-----BEGIN {label}-----\n...\n-----END {label}-----\n"),
            );
        }
        let body = format!("{}\n{}\n", fake(B64, 64, 69), fake(B64, 20, 70));
        add(
            "private-key-putty",
            format!(
                "PuTTY-User-Key-File-2: ssh-rsa\nEncryption: none\nComment: k\nPublic-Lines: 1\nAAAA\nPrivate-Lines: 2\n{body}Private-MAC: 00\n"
            ),
            body,
            "PuTTY-User-Key-File-2: ssh-rsa\n".into(),
        );
        let s = format!(
            "AGE-SECRET-KEY-1{}",
            fake("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58, 71)
        );
        add(
            "age-secret-key",
            format!("# key\n{s}\n"),
            s,
            "AGE-SECRET-KEY-1".into(),
        );
        let s = format!(
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.{}",
            fake(URLSAFE, 43, 72)
        );
        add(
            "jwt",
            format!("auth: {s}\n"),
            s,
            "eyJhbGciOiJIUzI1NiJ9".into(),
        );
        let s = format!("hvs.{}", fake(URLSAFE, 90, 73));
        add(
            "vault-service-token",
            format!("VAULT {s}\n"),
            s,
            "hvs.".into(),
        );
        let s = format!("hvb.{}", fake(URLSAFE, 90, 74));
        add(
            "vault-batch-token",
            format!("VAULT {s}\n"),
            s,
            "hvb.".into(),
        );
        let s = format!("s.{}", fake(ALNUM, 24, 75));
        add(
            "vault-legacy-token",
            format!("vault_token: {s}\n"),
            s,
            "vault_token: s.short".into(),
        );
        add(
            "postgres-url",
            "DATABASE_URL=postgres://app:Sup3rS3cret@db:5432/app".into(),
            "Sup3rS3cret".into(),
            "postgres://app@db:5432/app".into(),
        );
        add(
            "mysql-url",
            "mysql://root:Sup3rS3cret@db/app".into(),
            "Sup3rS3cret".into(),
            "mysql://root:${MYSQL_PASSWORD}@db/app".into(),
        );
        add(
            "mongodb-url",
            "mongodb+srv://u:Sup3rS3cret@c.example.net/db".into(),
            "Sup3rS3cret".into(),
            "mongodb://localhost:27017/db".into(),
        );
        add(
            "redis-url",
            "REDIS=redis://:Sup3rS3cret@cache:6379/0".into(),
            "Sup3rS3cret".into(),
            "redis://cache:6379/0".into(),
        );
        add(
            "amqp-url",
            "amqp://guest:Sup3rS3cret@mq:5672/".into(),
            "Sup3rS3cret".into(),
            "amqp://mq:5672/".into(),
        );
        add(
            "jdbc-url-password",
            "jdbc:postgresql://db:5432/app?user=app&password=Sup3rS3cret".into(),
            "Sup3rS3cret".into(),
            "jdbc:postgresql://db:5432/app?user=app".into(),
        );
        add(
            "basic-auth-url",
            "git clone https://deploy:Sup3rS3cret@git.example.org/x.git".into(),
            "Sup3rS3cret".into(),
            "https://git.example.org/x.git".into(),
        );
        let s = fake(URLSAFE, 40, 76);
        add(
            "kubeconfig-token",
            format!(
                "apiVersion: v1\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: {s}\n"
            ),
            s,
            "apiVersion: v1\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: ${TOKEN}\n"
                .into(),
        );
        let s = fake(B64, 80, 77);
        add(
            "kubeconfig-client-key",
            format!("    client-key-data: {s}\n"),
            s,
            "    client-key-data: \n".into(),
        );
        add(
            "netrc-password",
            "machine api.example.org\n  login bot\n  password Sup3rS3cret\n".into(),
            "Sup3rS3cret".into(),
            "machine api.example.org login bot password $PASSWORD\n".into(),
        );
        add(
            "generic-password",
            "db.password = Tr0ub4dor&3x\n".into(),
            "Tr0ub4dor&3x".into(),
            "password = ${DB_PASSWORD}\n".into(),
        );
        let s = fake(ALNUM, 24, 78);
        add(
            "generic-secret",
            format!("app_secret: \"{s}\"\n"),
            s,
            "client_secret: <your secret>\n".into(),
        );
        let s = fake(ALNUM, 32, 79);
        add(
            "generic-token",
            format!("api_key = '{s}'\n"),
            s,
            "api_key = 'aaaaaaaaaaaaaaaaaaaa'\n".into(),
        );
        v.extend(families::tests::examples());
        v
    }

    #[test]
    fn every_rule_has_a_true_and_a_false_example() {
        let ex = examples();
        for r in builtin_rules() {
            assert!(
                ex.iter().any(|e| e.0 == r.id),
                "rule {} has no example",
                r.id
            );
        }
        for (rule, text, secret, negative) in &ex {
            hit(rule, text, secret);
            miss(rule, negative);
        }
    }

    #[test]
    fn the_catalog_lists_every_rule_once_with_its_severity() {
        let set = RuleSet::builtin();
        let catalog = rule_catalog();
        assert_eq!(catalog.len(), set.rules.len() + set.file_kinds.len() + 1);
        let mut ids: Vec<&str> = catalog.iter().map(|(id, _, _)| id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), catalog.len(), "duplicate ids in the catalog");
        for r in &set.rules {
            assert!(
                catalog.contains(&(
                    r.def.id.to_owned(),
                    r.def.description.to_owned(),
                    r.def.severity
                )),
                "{}",
                r.def.id
            );
        }
        for k in &set.file_kinds {
            assert!(
                catalog.contains(&(
                    k.def.id.to_owned(),
                    k.def.description.to_owned(),
                    Severity::High
                )),
                "{}",
                k.def.id
            );
        }
        assert_eq!(
            catalog.last(),
            Some(&(
                "secret-env-name".to_owned(),
                "variable whose name says it holds a secret, with a real value".to_owned(),
                Severity::High
            ))
        );
    }

    #[test]
    fn file_kinds_and_the_secret_name_rule_report_password_like_findings() {
        for k in builtin_file_kinds() {
            let r = k.rule();
            assert_eq!((r.id, r.description), (k.id, k.description));
            assert_eq!(r.pattern, k.value_pattern);
            assert_eq!(
                (r.severity, r.confidence, r.class),
                (
                    Severity::High,
                    Confidence::Medium,
                    SecretClass::PasswordLike
                ),
                "{}",
                k.id
            );
            assert!(r.keywords.is_empty(), "{}: selected by path only", k.id);
        }
        let s = SECRET_NAME_RULE;
        assert_eq!(
            (s.severity, s.confidence, s.class, s.priority),
            (
                Severity::High,
                Confidence::Medium,
                SecretClass::PasswordLike,
                0
            )
        );
        assert!(s.keywords.is_empty(), "never runs on content");
    }

    #[test]
    fn at_least_sixty_kinds_with_unique_ids() {
        let rules = builtin_rules();
        let kinds = builtin_file_kinds();
        let mut ids: Vec<&str> = rules
            .iter()
            .map(|r| r.id)
            .chain(kinds.iter().map(|k| k.id))
            .collect();
        ids.push(SECRET_NAME_RULE.id);
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "duplicate rule ids");
        assert!(n >= 60, "only {n} kinds");
    }

    #[test]
    fn specific_rule_wins_over_generic_on_the_same_value() {
        let npm = format!("npm_{}", fake(ALNUM, 36, 80));
        hit(
            "npm-token",
            &format!("//registry.npmjs.org/:_authToken={npm}\n"),
            &npm,
        );
        let jwt = format!(
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.{}",
            fake(URLSAFE, 43, 81)
        );
        hit("jwt", &format!("access_token = {jwt}\n"), &jwt);
        hit(
            "postgres-url",
            "postgres://u:Sup3rS3cret@h/db",
            "Sup3rS3cret",
        );
    }

    #[test]
    fn binary_files_skip_generic_rules_only() {
        let set = RuleSet::builtin();
        let text = format!("password=Tr0ub4dor&3x ghp_{}", fake(ALNUM, 36, 82));
        let found: Vec<&str> = set
            .scan(text.as_bytes(), true)
            .iter()
            .map(|m| set.rules[m.rule].def.id)
            .collect();
        assert_eq!(found, vec!["github-pat"]);
    }

    #[test]
    fn a_value_that_spells_out_its_rule_id_is_the_rule_table_not_a_secret() {
        let set = RuleSet::builtin();
        // As the rule table sits in this scanner's own binary: keyword, id, description, regex.
        let table =
            b"\x00gldt-gitlab-deploy-tokenGitLab deploy token\\b(?P<s>gldt-[A-Za-z0-9_]{20,})\x00";
        assert!(
            set.scan(table, true).is_empty(),
            "{:?}",
            set.scan(table, true)
        );
        let real = b"\x00gldt-Zq3xT9vK2mP8wR4nL6yB\x00";
        let found = set.scan(real, true);
        assert_eq!(found.len(), 1, "a real-looking deploy token is still found");
        assert_eq!(set.rules[found[0].rule].def.id, "gitlab-deploy-token");
    }

    #[test]
    fn placeholders_are_recognised() {
        for p in [
            "${NPM_TOKEN}",
            "{{ .Values.token }}",
            "<your-token>",
            "AKIAIOSFODNN7EXAMPLE",
            "xxxxxxxx",
            "changeme",
            "$DB_PASSWORD",
            "%s",
            "********",
            "null",
            "aaaaaaaaaaaa",
            "abababab",
            "your_api_key_here",
            "process.env.TOKEN",
        ] {
            assert!(is_placeholder(p.as_bytes()), "{p} should be a placeholder");
        }
        for real in ["Tr0ub4dor&3x", "hunter22", &fake(ALNUM, 40, 83)] {
            assert!(
                !is_placeholder(real.as_bytes()),
                "{real} is not a placeholder"
            );
        }
    }

    #[test]
    fn entropy_of_known_strings() {
        assert_eq!(shannon_entropy(b"aaaa"), 0.0);
        assert!((shannon_entropy(b"abcd") - 2.0).abs() < 1e-9);
        assert!(shannon_entropy(fake(B64, 64, 84).as_bytes()) > 4.5);
    }

    #[test]
    fn secret_names_and_assignments() {
        for n in [
            "DB_PASSWORD",
            "NPM_TOKEN",
            "API_KEY",
            "aws-secret-access-key",
            "CLIENT_SECRET",
            "SENTRY_DSN",
            "SECRET",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in [
            "PASSWORD_FILE",
            "TOKEN_URL",
            "GPG_KEY",
            "PATH",
            "HOME",
            "PUBLIC_KEY",
            "API_KEY_ID",
            "PASSWORD_MIN_LENGTH",
        ] {
            assert!(!is_secret_name(n), "{n}");
        }
        assert!(secret_assignment("DB_PASSWORD", "hunter22"));
        assert!(!secret_assignment("DB_PASSWORD", ""));
        assert!(!secret_assignment("DB_PASSWORD", "${DB_PASSWORD}"));
        assert!(!secret_assignment("DB_PASSWORD", "/run/secrets/db"));
        assert!(!secret_assignment("TOKEN", "3600000"));
        assert!(!secret_assignment("LANG", "C.UTF-8"));
    }

    #[test]
    fn file_kinds_need_real_values() {
        let set = RuleSet::builtin();
        let kind = |p: &str| {
            set.file_kinds_for(p)
                .next()
                .map(|k| set.file_kinds[k].def.id)
        };
        assert_eq!(kind("app/.env"), Some("file-dotenv"));
        assert_eq!(kind("app/.env.production"), Some("file-dotenv"));
        assert_eq!(kind("app/.env.example"), None);
        assert_eq!(kind("root/.ssh/id_rsa"), Some("file-ssh-private-key"));
        assert_eq!(kind("root/.ssh/id_rsa.pub"), None);
        assert_eq!(kind("root/.aws/credentials"), Some("file-aws-credentials"));
        let env = set.file_kinds_for("app/.env").next().expect("kind");
        assert!(
            set.file_kind_value(env, b"# comment\nLOG_LEVEL=debug\n")
                .is_some()
        );
        assert!(
            set.file_kind_value(env, b"# only comments\nTOKEN=${TOKEN}\nX=\n")
                .is_none()
        );
        let pg = set.file_kinds_for("root/.pgpass").next().expect("kind");
        assert!(
            set.file_kind_value(pg, b"db:5432:app:app:Sup3rS3cret\n")
                .is_some()
        );
        assert!(
            set.file_kind_value(pg, b"# host:port:db:user:password\n")
                .is_none()
        );
    }

    #[test]
    fn code_references_are_not_literals() {
        for code in [
            "self.password",
            "typing.Optional",
            "user_password",
            "getPass",
            "kwargs",
        ] {
            assert!(looks_like_code(code.as_bytes()), "{code}");
        }
        for lit in ["hunter22", "Tr0ub4dor&3x", "s3cr3t!value9", "p4ss"] {
            assert!(!looks_like_code(lit.as_bytes()), "{lit}");
        }
        miss("generic-password", "password = self.password\n");
        miss(
            "generic-password",
            "def f(password: typing.Optional[bytes]):\n",
        );
        assert!(is_package_path("usr/lib/python3/dist-packages/x.py"));
        assert!(is_package_path("app/node_modules/x/index.js"));
        assert!(!is_package_path("app/settings.py"));
    }

    #[test]
    fn test_material_paths() {
        assert!(is_test_material(
            "usr/lib/python3/dist-packages/x/tests/key.pem"
        ));
        assert!(is_test_material("usr/share/doc/openssl/example.txt"));
        assert!(!is_test_material("app/.env"));
        assert!(!is_test_material("tests"));
    }

    #[test]
    fn ruleset_version_is_stable_and_content_addressed() {
        let a = RuleSet::compile(builtin_rules(), builtin_file_kinds());
        assert_eq!(a.version, RuleSet::builtin().version);
        let mut changed = builtin_rules();
        changed[0].pattern = r"AKIA[A-Z]{16}";
        assert_ne!(
            RuleSet::compile(changed, builtin_file_kinds()).version,
            a.version
        );
    }
}
