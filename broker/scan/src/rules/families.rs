//! Token families completed from the providers' own documentation, added to the built-in
//! rules ([`super::builtin_rules`]): GitLab's token types beyond PATs, runner and deploy tokens;
//! Slack configuration and refresh tokens; Vault recovery tokens and pre-1.10 batch tokens;
//! private keys embedded in strings, indented blocks or base64; docker `config.json` as
//! base64 (Kubernetes pull secrets); credentials on `curl` and `mysql` command lines; and the
//! long tail of prefixed SaaS API keys.

use super::{Confidence as C, RuleDef, Severity as S, rule};

macro_rules! end {
    () => {
        r"(?:[^A-Za-z0-9_\-]|$)"
    };
}

/// The rules of this module, in reporting order.
pub fn rules() -> Vec<RuleDef> {
    vec![
        // --- GitLab: every documented prefix (PAT, runner and deploy tokens are in the main list)
        rule("gitlab-token", "GitLab token (OAuth application secret, CI/CD job, trigger, feed, incoming mail, agent, SCIM, feature-flag client, runner registration)",
            &["gloas-", "glcbt-", "glptt-", "glft-", "glimt-", "glagent-", "glsoat-", "glffct-", "GR1348941"],
            concat!(r"\b(?P<s>(?:gloas-[a-f0-9]{64}|glcbt-[0-9a-f]{1,5}_[A-Za-z0-9_\-]{20,}|glptt-[0-9a-f]{40}|glft-[A-Za-z0-9_\-]{20,}|glimt-[a-z0-9]{25}|glagent-[A-Za-z0-9_\-]{50,}|glsoat-[A-Za-z0-9_\-]{20,}|glffct-[A-Za-z0-9_\-]{20,}|GR1348941[A-Za-z0-9_\-]{20,}))", end!()),
            S::High),
        // --- Slack: app configuration tokens and their refresh tokens
        rule("slack-config-token", "Slack app configuration or refresh token", &["xoxe"],
            concat!(r"\b(?P<s>xoxe(?:\.xox[bp])?-\d-[A-Za-z0-9_\-]{60,})", end!()), S::High),
        // --- HashiCorp Vault: recovery tokens, and batch tokens before Vault 1.10
        rule("vault-recovery-token", "HashiCorp Vault recovery token", &["hvr."],
            concat!(r"\b(?P<s>hvr\.[A-Za-z0-9_\-]{24,})", end!()), S::High).entropy(3.0),
        rule("vault-legacy-batch-token", "HashiCorp Vault batch token (pre-1.10 format)", &["b.AAAAAQ"],
            concat!(r"\b(?P<s>b\.AAAAAQ[A-Za-z0-9_\-]{80,})", end!()), S::High),
        // --- private keys as they sit in configuration
        rule("private-key-embedded", "private key (PEM) in a string with escaped newlines or an indented block",
            &["private key"],
            r"-----BEGIN (?:(?:RSA|EC|DSA|OPENSSH|ENCRYPTED) )?PRIVATE KEY-----(?:\\r)?\\n(?P<s>(?:[A-Za-z0-9+/=]|\\r|\\n){40,})|-----BEGIN (?:(?:RSA|EC|DSA|OPENSSH|ENCRYPTED) )?PRIVATE KEY-----\r?\n(?P<s2>[ \t]+[A-Za-z0-9+/=]{40,}(?:\r?\n[ \t]+[A-Za-z0-9+/=]+)*)",
            S::High),
        rule("private-key-base64", "private key (PEM) encoded in base64 (Kubernetes secrets, CI variables)", &["LS0tLS1CRUdJTi"],
            r"(?P<s>LS0tLS1CRUdJTi[A-Za-z0-9+/]{0,24}?(?:UFJJVkFURSBLRVkt|BSSVZBVEUgS0VZLS|QUklWQVRFIEtFWS0t)[A-Za-z0-9+/=]{100,})",
            S::High),
        rule("docker-config-base64", "Docker config.json with registry credentials, base64-encoded (pull secrets)", &["eyJhdXRocyI6"],
            r"(?P<s>eyJhdXRocyI6[A-Za-z0-9+/=]{40,})", S::High).prio(1).password(),
        // --- credentials on command lines
        rule("curl-user-password", "password passed to curl with -u user:password", &["curl"],
            r#"\bcurl\b[^\r\n]{0,200}?[ \t](?:-u|--user)[ \t]+["']?[^:\s"'$]+:(?P<s>[^\s"'@$]{4,})"#,
            S::High).prio(1).password().conf(C::Medium).text(),
        rule("mysql-cli-password", "password passed to the mysql client with -pPASSWORD", &["mysql"],
            r#"\bmysql(?:dump|admin)?[ \t][^\r\n]{0,200}?[ \t]-p(?P<s>[^\s"'\-$][^\s"']{3,})"#,
            S::High).prio(1).password().conf(C::Medium).text(),
        // --- code hosting and CI
        rule("bitbucket-app-password", "Bitbucket app password or Atlassian API token (ATBB)", &["ATBB"],
            concat!(r"\b(?P<s>ATBB[A-Za-z0-9_=.\-]{32,})", end!()), S::High),
        rule("buildkite-token", "Buildkite API access token", &["bkua_"],
            concat!(r"\b(?P<s>bkua_[a-f0-9]{40})", end!()), S::High),
        rule("circleci-token", "CircleCI personal or project API token", &["CCIPAT_", "CCIPRJ_"],
            concat!(r"\b(?P<s>CCIP(?:AT|RJ)_[A-Za-z0-9]{20,}_[a-f0-9]{40})", end!()), S::High),
        rule("sourcegraph-token", "Sourcegraph access token", &["sgp_"],
            concat!(r"\b(?P<s>sgp_(?:[a-f0-9]{16}_|local_)?[a-f0-9]{40})", end!()), S::High),
        rule("octopus-api-key", "Octopus Deploy API key", &["API-"],
            concat!(r"\b(?P<s>API-[A-Z0-9]{26})", end!()), S::High).entropy(3.0),
        rule("harness-token", "Harness personal access or service account token", &["pat.", "sat."],
            concat!(r"\b(?P<s>(?:pat|sat)\.[A-Za-z0-9_\-]{22}\.[a-f0-9]{24}\.[A-Za-z0-9]{20})", end!()), S::High),
        // --- package registries
        rule("nuget-api-key", "NuGet API key", &["oy2"],
            concat!(r"\b(?P<s>oy2[a-z0-9]{43})", end!()), S::High).entropy(3.5),
        rule("jfrog-api-key", "JFrog Artifactory API key", &["AKCp"],
            concat!(r"\b(?P<s>AKCp[A-Za-z0-9]{69})", end!()), S::High),
        rule("clojars-token", "Clojars deploy token", &["CLOJARS_"],
            concat!(r"\b(?P<s>CLOJARS_[a-z0-9]{60})", end!()), S::High),
        rule("packagist-token", "Private Packagist token", &["packagist_"],
            concat!(r"\b(?P<s>packagist_[ou][ru]t_[a-f0-9]{68})", end!()), S::High),
        rule("dockerhub-oat", "Docker Hub organization access token", &["dckr_oat_"],
            concat!(r"\b(?P<s>dckr_oat_[A-Za-z0-9_\-]{32})", end!()), S::High),
        // --- cloud
        rule("google-oauth-access-token", "Google OAuth access token", &["ya29."],
            concat!(r"\b(?P<s>ya29\.[A-Za-z0-9_\-]{50,})", end!()), S::High).entropy(3.5),
        rule("google-oauth-refresh-token", "Google OAuth refresh token", &["1//0"],
            concat!(r"(?:^|[^A-Za-z0-9/])(?P<s>1//0[A-Za-z0-9_\-]{40,})", end!()), S::High).entropy(3.5),
        rule("heroku-api-key-v2", "Heroku API key (HRKU- format)", &["HRKU-"],
            concat!(r"\b(?P<s>HRKU-AA[A-Za-z0-9_\-]{58})", end!()), S::High),
        rule("scaleway-access-key", "Scaleway access key ID", &["SCW"],
            concat!(r"\b(?P<s>SCW[A-Z0-9]{17})", end!()), S::Medium).conf(C::Medium).entropy(3.0),
        // --- observability, SaaS, AI
        rule("newrelic-insert-key", "New Relic insert or ingest key", &["NRII-", "NRAA-", "NRJS-"],
            concat!(r"\b(?P<s>NR(?:II|AA|JS)-[A-Za-z0-9_\-]{19,32})", end!()), S::High),
        rule("dynatrace-token", "Dynatrace API token", &["dt0c01."],
            concat!(r"\b(?P<s>dt0c01\.[A-Z0-9]{24}\.[A-Z0-9]{64})", end!()), S::High),
        rule("contentful-token", "Contentful personal access token", &["CFPAT-"],
            concat!(r"\b(?P<s>CFPAT-[A-Za-z0-9_\-]{43})", end!()), S::High),
        rule("easypost-api-key", "EasyPost API key", &["EZAK", "EZTK"],
            concat!(r"\b(?P<s>EZ[AT]K[A-Za-z0-9]{54})", end!()), S::High),
        rule("figma-token", "Figma personal access token", &["figd_"],
            concat!(r"\b(?P<s>figd_[A-Za-z0-9_\-]{40})", end!()), S::High),
        rule("flyio-token", "Fly.io access token", &["fo1_", "FlyV1 fm"],
            concat!(r"\b(?P<s>(?:fo1_[A-Za-z0-9_\-]{43}|FlyV1 fm\d_[A-Za-z0-9_+/=\-]{100,}))", end!()), S::High),
        rule("netlify-token", "Netlify personal access token", &["nfp_"],
            concat!(r"\b(?P<s>nfp_[A-Za-z0-9]{36})", end!()), S::High),
        rule("notion-token", "Notion integration token", &["ntn_"],
            concat!(r"\b(?P<s>ntn_[A-Za-z0-9]{46})", end!()), S::High),
        rule("planetscale-token", "PlanetScale service token, password or OAuth token", &["pscale_"],
            concat!(r"\b(?P<s>pscale_(?:tkn|pw|oauth)_[A-Za-z0-9_\-=.]{32,64})", end!()), S::High),
        rule("prefect-api-key", "Prefect API key", &["pnu_"],
            concat!(r"\b(?P<s>pnu_[A-Za-z0-9]{36})", end!()), S::High),
        rule("readme-api-key", "ReadMe API key", &["rdme_"],
            concat!(r"\b(?P<s>rdme_[a-z0-9]{70})", end!()), S::High),
        rule("render-api-key", "Render API key", &["rnd_"],
            concat!(r"\b(?P<s>rnd_[A-Za-z0-9]{32})", end!()), S::High).entropy(3.5),
        rule("replicate-token", "Replicate API token", &["r8_"],
            concat!(r"\b(?P<s>r8_[A-Za-z0-9]{37})", end!()), S::High).entropy(3.5),
        rule("supabase-token", "Supabase access token or secret key", &["sbp_", "sb_secret_"],
            concat!(r"\b(?P<s>(?:sbp_[a-f0-9]{40}|sb_secret_[A-Za-z0-9_\-]{31,}))", end!()), S::High),
        rule("tailscale-key", "Tailscale API, auth or OAuth client key", &["tskey-"],
            concat!(r"\b(?P<s>tskey-(?:api|auth|client|webhook|scim)-[A-Za-z0-9]+-[A-Za-z0-9]{20,})", end!()), S::High),
        rule("groq-api-key", "Groq API key", &["gsk_"],
            concat!(r"\b(?P<s>gsk_[A-Za-z0-9]{52})", end!()), S::High),
        rule("langsmith-api-key", "LangSmith API key", &["lsv2_"],
            concat!(r"\b(?P<s>lsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10})", end!()), S::High),
        rule("pinecone-api-key", "Pinecone API key", &["pcsk_"],
            concat!(r"\b(?P<s>pcsk_[A-Za-z0-9]{4,8}_[A-Za-z0-9]{50,80})", end!()), S::High),
        rule("mapbox-secret-token", "Mapbox secret access token", &["sk.eyJ"],
            concat!(r"\b(?P<s>sk\.eyJ[A-Za-z0-9_\-]{40,}\.[A-Za-z0-9_\-]{20,})", end!()), S::High),
        rule("onepassword-service-token", "1Password service account token", &["ops_eyJ"],
            concat!(r"\b(?P<s>ops_eyJ[A-Za-z0-9+/=_\-]{100,})", end!()), S::High),
        rule("adafruit-io-key", "Adafruit IO key", &["aio_"],
            concat!(r"\b(?P<s>aio_[A-Za-z0-9]{28})", end!()), S::High).entropy(3.5),
        rule("braintree-access-token", "Braintree production access token", &["access_token$production$"],
            r"\b(?P<s>access_token\$production\$[a-z0-9]{16}\$[a-f0-9]{32})", S::Critical),
        rule("plaid-access-token", "Plaid access token", &["access-production-", "access-development-"],
            concat!(r"\b(?P<s>access-(?:production|development)-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12})", end!()), S::High),
        rule("resend-api-key", "Resend API key", &["re_"],
            concat!(r"\b(?P<s>re_[A-Za-z0-9]{8}_[A-Za-z0-9]{24})", end!()), S::High).entropy(3.5),
        rule("dropbox-token", "Dropbox short-lived access token", &["sl."],
            concat!(r"\b(?P<s>sl\.[A-Za-z0-9_\-]{130,})", end!()), S::High).entropy(4.0),
        rule("brevo-api-key", "Brevo (Sendinblue) API key", &["xkeysib-"],
            concat!(r"\b(?P<s>xkeysib-[a-f0-9]{64}-[A-Za-z0-9]{16})", end!()), S::High),
        rule("shippo-token", "Shippo live API token", &["shippo_live_"],
            concat!(r"\b(?P<s>shippo_live_[a-f0-9]{40})", end!()), S::High),
        rule("infracost-api-key", "Infracost API key", &["ico-"],
            concat!(r"\b(?P<s>ico-[A-Za-z0-9]{32})", end!()), S::High).entropy(3.5),
    ]
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::rules::tests::{ALNUM, B64, HEX, URLSAFE, fake};

    const LOWALNUM: &str = "abcdefghijklmnopqrstuvwxyz0123456789";
    const UPALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

    /// (rule, text, secret, negative) for every rule of this module; the rule set's
    /// `every_rule_has_a_true_and_a_false_example` runs them.
    pub(crate) fn examples() -> Vec<(&'static str, String, String, String)> {
        let mut v = Vec::new();
        let mut seed = 500;
        let mut f = |alphabet: &str, n: usize| {
            seed += 1;
            fake(alphabet, n, seed)
        };
        let simple: Vec<(&'static str, String)> = vec![
            ("gitlab-token", format!("glptt-{}", f(HEX, 40))),
            (
                "slack-config-token",
                format!("xoxe.xoxp-1-{}", f(URLSAFE, 150)),
            ),
            ("vault-recovery-token", format!("hvr.{}", f(ALNUM, 24))),
            (
                "vault-legacy-batch-token",
                format!("b.AAAAAQ{}", f(URLSAFE, 120)),
            ),
            ("bitbucket-app-password", format!("ATBB{}", f(ALNUM, 32))),
            ("buildkite-token", format!("bkua_{}", f(HEX, 40))),
            (
                "circleci-token",
                format!("CCIPAT_{}_{}", f(ALNUM, 22), f(HEX, 40)),
            ),
            ("sourcegraph-token", format!("sgp_{}", f(HEX, 40))),
            ("octopus-api-key", format!("API-{}", f(UPALNUM, 26))),
            (
                "harness-token",
                format!("pat.{}.{}.{}", f(URLSAFE, 22), f(HEX, 24), f(ALNUM, 20)),
            ),
            ("nuget-api-key", format!("oy2{}", f(LOWALNUM, 43))),
            ("jfrog-api-key", format!("AKCp{}", f(ALNUM, 69))),
            ("clojars-token", format!("CLOJARS_{}", f(LOWALNUM, 60))),
            ("packagist-token", format!("packagist_uut_{}", f(HEX, 68))),
            ("dockerhub-oat", format!("dckr_oat_{}", f(URLSAFE, 32))),
            (
                "google-oauth-access-token",
                format!("ya29.{}", f(URLSAFE, 100)),
            ),
            (
                "google-oauth-refresh-token",
                format!("1//0{}", f(URLSAFE, 90)),
            ),
            ("heroku-api-key-v2", format!("HRKU-AA{}", f(URLSAFE, 58))),
            ("scaleway-access-key", format!("SCW{}", f(UPALNUM, 17))),
            ("newrelic-insert-key", format!("NRII-{}", f(URLSAFE, 32))),
            (
                "dynatrace-token",
                format!("dt0c01.{}.{}", f(UPALNUM, 24), f(UPALNUM, 64)),
            ),
            ("contentful-token", format!("CFPAT-{}", f(URLSAFE, 43))),
            ("easypost-api-key", format!("EZAK{}", f(ALNUM, 54))),
            ("figma-token", format!("figd_{}", f(URLSAFE, 40))),
            ("flyio-token", format!("fo1_{}", f(URLSAFE, 43))),
            ("netlify-token", format!("nfp_{}", f(ALNUM, 36))),
            ("notion-token", format!("ntn_{}", f(ALNUM, 46))),
            (
                "planetscale-token",
                format!("pscale_tkn_{}", f(URLSAFE, 43)),
            ),
            ("prefect-api-key", format!("pnu_{}", f(ALNUM, 36))),
            ("readme-api-key", format!("rdme_{}", f(LOWALNUM, 70))),
            ("render-api-key", format!("rnd_{}", f(ALNUM, 32))),
            ("replicate-token", format!("r8_{}", f(ALNUM, 37))),
            ("supabase-token", format!("sbp_{}", f(HEX, 40))),
            (
                "tailscale-key",
                format!("tskey-auth-k{}-{}", f(ALNUM, 12), f(ALNUM, 30)),
            ),
            ("groq-api-key", format!("gsk_{}", f(ALNUM, 52))),
            (
                "langsmith-api-key",
                format!("lsv2_pt_{}_{}", f(HEX, 32), f(HEX, 10)),
            ),
            (
                "pinecone-api-key",
                format!("pcsk_{}_{}", f(ALNUM, 6), f(ALNUM, 63)),
            ),
            (
                "mapbox-secret-token",
                format!("sk.eyJ1Ijoi{}.{}", f(ALNUM, 50), f(URLSAFE, 22)),
            ),
            (
                "onepassword-service-token",
                format!("ops_eyJ{}", f(ALNUM, 200)),
            ),
            ("adafruit-io-key", format!("aio_{}", f(ALNUM, 28))),
            (
                "braintree-access-token",
                format!("access_token$production${}${}", f(LOWALNUM, 16), f(HEX, 32)),
            ),
            (
                "plaid-access-token",
                format!(
                    "access-production-{}-{}-{}-{}-{}",
                    f(HEX, 8),
                    f(HEX, 4),
                    f(HEX, 4),
                    f(HEX, 4),
                    f(HEX, 12)
                ),
            ),
            (
                "resend-api-key",
                format!("re_{}_{}", f(ALNUM, 8), f(ALNUM, 24)),
            ),
            ("dropbox-token", format!("sl.{}", f(URLSAFE, 136))),
            (
                "brevo-api-key",
                format!("xkeysib-{}-{}", f(HEX, 64), f(ALNUM, 16)),
            ),
            ("shippo-token", format!("shippo_live_{}", f(HEX, 40))),
            ("infracost-api-key", format!("ico-{}", f(ALNUM, 32))),
        ];
        for (rule, s) in simple {
            // The negative: the same shape filled with one character.
            let cut = s.len() / 3;
            let negative = format!("value = {}{}\n", &s[..cut], "x".repeat(s.len() - cut));
            v.push((rule, format!("value = {s}\n"), s, negative));
        }
        let body = format!("{}\\n{}", f(B64, 64), f(B64, 40));
        v.push((
            "private-key-embedded",
            format!("{{\"k\": \"-----BEGIN PRIVATE KEY-----\\n{body}\\n-----END PRIVATE KEY-----\\n\"}}\n"),
            format!("{body}\\n"),
            "{\"k\": \"-----BEGIN PRIVATE KEY-----\\n...\\n-----END PRIVATE KEY-----\"}\n".into(),
        ));
        let b64 = format!("LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t{}", f(B64, 200));
        v.push((
            "private-key-base64",
            format!("  tls.key: {b64}\n"),
            b64,
            "  tls.crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n".into(),
        ));
        let cfg = format!("eyJhdXRocyI6{}", f(B64, 60));
        v.push((
            "docker-config-base64",
            format!("  .dockerconfigjson: {cfg}\n"),
            cfg,
            "  .dockerconfigjson: eyJhdXRocyI6e319\n".into(),
        ));
        let pw = format!("Qx{}9", f(ALNUM, 10));
        v.push((
            "curl-user-password",
            format!("curl -fsS -u deploy:{pw} https://ci.internal/api\n"),
            pw.clone(),
            "curl -u \"$USER:$PASSWORD\" https://ci.internal/api\n".into(),
        ));
        v.push((
            "mysql-cli-password",
            format!("mysql -u root -p{pw} -h db shop\n"),
            pw,
            "mysql -u root -p -h db shop\n".into(),
        ));
        v
    }
}
