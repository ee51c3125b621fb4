//! The log filter every lanyard binary (broker, sidecar) builds from its `--log` /
//! `LANYARD_LOG` value: the user's `tracing` `EnvFilter` directives, plus one that keeps a
//! harmless rustls warning out of the log unless the user asks for rustls's logs. A pure
//! string function, so this crate needs no `tracing-subscriber`; applications that log with
//! it can pass their own filter through [`log_filter`] too.

/// Added to the log filter unless it names `rustls` itself: rustls logs a `WARN` from this
/// module for every client that sends an IP address as SNI (common, e.g. `curl
/// https://10.0.0.5`, and harmless: the name is ignored), or an otherwise malformed SNI. The
/// only other warning of this module (rustls 0.23) is client-side, for a server sending a
/// meaningless `CertificateRequest`, equally harmless; handshake failures and alerts (other
/// modules) keep their level. `EnvFilter` cannot filter one message, so the
/// module is raised to `error`; `LANYARD_LOG=info,rustls=debug` shows them again.
pub const RUSTLS_SNI_DIRECTIVE: &str = "rustls::msgs::handshake=error";

/// The log filter used for `user` (the `--log` or `LANYARD_LOG` value): `user` plus
/// [`RUSTLS_SNI_DIRECTIVE`] when `user` does not mention `rustls`.
pub fn log_filter(user: &str) -> String {
    let user = user.trim();
    if user.contains("rustls") {
        user.to_owned()
    } else if user.is_empty() {
        RUSTLS_SNI_DIRECTIVE.to_owned()
    } else {
        format!("{user},{RUSTLS_SNI_DIRECTIVE}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rustls_directive_is_added_unless_rustls_is_named() {
        assert_eq!(log_filter("info"), format!("info,{RUSTLS_SNI_DIRECTIVE}"));
        assert_eq!(
            log_filter(" debug "),
            format!("debug,{RUSTLS_SNI_DIRECTIVE}")
        );
        assert_eq!(log_filter(""), RUSTLS_SNI_DIRECTIVE);
        assert_eq!(log_filter("info,rustls=debug"), "info,rustls=debug");
    }
}
