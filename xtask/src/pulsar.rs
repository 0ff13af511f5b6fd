//! A throwaway Apache Pulsar standalone on 127.0.0.1 for the integration tests: the broker,
//! BookKeeper and a RocksDB metadata store in one JVM, run from the jars `ci/pulsar/pom.xml`
//! resolves (once, into `target/pulsar/lib`), with the WebSocket service on, data in a
//! temporary directory, killed and removed on drop — or the broker at `PULSAR_WS_URL`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::emulators::target_dir;
use crate::servers::{apt_install, free_port};
use crate::{root, run};

/// How long a standalone may take to answer on its WebSocket endpoint (it takes 8–20 s on
/// two cores; the first start after resolving the jars is the slowest).
const START_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) enum Pulsar {
    /// `PULSAR_WS_URL` (and `PULSAR_ADMIN_URL`, `PULSAR_BROKER_URL` when given).
    External,
    Local(LocalPulsar),
}

pub(crate) struct LocalPulsar {
    /// Its data, configuration, log and `ctl.sh start|kill`.
    dir: PathBuf,
    web_port: u16,
    broker_port: u16,
    /// A JWT for the role `admin`, signed with the broker's secret key.
    token: String,
}

impl Pulsar {
    pub(crate) fn from_env_or_start() -> Result<Self> {
        if std::env::var_os("PULSAR_WS_URL").is_some() {
            println!("using the Pulsar at PULSAR_WS_URL");
            return Ok(Self::External);
        }
        LocalPulsar::start().map(Self::Local)
    }

    /// Whether xtask started this broker (and so knows its token, binary URL and the Java
    /// peer's class path).
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Self::Local(_))
    }

    /// The WebSocket URL and token of a broker xtask started for this run (so no topic of
    /// an earlier run is on it).
    pub(crate) fn fresh_broker(&self) -> Option<(String, String)> {
        match self {
            Self::External => None,
            Self::Local(p) => Some((format!("ws://127.0.0.1:{}", p.web_port), p.token.clone())),
        }
    }

    /// What the tests read: the WebSocket URL, the admin REST URL (same web port), the
    /// binary protocol URL and class path of the Java peer, the token, and the control
    /// script the chaos soak restarts the broker with; nothing for a broker given by the
    /// user, whose variables the tests read themselves.
    pub(crate) fn test_env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::External => Vec::new(),
            Self::Local(p) => vec![
                ("PULSAR_WS_URL", format!("ws://127.0.0.1:{}", p.web_port)),
                (
                    "PULSAR_ADMIN_URL",
                    format!("http://127.0.0.1:{}", p.web_port),
                ),
                (
                    "PULSAR_BROKER_URL",
                    format!("pulsar://127.0.0.1:{}", p.broker_port),
                ),
                ("PULSAR_TOKEN", p.token.clone()),
                (
                    "HEADWATERS_PULSAR_CTL",
                    p.dir.join("ctl.sh").display().to_string(),
                ),
                (
                    "HEADWATERS_PULSAR_PEER_CLASSPATH",
                    format!(
                        "{}:{}",
                        peer_build_dir().join("classes").display(),
                        classpath_dir().join("*").display()
                    ),
                ),
            ],
        }
    }

    pub(crate) fn print_log(&self) {
        if let Self::Local(p) = self {
            p.print_log();
        }
    }
}

/// Where the broker's jars are copied: under `target/`, so a test run needs no network once
/// they are there.
fn classpath_dir() -> PathBuf {
    target_dir().join("pulsar").join("lib")
}

/// Java 17 (a JDK: the peer is compiled) and Maven, installed from Debian's packages when
/// missing and we are root; otherwise an error that says what to install.
fn ensure_java_and_maven() -> Result<()> {
    let found = |tool: &str| {
        Command::new(tool)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ["java", "javac", "mvn"].into_iter().all(found) {
        return Ok(());
    }
    apt_install(
        &["openjdk-17-jdk-headless", "maven"],
        "Java 17 (a JDK) and Maven, which run a throwaway Pulsar standalone for the Pulsar tests,",
        "PULSAR_WS_URL",
    )
}

/// Maven's build directory for `ci/pulsar/PulsarPeer.java`.
fn peer_build_dir() -> PathBuf {
    target_dir().join("pulsar").join("build")
}

/// Resolve the broker and its dependencies with Maven into `target/pulsar/lib`, once per
/// `ci/pulsar/pom.xml`: the copy is marked with the POM it came from, and a changed POM (a
/// new Pulsar release) resolves again.
fn resolve() -> Result<PathBuf> {
    let lib = classpath_dir();
    let pom_path = root().join("ci").join("pulsar").join("pom.xml");
    let pom = std::fs::read_to_string(&pom_path)
        .with_context(|| format!("cannot read {}", pom_path.display()))?;
    if std::fs::read_to_string(lib.join(".complete")).is_ok_and(|done| done == pom) {
        return Ok(lib);
    }
    println!(
        "resolving Apache Pulsar's broker with Maven into {} (once)…",
        lib.display()
    );
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(&lib);
    run(Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(&pom_path)
        .arg("dependency:copy-dependencies")
        .arg(format!("-DoutputDirectory={}", lib.display())))?;
    std::fs::write(lib.join(".complete"), pom)?;
    println!("resolved in {:.0?}", started.elapsed());
    Ok(lib)
}

/// Build the Java peer with Maven, against the broker's dependencies (which hold
/// pulsar-client); its classes go to `target/pulsar/build/classes`.
fn compile_peer() -> Result<()> {
    run(Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(root().join("ci").join("pulsar").join("pom.xml"))
        .arg("compile")
        .arg(format!("-Dpeer.build={}", peer_build_dir().display())))
}

const PULSAR_CTL: &str = r#"#!/bin/sh
# Controls the throwaway Pulsar standalone of `cargo xtask`: start | kill. `kill` is kill -9:
# a later `start` runs on the same data, as a broker restarted after a crash does.
set -u
here=$(cd "$(dirname "$0")" && pwd)
case "${1:-}" in
start)
    cd "$here"
    . "$here/env.sh"
    nohup java $PULSAR_JVM_OPTIONS -cp "$PULSAR_LIB/*" org.apache.pulsar.PulsarStandaloneStarter \
        --config "$here/standalone.conf" --no-functions-worker --no-stream-storage \
        --metadata-dir "$here/metadata" --bookkeeper-dir "$here/bookkeeper" \
        --zookeeper-dir "$here/zookeeper" --bookkeeper-port "$PULSAR_BOOKIE_PORT" \
        >> "$here/pulsar.log" 2>&1 < /dev/null &
    echo $! > "$here/pid"
    ;;
kill)
    if [ -f "$here/pid" ]; then
        pid=$(cat "$here/pid")
        kill -9 "$pid" 2>/dev/null
        rm -f "$here/pid"
        # Until its ports are free (a zombie holds none: stop looking at it after 5 s).
        i=0
        while [ "$i" -lt 50 ] && grep -qsv '^[0-9]* ([^)]*) Z' "/proc/$pid/stat"; do
            sleep 0.1
            i=$((i + 1))
        done
    fi
    ;;
*)
    echo "usage: $0 start|kill" >&2
    exit 2
    ;;
esac
"#;

impl LocalPulsar {
    fn start() -> Result<Self> {
        ensure_java_and_maven()?;
        let lib = resolve()?;
        compile_peer()?;
        let dir = std::env::temp_dir().join(format!("headwaters-pulsar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let (web_port, broker_port, bookie_port) = (free_port()?, free_port()?, free_port()?);
        let (secret, token) = jwt_secret_and_token()?;
        std::fs::write(
            dir.join("standalone.conf"),
            standalone_conf(web_port, broker_port, &secret, &token),
        )?;
        std::fs::write(
            dir.join("env.sh"),
            format!(
                "PULSAR_JVM_OPTIONS='{}'\nPULSAR_LIB='{}'\nPULSAR_BOOKIE_PORT={bookie_port}\n",
                JVM_OPTIONS.join(" "),
                lib.display()
            ),
        )?;
        std::fs::write(dir.join("ctl.sh"), PULSAR_CTL)?;
        println!(
            "starting Pulsar standalone on 127.0.0.1:{web_port} (WebSocket and admin) and :{broker_port} (binary), data in {}",
            dir.display()
        );
        let pulsar = Self {
            dir,
            web_port,
            broker_port,
            token,
        };
        let started = Instant::now();
        let ready = pulsar
            .ctl("start")
            .and_then(|()| pulsar.wait_ready(started));
        if let Err(e) = ready {
            pulsar.print_log();
            return Err(e);
        }
        println!("Pulsar is ready after {:.1?}", started.elapsed());
        Ok(pulsar)
    }

    fn ctl(&self, verb: &str) -> Result<()> {
        let status = Command::new("sh")
            .arg(self.dir.join("ctl.sh"))
            .arg(verb)
            .status()
            .context("cannot run sh")?;
        if !status.success() {
            bail!("`ctl.sh {verb}` failed with {status}");
        }
        Ok(())
    }

    /// Whether the JVM `ctl.sh start` ran is still there (and not a zombie).
    fn alive(&self) -> bool {
        let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) else {
            return false;
        };
        match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            // Without /proc there is no telling: the start timeout still bounds the wait.
            Err(_) => !std::path::Path::new("/proc/self").exists(),
        }
    }

    fn print_log(&self) {
        let log = self.dir.join("pulsar.log");
        if let Ok(text) = std::fs::read_to_string(&log) {
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("---- Pulsar {} (last lines) ----", log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }

    /// Until the default namespace exists (the standalone's last start step) and the
    /// WebSocket service upgrades a connection.
    fn wait_ready(&self, started: Instant) -> Result<()> {
        loop {
            if !self.alive() {
                bail!("Pulsar standalone exited at start; its log follows");
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "Pulsar standalone did not answer on 127.0.0.1:{} within {START_TIMEOUT:?}; its log follows",
                    self.web_port
                );
            }
            let auth = format!("Authorization: Bearer {}\r\n", self.token);
            let namespaces = http_head(
                self.web_port,
                &format!(
                    "GET /admin/v2/namespaces/public HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
                ),
            );
            if namespaces
                .is_ok_and(|r| r.starts_with("HTTP/1.1 200") && r.contains("public/default"))
            {
                let upgrade = http_head(
                    self.web_port,
                    &format!(
                        "GET /ws/v2/consumer/persistent/public/default/xtask-ready/xtask HTTP/1.1\r\n\
                         Host: 127.0.0.1\r\n{auth}Connection: Upgrade\r\nUpgrade: websocket\r\n\
                         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: aGVhZHdhdGVycy14dGFzaw==\r\n\r\n"
                    ),
                );
                if upgrade.is_ok_and(|r| r.starts_with("HTTP/1.1 101")) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A heap and direct memory that fit beside the tests on a 2-core, shared machine.
const JVM_OPTIONS: [&str; 5] = [
    "-Xms256m",
    "-Xmx768m",
    "-XX:MaxDirectMemorySize=512m",
    "-XX:+UseSerialGC",
    "-Dpulsar.allocator.exit_on_oom=true",
];

/// Our standalone configuration: loopback only, the WebSocket service on, one bookie,
/// topics created on first use, JWT authentication with an HS256 `secret` (base64) and every
/// authenticated role allowed everything; the broker's own clients (its admin client, the
/// WebSocket service) use `token`.
fn standalone_conf(web_port: u16, broker_port: u16, secret: &str, token: &str) -> String {
    format!(
        "clusterName=standalone\n\
         bindAddress=127.0.0.1\n\
         advertisedAddress=127.0.0.1\n\
         brokerServicePort={broker_port}\n\
         webServicePort={web_port}\n\
         webSocketServiceEnabled=true\n\
         managedLedgerDefaultEnsembleSize=1\n\
         managedLedgerDefaultWriteQuorum=1\n\
         managedLedgerDefaultAckQuorum=1\n\
         allowAutoTopicCreation=true\n\
         allowAutoTopicCreationType=non-partitioned\n\
         brokerDeleteInactiveTopicsEnabled=false\n\
         authenticationEnabled=true\n\
         authenticationProviders=org.apache.pulsar.broker.authentication.AuthenticationProviderToken\n\
         tokenSecretKey=data:;base64,{secret}\n\
         superUserRoles=admin\n\
         brokerClientAuthenticationPlugin=org.apache.pulsar.client.impl.auth.AuthenticationToken\n\
         brokerClientAuthenticationParameters=token:{token}\n\
         authorizationEnabled=false\n\
         # Small caches: BookKeeper would otherwise take a quarter of direct memory for each.\n\
         dbStorage_writeCacheMaxSizeMb=32\n\
         dbStorage_readAheadCacheMaxSizeMb=32\n\
         dbStorage_rocksDB_blockCacheSize=16777216\n"
    )
}

/// A fresh HS256 secret key (base64, as `tokenSecretKey` takes it) and a JWT for the role
/// `admin` signed with it, made with the `openssl` command (as the test certificates are).
fn jwt_secret_and_token() -> Result<(String, String)> {
    let openssl = |args: &[&str], input: &[u8]| -> Result<Vec<u8>> {
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot run openssl (to make the broker's JWT key)")?;
        child.stdin.take().context("no stdin")?.write_all(input)?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("openssl {} failed with {}", args.join(" "), out.status);
        }
        Ok(out.stdout)
    };
    let key = openssl(&["rand", "32"], b"")?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let signed = format!(
        "{}.{}",
        base64(br#"{"alg":"HS256","typ":"JWT"}"#, true),
        base64(br#"{"sub":"admin"}"#, true)
    );
    let mac = openssl(
        &[
            "dgst",
            "-sha256",
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{hex}"),
            "-binary",
        ],
        signed.as_bytes(),
    )?;
    Ok((
        base64(&key, false),
        format!("{signed}.{}", base64(&mac, true)),
    ))
}

/// Base64 with padding, or base64url without (as JWTs spell their parts).
fn base64(bytes: &[u8], url: bool) -> String {
    let alphabet: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if !url {
            out.push_str(&"=="[..2 - (chunk.len() - 1)]);
        }
    }
    out
}

/// Send `request` to 127.0.0.1:`port` and return what came back before the connection
/// closed or 2 s passed (the status line and headers are enough).
fn http_head(port: u16, request: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(request.as_bytes())?;
    let mut buf = vec![0; 4096];
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if buf[..got].windows(4).any(|w| w == b"\r\n\r\n")
                    && !buf.starts_with(b"HTTP/1.1 200")
                {
                    break;
                }
            }
            Err(_) if got > 0 => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(String::from_utf8_lossy(&buf[..got]).into_owned())
}

impl Drop for LocalPulsar {
    fn drop(&mut self) {
        // The data goes with the directory: no need to wait for an orderly shutdown.
        if let Err(e) = self.ctl("kill") {
            eprintln!("warning: could not stop Pulsar: {e:#}");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: could not remove {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_as_rfc_4648_spells_it() {
        for (input, padded, url) in [
            (&b""[..], "", ""),
            (b"f", "Zg==", "Zg"),
            (b"fo", "Zm8=", "Zm8"),
            (b"foo", "Zm9v", "Zm9v"),
            (b"foob", "Zm9vYg==", "Zm9vYg"),
            (b"\xfb\xff", "+/8=", "-_8"),
        ] {
            assert_eq!(base64(input, false), padded);
            assert_eq!(base64(input, true), url);
        }
    }
}
