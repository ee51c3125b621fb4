//! Is a value a literal secret, or something standing in for one? Pure functions over bytes,
//! shared by every rule (through [`super::is_placeholder`]) and by the structured-assignment
//! detector ([`super::assign`]):
//! - [`is_filler`]: documentation filler — one repeated character filling most of the value
//!   (`ghp_000…`, `AKIA####…`), well-known sample passwords (`scott:tiger`, `foo:bar`,
//!   `guest`, `changeit`, `hunter2`), `user:password`-style samples;
//! - [`is_reference`]: a value that names where the secret comes from — template and
//!   variable syntax of every common kind (`${X}`, `$(X)`, `{{ x }}`, `%env(X)%`, `{x}`,
//!   `%X%`, `@x@`, `<%= %>`), CloudFormation intrinsics, secret-manager addresses, environment
//!   lookups in code (`os.environ[...]`, `System.getenv(...)`);
//! - [`non_literal`]: what the assignment detector rejects besides those: empty, booleans and
//!   null-likes, numbers, file paths, plain URLs, code expressions.

/// Passwords that documentation and default installs use as samples. Compared whole and
/// case-insensitively.
const SAMPLE_PASSWORDS: &[&[u8]] = &[
    b"admin",
    b"guest",
    b"root",
    b"tiger",
    b"scott",
    b"foo",
    b"bar",
    b"baz",
    b"qux",
    b"foobar",
    b"user",
    b"username",
    b"pwd",
    b"pw",
    b"changeit",
    b"hunter2",
    b"letmein",
    b"mypassword",
    b"mysecretpassword",
    b"mysecret",
    b"yourpassword",
    b"p@ssw0rd",
    b"passw0rd",
    b"s3cr3t",
    b"secret123",
    b"password1",
    b"password123",
    b"abc123",
    b"qwerty",
    b"example",
    b"demo",
    b"sample",
    b"neo4j",
    b"postgres",
    b"mysql",
    b"elastic",
    b"ipsum",
    b"lorem",
    b"redacted",
    b"hidden",
    b"masked",
    b"todo",
    b"fixme",
    b"tbd",
    b"n/a",
    b"na",
    b"-",
    b"~",
];

/// Words that are not secrets when they are the whole value (case-insensitive).
const NOT_SECRET_WORDS: &[&[u8]] = &[
    b"password",
    b"passwd",
    b"pass",
    b"secret",
    b"token",
    b"key",
    b"apikey",
    b"api_key",
    b"secret_key",
    b"secretkey",
    b"access_key",
    b"private_key",
    b"credentials",
    b"none",
    b"null",
    b"nil",
    b"undefined",
    b"true",
    b"false",
    b"yes",
    b"no",
    b"on",
    b"off",
    b"enabled",
    b"disabled",
    b"required",
    b"optional",
    b"string",
    b"str",
    b"bytes",
    b"text",
    b"any",
];

/// Is this value documentation filler rather than a secret: one character filling most of
/// it, a well-known sample password, or a `user:password` sample pair? Pure.
pub fn is_filler(value: &[u8]) -> bool {
    let v = value;
    if v.is_empty() {
        return true;
    }
    let lower = v.to_ascii_lowercase();
    if SAMPLE_PASSWORDS.contains(&lower.as_slice()) || NOT_SECRET_WORDS.contains(&lower.as_slice())
    {
        return true;
    }
    // `user:password` / `neo4j/password` samples: both halves sample words.
    if let Some(sep) = v.iter().position(|b| *b == b':' || *b == b'/')
        && v[sep + 1..].iter().all(|b| *b != b':' && *b != b'/')
    {
        let pw = &lower[sep + 1..];
        if SAMPLE_PASSWORDS.contains(&pw) || NOT_SECRET_WORDS.contains(&pw) {
            return true;
        }
    }
    // One character (x, 0, #, *, -...) filling half the value or more: `ghp_000…`,
    // `AKIAXXXX…`, `########`. Real tokens of 8+ characters never look like that.
    if v.len() >= 8 {
        let mut counts = [0usize; 256];
        for &b in &lower {
            counts[b as usize] += 1;
        }
        let max = counts.iter().copied().max().unwrap_or(0);
        if max * 2 >= v.len() {
            return true;
        }
        // A long run of one filler character in a short value.
        if v.len() <= 128
            && has_run(&lower, 6, |b| {
                matches!(b, b'x' | b'#' | b'*' | b'0' | b'.' | b'-' | b'_')
            })
        {
            return true;
        }
    }
    false
}

/// Does `v` hold `n` or more equal bytes in a row, all satisfying `filler`?
fn has_run(v: &[u8], n: usize, filler: impl Fn(u8) -> bool) -> bool {
    let mut run = 0;
    let mut prev = None;
    for &b in v {
        if Some(b) == prev && filler(b) {
            run += 1;
        } else {
            run = 1;
        }
        prev = Some(b);
        if run >= n && filler(b) {
            return true;
        }
    }
    false
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Does `v` hold `{ident}` (a single-brace template, a format placeholder)?
fn has_brace_reference(v: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = v[i..].iter().position(|b| *b == b'{') {
        let start = i + p + 1;
        let end = v[start..]
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')))
            .map(|e| start + e);
        if let Some(e) = end
            && e > start
            && v[e] == b'}'
        {
            return true;
        }
        i = start;
        if i >= v.len() {
            break;
        }
    }
    false
}

/// Is this value a reference to a secret kept elsewhere — a variable, a template, a
/// secret-manager address, an environment lookup in code — rather than the secret? Pure.
pub fn is_reference(value: &[u8]) -> bool {
    let v = value;
    if v.is_empty() {
        return false;
    }
    let lower = v.to_ascii_lowercase();
    const MARKERS: &[&[u8]] = &[
        b"${",
        b"$(",
        b"{{",
        b"}}",
        b"%env(",
        b"%(",
        b"#{",
        b"<%",
        b"[[",
        b"os.environ",
        b"getenv",
        b"process.env",
        b"env[",
        b"env.fetch",
        b"env(",
        b"environ.get",
        b"secrets.",
        b"vault:",
        b"!ref",
        b"!sub",
        b"!getatt",
        b"!importvalue",
        b"fn::",
        b"\"ref\"",
        b"{{resolve:",
        b"arn:aws:secretsmanager:",
        b"arn:aws:ssm:",
        b"@microsoft.keyvault",
        b"<path:",
        b"enc[",
        b"/secrets/",
        b"secretref",
        b"secretkeyref",
        b"valuefrom",
    ];
    if MARKERS.iter().any(|m| contains(&lower, m)) || lower.starts_with(b"ref+") {
        return true;
    }
    // `$NAME`, `%NAME%`, `@name@`, `{name}`.
    let ident = |s: &[u8]| {
        !s.is_empty()
            && s.iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    if v[0] == b'$' && ident(&v[1..]) {
        return true;
    }
    if v.len() > 2
        && ((v[0] == b'%' && v[v.len() - 1] == b'%') || (v[0] == b'@' && v[v.len() - 1] == b'@'))
        && ident(&v[1..v.len() - 1])
    {
        return true;
    }
    has_brace_reference(v)
}

/// Why a value assigned to a credential-named key is not a literal secret, if it is not:
/// empty, a placeholder or sample, a reference, a boolean or null-like, a number, a file path,
/// a URL without credentials, or a code expression. `quoted` says the value was a quoted
/// string (in code, only those are literals). Pure.
pub fn non_literal(value: &[u8], quoted: bool) -> Option<&'static str> {
    let v = value;
    if v.iter().all(u8::is_ascii_whitespace) {
        return Some("empty");
    }
    if is_reference(v) {
        return Some("reference");
    }
    if super::is_placeholder(v) || is_filler(v) {
        return Some("placeholder");
    }
    if v.iter().any(u8::is_ascii_whitespace) {
        return Some("prose or an expression");
    }
    if v.iter().all(u8::is_ascii_digit) {
        return Some("number");
    }
    if v[0] == b'/'
        || v.starts_with(b"./")
        || v.starts_with(b"../")
        || v.starts_with(b"~/")
        || v.starts_with(b"file:")
        || (v.len() > 2 && v[1] == b':' && (v[2] == b'\\' || v[2] == b'/'))
    {
        return Some("file path");
    }
    let lower = v.to_ascii_lowercase();
    if (lower.starts_with(b"http://") || lower.starts_with(b"https://")) && !v.contains(&b'@') {
        return Some("URL");
    }
    if !quoted {
        // `f(x)`, `a.b(c)`, `x[y]`, `a || b`: code, not a literal.
        let call = v.iter().position(|b| *b == b'(').is_some_and(|p| {
            p > 0
                && v[..p]
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'$'))
        });
        if call || v.contains(&b'[') || contains(v, b"||") || contains(v, b"&&") {
            return Some("code expression");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_and_samples() {
        for f in [
            "ghp_000000000000000000000000000000000000",
            "AKIAXXXXXXXXXXXXXXXX",
            "########################################",
            "sk_live_000000000000000000000000",
            "xoxb-0000000000-0000000000-xxxxxxxxxxxxxxxx",
            "tiger",
            "scott:tiger",
            "foo:bar",
            "user:password",
            "neo4j/password",
            "guest",
            "Changeit",
            "1111111111111111",
            "----------------",
        ] {
            assert!(is_filler(f.as_bytes()), "{f} is filler");
        }
        for real in [
            "Kq7#mWz2pLx9",
            "qwhdkeuwtzpa",
            "app:Vn3xQ8rTb1",
            "dXNlcjpwYXNzd29yZA9x",
            "AAAAAAAAAAAAAAAAAAAAAMLheAAAAAAA0%2BuSeid%2BULvsea4JtiGRiSDSJSI%3DEUifiRBkKG5E2XzMDjRfl76ZC9Ub0wnz4XsNiRVBChTYbJcE3F",
        ] {
            assert!(!is_filler(real.as_bytes()), "{real} is not filler");
        }
    }

    #[test]
    fn references_in_every_syntax() {
        for r in [
            "${DB_PASSWORD}",
            "${DB_PASSWORD:?required}",
            "$(cat /run/secrets/x)",
            "{{ .Values.password }}",
            "%env(APP_SECRET)%",
            "{ApiKey}",
            "%DB_PASSWORD%",
            "@repo.password@",
            "$REGISTRY_PASSWORD",
            "#{ENV['TOKEN']}",
            "<%= ENV['X'] %>",
            "!Ref",
            "{{resolve:secretsmanager:x}}",
            "arn:aws:secretsmanager:us-east-1:1:secret:x",
            "@Microsoft.KeyVault(SecretUri=https://v/secrets/x/)",
            "ref+vault://secret/data/db#/password",
            "vault:secret/data/x#password",
            "<path:secret/data/db#password>",
            "ENC[AES256_GCM,data:abc]",
            "os.environ[\"X\"]",
            "System.getenv(\"X\")",
            "process.env.TOKEN",
            "projects/shop/secrets/api-key/versions/latest",
        ] {
            assert!(is_reference(r.as_bytes()), "{r} is a reference");
        }
        for lit in ["Kq7#mWz2pLx9", "a{b", "x}y{"] {
            assert!(!is_reference(lit.as_bytes()), "{lit} is a literal");
        }
    }

    #[test]
    fn non_literals() {
        let reason = |v: &str, q| non_literal(v.as_bytes(), q);
        assert_eq!(reason("", false), Some("empty"));
        assert_eq!(reason("changeme", false), Some("placeholder"));
        assert_eq!(reason("${X}", true), Some("reference"));
        assert_eq!(reason("Mot de passe", true), Some("prose or an expression"));
        assert_eq!(reason("6379", false), Some("number"));
        assert_eq!(reason("/etc/app/db.pass", false), Some("file path"));
        assert_eq!(reason("/run/secrets/db", false), Some("reference"));
        assert_eq!(reason("C:\\keys\\a.pem", false), Some("file path"));
        assert_eq!(
            reason("https://auth.internal/oauth/token", true),
            Some("URL")
        );
        assert_eq!(reason("get_token(user)", false), Some("code expression"));
        assert_eq!(reason("config[\"x\"]", false), Some("code expression"));
        assert_eq!(reason("Kq7#mWz2pLx9", false), None);
        assert_eq!(
            reason("f(x)", true),
            None,
            "a quoted literal may hold parentheses"
        );
    }
}
