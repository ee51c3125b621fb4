//! Starting a peer process that binds a port it is told on its command line.
//!
//! The port is free when chosen, but the child binds it only later (moto takes a second or
//! two to start Python), so a test running in parallel can take it first. The child then
//! exits, or something else answers the probe: either way a fresh port is tried.

use std::future::Future;
use std::process::Child;
use std::time::{Duration, Instant};

/// How many ports [`spawn_ready`] tries before it panics.
const ATTEMPTS: u32 = 3;

/// `N` distinct free loopback ports (free now; see the module docs). Every listener is held
/// until all are chosen, so no two are the same port.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<_> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("addr").port())
}

/// What one readiness probe saw.
#[derive(Debug)]
pub enum Probe {
    /// The peer answers as expected.
    Ready,
    /// Nothing answers yet.
    NotYet,
    /// Something else answers on the port (why, for the panic message).
    Wrong(String),
}

/// Spawns `what` with `spawn(port)` on a free port and probes it until it is ready, within
/// `within` per attempt; tries 3 ports (`ATTEMPTS`). `details` is added to every failure
/// (a log file, say). Returns the child and its port.
pub async fn spawn_ready<Fut: Future<Output = Probe>>(
    what: &str,
    within: Duration,
    mut spawn: impl FnMut(u16) -> Child,
    mut probe: impl FnMut(reqwest::Client, u16) -> Fut,
    details: impl Fn() -> String,
) -> (Child, u16) {
    // Per probe: whatever holds the port if the child lost it may never answer.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    for attempt in 1..=ATTEMPTS {
        let [port] = free_ports();
        let mut child = spawn(port);
        let deadline = Instant::now() + within;
        let why = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break format!("{what} exited at start with {status} (was port {port} taken?)");
            }
            match probe(client.clone(), port).await {
                Probe::Ready => return (child, port),
                Probe::Wrong(why) => break why,
                Probe::NotYet if Instant::now() >= deadline => {
                    break format!("{what} did not answer on port {port} within {within:?}");
                }
                Probe::NotYet => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            attempt < ATTEMPTS,
            "{what} did not start in {ATTEMPTS} attempts; last: {why}\n{}",
            details()
        );
    }
    unreachable!("the last attempt returns or panics")
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[tokio::test]
    async fn a_child_that_lost_its_port_is_retried_on_another() {
        let ports = std::sync::Mutex::new(Vec::new());
        let (mut child, port) = spawn_ready(
            "peer",
            Duration::from_secs(10),
            |port| {
                let mut ports = ports.lock().expect("ports");
                ports.push(port);
                // The first child exits at once, as one whose port was taken does.
                let script = if ports.len() == 1 {
                    "exit 3"
                } else {
                    "sleep 30"
                };
                Command::new("sh").args(["-c", script]).spawn().expect("sh")
            },
            // Only a later child answers, so the first is seen to exit, not to answer.
            |_, _| {
                let attempt = ports.lock().expect("ports").len();
                async move {
                    if attempt == 1 {
                        Probe::NotYet
                    } else {
                        Probe::Ready
                    }
                }
            },
            String::new,
        )
        .await;
        let ports = ports.into_inner().expect("ports");
        assert_eq!(ports.len(), 2, "{ports:?}");
        assert_eq!(port, ports[1]);
        assert!(
            child.try_wait().expect("status").is_none(),
            "the live child"
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    #[tokio::test]
    #[should_panic(expected = "peer did not start in 3 attempts; last: 127.0.0.1 says no\nlog")]
    async fn a_wrong_answer_on_every_port_names_the_last_one() {
        spawn_ready(
            "peer",
            Duration::from_secs(10),
            |_| Command::new("sleep").arg("30").spawn().expect("sleep"),
            |_, _| async { Probe::Wrong("127.0.0.1 says no".into()) },
            || "log".into(),
        )
        .await;
    }
}
