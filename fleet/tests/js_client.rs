//! Runs the JS client's own tests (`clients/js/test/*.test.js`, Node's test runner) against
//! the `fleet` binary cargo just built, so `cargo test` covers the client too. Node.js is
//! required: without it this test fails and says so.

use std::path::Path;
use std::process::Command;

/// Node 22 has a global `WebSocket`; 20 and 21 need the flag.
fn websocket_flag(node: &str) -> Vec<&'static str> {
    let version = Command::new(node).arg("--version").output();
    let major = version
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.trim().trim_start_matches('v').split('.').next()?.parse::<u32>().ok());
    match major {
        Some(m) if m >= 22 => vec![],
        Some(m) if m >= 20 => vec!["--experimental-websocket"],
        Some(m) => panic!("the JS client tests need Node.js 20 or later; `{node}` is {m}"),
        None => panic!(
            "the JS client tests need Node.js 20+ and `{node} --version` did not answer: \
             install nodejs (scripts/test expects it on the machine) or set NODE"
        ),
    }
}

#[test]
fn the_js_client_passes_its_tests_against_fleet_up() {
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".to_owned());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js");
    let mut files: Vec<String> = std::fs::read_dir(dir.join("test"))
        .expect("clients/js/test exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".test.js"))
        .map(|n| format!("test/{n}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no clients/js/test/*.test.js found");
    let status = Command::new(&node)
        .args(websocket_flag(&node))
        .arg("--test")
        .args(&files)
        .current_dir(&dir)
        .env("FLEET_BIN", env!("CARGO_BIN_EXE_fleet"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run `{node}`: {e}"));
    assert!(status.success(), "node --test {files:?} failed: {status}");
}
