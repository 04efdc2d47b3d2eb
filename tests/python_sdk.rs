//! The Python plugin SDK's unit tests (sdk/python/tests, standard-library unittest plus
//! grpcio), run under `cargo test`: `python3 -m unittest discover` with the SDK from this
//! repository on PYTHONPATH, killed if it takes longer than two minutes.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Longest the whole suite may take; it normally needs a few seconds.
const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn python_sdk_unit_tests_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args([
        "-m",
        "unittest",
        "discover",
        "-s",
        "sdk/python/tests",
        "-t",
        "sdk/python",
    ])
    .current_dir(root)
    .env("PYTHONPATH", root.join("sdk/python"))
    .env("PYTHONDONTWRITEBYTECODE", "1")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let child = cmd
        .spawn()
        .expect("python3 on PATH with grpcio and protobuf (bash .ci/run installs them)");
    // On timeout the child is dropped, and with it killed (kill_on_drop).
    let output = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the Python SDK tests did not finish within {LIMIT:?}; killed"))
        .expect("waiting for python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python3 -m unittest discover -s sdk/python/tests failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    // unittest reports on stderr; a run that found no tests would also succeed.
    assert!(
        stderr.contains("\nOK") && !stderr.contains("Ran 0 tests"),
        "unexpected unittest report:\n{stderr}"
    );
}
