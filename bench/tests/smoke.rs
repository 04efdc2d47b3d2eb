//! CI smoke run of the benchmark harness (`authgate-bench run --quick`): it must start every
//! server, make every call successfully, get every count right and print the whole table.
//! It judges no timing (this is a debug build on a shared machine), so it cannot flake on
//! speed, but it keeps the harness from rotting.

// A test of the benchmark harness: it waits on real time for the benchmark process.
#![allow(clippy::disallowed_methods)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn quick_benchmark_run_is_valid_and_prints_the_table() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_authgate-bench"))
        .args(["run", "--quick"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("authgate-bench starts");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let status = status.unwrap_or_else(|| panic!("quick run took over 240 s\n{err}\n{out}"));
    assert!(
        status.success(),
        "quick run failed ({status}):\n{err}\n{out}"
    );
    assert!(
        out.contains("| figure | authgate | baseline | ratio | goal | result |"),
        "{out}"
    );
    assert!(out.contains("Run valid"), "{out}");
    for figure in [
        "cache-hit throughput",
        "server CPU per call",
        "p99 latency at",
        "vs no gateway, one caller",
        "single-flight: 1000 concurrent GetToken on one cold key",
        "single-flight: 4 cold keys",
        "refresh: upstream requests per key",
        "refresh: tokens served with less than 5 s left",
        "refresh: p99 latency during refresh windows",
        "refresh spread",
        "outage: endpoint answers 503",
        "outage: upstream requests per key",
        "plugin: cold fetch (cache miss, session + token upstream)",
        "plugin: extra latency per cold fetch",
        "plugin: cache-hit throughput",
        "memory: resident bytes per cached token",
    ] {
        assert!(out.contains(figure), "no `{figure}` row:\n{out}");
    }
}
