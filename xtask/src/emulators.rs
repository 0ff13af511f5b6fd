//! The emulators checked by clients we did not write: `headwaters-emulator` runs as a
//! process and an independent client talks to it (Python `websockets` for Pulsar,
//! `node-eventstore-client` for EventStore).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::servers::{apt_install, free_port};
use crate::{cargo, locked, root, run};

/// A running `headwaters-emulator`, killed on drop.
pub(crate) struct Emulator(Child);

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// Build and start `headwaters-emulator <args>`; returns once it prints its URL.
fn start(args: &[&str]) -> Result<(Emulator, String)> {
    run(cargo()
        .args([
            "build",
            "-q",
            "-p",
            "headwaters-testkit",
            "--bin",
            "headwaters-emulator",
        ])
        .args(locked()))?;
    let bin = target_dir().join("debug").join("headwaters-emulator");
    let mut child = Command::new(&bin)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let emulator = Emulator(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(url) = line.trim().rsplit(' ').next().filter(|u| u.contains("://")) else {
        bail!("the emulator did not report its URL (got {line:?})");
    };
    Ok((emulator, url.to_owned()))
}

/// A Python with `websockets`: the one on PATH, Debian's, or Debian's after installing
/// `python3-websockets`.
fn python_with_websockets() -> Result<&'static str> {
    let has = |python: &str| {
        Command::new(python)
            .args(["-c", "import websockets"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for python in ["python3", "/usr/bin/python3"] {
        if has(python) {
            return Ok(python);
        }
    }
    apt_install(
        &["python3-websockets"],
        "Python's websockets package",
        "(nothing: it is needed to cross-check the Pulsar emulator)",
    )?;
    if has("/usr/bin/python3") {
        Ok("/usr/bin/python3")
    } else {
        bail!("python3-websockets was installed but /usr/bin/python3 cannot import websockets")
    }
}

/// The EventStore emulator as a process on a free 127.0.0.1 port, and its `host:port`
/// (user `admin`, password `changeit`, as EventStoreDB's defaults).
pub(crate) fn eventstore_emulator() -> Result<(Emulator, String)> {
    let listen = format!("127.0.0.1:{}", free_port()?);
    let (emulator, _url) = start(&["eventstore", "--listen", &listen])?;
    Ok((emulator, listen))
}

/// The Pulsar emulator against `ci/pulsar_ws_check.py`.
pub(crate) fn pulsar_python_check() -> Result<()> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let token = "xtask-cross-check";
    let (_emulator, url) = start(&["pulsar", "--listen", &listen, "--token", token])?;
    pulsar_python_check_at(&url, token)
}

/// `ci/pulsar_ws_check.py` against the Pulsar WebSocket API at `url` (the emulator, or a
/// fresh real broker: the check uses fixed topic and subscription names).
pub(crate) fn pulsar_python_check_at(url: &str, token: &str) -> Result<()> {
    let python = python_with_websockets()?;
    run(Command::new(python)
        .arg(root().join("ci").join("pulsar_ws_check.py"))
        .args([url, token]))
}

/// The npm packages of the EventStore check, pinned.
const NODE_PACKAGES: [&str; 2] = ["node-eventstore-client@23.10.1", "protobufjs@7"];

/// Install `node-eventstore-client` (with `protobufjs@7` beside it, which it needs) under
/// `target/`, once.
pub(crate) fn node_modules() -> Result<PathBuf> {
    let dir = target_dir().join("node-eventstore-client");
    let modules = dir.join("node_modules");
    if modules.join("node-eventstore-client").exists() && modules.join("protobufjs").exists() {
        return Ok(modules);
    }
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        bail!(
            "Node.js is needed for the node-eventstore-client check: install it (Debian: `apt-get install nodejs npm`)"
        );
    }
    std::fs::create_dir_all(&dir)?;
    run(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .args(NODE_PACKAGES))?;
    Ok(modules)
}

/// The EventStore emulator against `ci/eventstore_node_check.js`, then its simulated
/// cluster (v20 and v5 gossip) against `ci/eventstore_node_cluster_check.js`.
pub(crate) fn eventstore_node_check() -> Result<()> {
    let modules = node_modules()?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    // Two users besides admin, for the access-control checks.
    let (_emulator, _url) = start(&[
        "eventstore",
        "--listen",
        &listen,
        "--user",
        "reader:r3ad",
        "--user",
        "stranger:s7ranger",
    ])?;
    run(Command::new("node")
        .env("NODE_PATH", &modules)
        .arg(root().join("ci").join("eventstore_node_check.js"))
        .arg(&listen))?;
    for format in ["v20", "v5"] {
        let (_cluster, seeds) = start(&["eventstore-cluster", "--gossip", format])?;
        run(Command::new("node")
            .env("NODE_PATH", &modules)
            .arg(root().join("ci").join("eventstore_node_cluster_check.js"))
            .arg(seeds.replace("http://", "")))?;
    }
    Ok(())
}
