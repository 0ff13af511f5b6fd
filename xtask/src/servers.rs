//! Throwaway servers on 127.0.0.1 for the integration tests: PostgreSQL (Debian package).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// A PostgreSQL server: either given by `DATABASE_URL` or started here, in a temporary data
/// directory on a free port, and stopped (and its directory removed) on drop.
pub(crate) enum Postgres {
    External(String),
    Local(LocalPostgres),
}

pub(crate) struct LocalPostgres {
    bin: PathBuf,
    dir: PathBuf,
    url: String,
    /// Commands run as this user (initdb refuses root).
    as_user: Option<String>,
}

impl Postgres {
    pub(crate) fn from_env_or_start() -> Result<Self> {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            println!("using the PostgreSQL server at DATABASE_URL");
            return Ok(Self::External(url));
        }
        LocalPostgres::start().map(Self::Local)
    }

    pub(crate) fn url(&self) -> &str {
        match self {
            Self::External(url) => url,
            Self::Local(pg) => &pg.url,
        }
    }

    pub(crate) fn print_log(&self) {
        if let Self::Local(pg) = self {
            pg.print_log();
        }
    }

    /// Whether xtask started this server (and so can tell the tests its TLS CA).
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Self::Local(_))
    }

    /// What the TLS tests need: the CA that signed the throwaway server's certificate.
    pub(crate) fn test_env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::External(_) => Vec::new(),
            Self::Local(pg) => vec![(
                "HEADWATERS_PG_CA",
                pg.dir.join("tls").join("ca.pem").display().to_string(),
            )],
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The directory holding `initdb` and `pg_ctl`: the newest `/usr/lib/postgresql/*/bin`, or `PATH`.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("pg_ctl").exists() && p.join("initdb").exists())
    })
}

pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// Install Debian packages as root, or explain what to do.
pub(crate) fn apt_install(packages: &[&str], what: &str, env_var: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "{what} is not installed. Install it (`sudo apt-get install {}`) or point the tests at a running server with {env_var}.",
            packages.join(" ")
        );
    }
    println!("installing {} (Debian packages)…", packages.join(" "));
    let quiet = |cmd: &mut Command| -> Result<()> {
        let status = cmd
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        if !status.success() {
            bail!(
                "{cmd:?} failed with {status}; install {} by hand or set {env_var}",
                packages.join(" ")
            );
        }
        Ok(())
    };
    quiet(Command::new("apt-get").args(["update", "-qq"]))?;
    quiet(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages),
    )
}

impl LocalPostgres {
    fn start() -> Result<Self> {
        let bin = match find_bin() {
            Some(bin) => bin,
            None => {
                apt_install(&["postgresql"], "PostgreSQL", "DATABASE_URL")?;
                find_bin().context("postgresql was installed but initdb/pg_ctl were not found")?
            }
        };
        let as_user = if is_root() {
            let exists = Command::new("id")
                .arg("postgres")
                .stdout(Stdio::null())
                .status()?
                .success();
            if !exists {
                bail!(
                    "running as root, but there is no `postgres` user to run PostgreSQL as (initdb refuses root); reinstall the postgresql package or set DATABASE_URL"
                );
            }
            Some("postgres".to_owned())
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!("headwaters-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let port = free_port()?;
        let pg = Self {
            bin,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            as_user,
        };
        // TLS with a throwaway CA, as a production server would have it; the server key must
        // be private to the server's user.
        let tls = pg.dir.join("tls");
        make_certificates(&tls)?;
        pg.pg(Command::new("chmod").arg("600").arg(tls.join("server.key")))?;
        if let Some(user) = &pg.as_user {
            pg.pg(Command::new("chown").args(["-R", user]).arg(&pg.dir))?;
        }
        println!(
            "starting PostgreSQL on 127.0.0.1:{port} (data in {})",
            pg.dir.display()
        );
        let data = pg.dir.join("data");
        pg.pg(pg.tool("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]))?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
             -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            pg.dir.display(),
            tls.join("server.pem").display(),
            tls.join("server.key").display(),
        );
        pg.pg(pg
            .tool("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(pg.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]))
            .inspect_err(|_| pg.print_log())?;
        println!("PostgreSQL is ready");
        Ok(pg)
    }

    fn print_log(&self) {
        let log = self.dir.join("server.log");
        match std::fs::read_to_string(&log) {
            Ok(text) => eprintln!(
                "---- PostgreSQL log ({}) ----\n{text}\n---- end of log ----",
                log.display()
            ),
            Err(e) => eprintln!("(no PostgreSQL log at {}: {e})", log.display()),
        }
    }

    /// A PostgreSQL tool, run as the server's user when we are root.
    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        match &self.as_user {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        }
    }

    fn pg(&self, cmd: &mut Command) -> Result<()> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed with {}:\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        let data = self.data();
        let stopped = self.pg(self.tool("pg_ctl").arg("-D").arg(&data).args([
            "-m",
            "immediate",
            "-w",
            "stop",
        ]));
        if let Err(e) = stopped {
            eprintln!("warning: could not stop PostgreSQL: {e:#}");
        }
        remove(&self.dir);
    }
}

fn remove(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        eprintln!("warning: could not remove {}: {e}", dir.display());
    }
}

/// A RabbitMQ broker: given by `AMQP_URL`, or a throwaway node started here on free
/// 127.0.0.1 ports with its own data directory, killed and removed on drop. The node is
/// controlled by `ctl.sh start|kill|stop` in its directory, exported to the tests as
/// `HEADWATERS_RABBITMQ_CTL` so that they can kill -9 and restart it.
pub(crate) enum Rabbit {
    External(String),
    Local(LocalRabbit),
}

pub(crate) struct LocalRabbit {
    dir: PathBuf,
    url: String,
    tls_url: String,
}

impl Rabbit {
    pub(crate) fn from_env_or_start() -> Result<Self> {
        if let Ok(url) = std::env::var("AMQP_URL") {
            println!("using the RabbitMQ broker at AMQP_URL");
            return Ok(Self::External(url));
        }
        LocalRabbit::start().map(Self::Local)
    }

    pub(crate) fn url(&self) -> &str {
        match self {
            Self::External(url) => url,
            Self::Local(r) => &r.url,
        }
    }

    /// Extra environment for the tests: the TLS listener's URL and certificates, and the
    /// control script, for a broker started here.
    pub(crate) fn test_env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::External(_) => vec![],
            Self::Local(r) => vec![
                ("AMQPS_URL", r.tls_url.clone()),
                (
                    "HEADWATERS_AMQP_TLS_DIR",
                    r.dir.join("tls").display().to_string(),
                ),
                (
                    "HEADWATERS_RABBITMQ_CTL",
                    r.dir.join("ctl.sh").display().to_string(),
                ),
            ],
        }
    }

    /// Whether the broker was started here (and so can be killed, restarted, and has a TLS
    /// listener with known certificates).
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Self::Local(_))
    }

    pub(crate) fn print_log(&self) {
        if let Self::Local(r) = self {
            for name in ["server.out", "log"] {
                let path = r.dir.join(name);
                let files: Vec<PathBuf> = if path.is_dir() {
                    std::fs::read_dir(&path)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path())
                        .collect()
                } else {
                    vec![path]
                };
                for file in files {
                    if let Ok(text) = std::fs::read_to_string(&file) {
                        let tail: Vec<&str> = text.lines().rev().take(80).collect();
                        eprintln!("---- RabbitMQ {} (last lines) ----", file.display());
                        for line in tail.into_iter().rev() {
                            eprintln!("{line}");
                        }
                    }
                }
            }
        }
    }
}

/// The directory holding `rabbitmq-server` and `rabbitmqctl` (Debian's, or from `PATH`).
fn rabbit_bin() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/lib/rabbitmq/bin");
    if debian.join("rabbitmq-server").exists() {
        return Some(debian);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("rabbitmq-server").exists() && p.join("rabbitmqctl").exists())
    })
}

const RABBIT_CTL: &str = r#"#!/bin/sh
# Controls the throwaway RabbitMQ node of `cargo xtask integration`: start | kill | stop.
set -u
here=$(cd "$(dirname "$0")" && pwd)
run() {
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
        runuser -u rabbitmq -- sh -c ". '$here/env.sh'; $1"
    else
        sh -c ". '$here/env.sh'; $1"
    fi
}
case "${1:-}" in
start)
    run "exec \"\$RMQ_BIN/rabbitmq-server\" >> '$here/server.out' 2>&1 < /dev/null &"
    i=0
    until run "\"\$RMQ_BIN/rabbitmqctl\" -q -n \"\$RABBITMQ_NODENAME\" await_startup --timeout 60" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt 240 ]; then
            echo "RabbitMQ did not start within 120 s; see $here/server.out and $here/log" >&2
            exit 1
        fi
        sleep 0.5
    done
    ;;
kill)
    if [ -f "$here/pid" ]; then kill -9 "$(cat "$here/pid")" 2>/dev/null; rm -f "$here/pid"; fi
    sleep 0.5
    ;;
stop)
    run "\"\$RMQ_BIN/rabbitmqctl\" -q -n \"\$RABBITMQ_NODENAME\" shutdown" >/dev/null 2>&1 || "$0" kill
    ;;
*)
    echo "usage: $0 start|kill|stop" >&2
    exit 2
    ;;
esac
"#;

impl LocalRabbit {
    fn start() -> Result<Self> {
        let bin = match rabbit_bin() {
            Some(bin) => bin,
            None => {
                apt_install(&["rabbitmq-server"], "RabbitMQ", "AMQP_URL")?;
                rabbit_bin().context("rabbitmq-server was installed but not found")?
            }
        };
        let dir = std::env::temp_dir().join(format!("headwaters-rabbitmq-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("home"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let port = free_port()?;
        let dist = free_port()?;
        let tls_port = free_port()?;
        make_certificates(&dir.join("tls"))?;
        let node = format!("headwaters-{}@localhost", std::process::id());
        let d = dir.display().to_string();
        let env = format!(
            "export RMQ_BIN='{bin}' HOME='{d}/home' RABBITMQ_NODENAME='{node}'\n\
             export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT={port} RABBITMQ_DIST_PORT={dist}\n\
             export RABBITMQ_MNESIA_BASE='{d}/mnesia' RABBITMQ_LOG_BASE='{d}/log' RABBITMQ_PID_FILE='{d}/pid'\n\
             export RABBITMQ_ENABLED_PLUGINS_FILE='{d}/enabled_plugins' RABBITMQ_CONFIG_FILE='{d}/rabbitmq'\n\
             export ERL_EPMD_ADDRESS=127.0.0.1\n\
             export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {{127,0,0,1}}'\n",
            bin = bin.display()
        );
        std::fs::write(dir.join("env.sh"), env)?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "loopback_users = none\n\
                 listeners.tcp.default = 127.0.0.1:{port}\n\
                 listeners.ssl.default = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {d}/tls/ca.pem\n\
                 ssl_options.certfile = {d}/tls/server.pem\n\
                 ssl_options.keyfile = {d}/tls/server.key\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\n"
            ),
        )?;
        std::fs::write(dir.join("ctl.sh"), RABBIT_CTL)?;
        let is_rabbit_user = Command::new("id")
            .arg("rabbitmq")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        if is_root() && is_rabbit_user {
            let status = Command::new("chown")
                .args(["-R", "rabbitmq:rabbitmq"])
                .arg(&dir)
                .status()?;
            if !status.success() {
                bail!("cannot chown {} to the rabbitmq user", dir.display());
            }
        }
        let rabbit = Self {
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            tls_url: format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f"),
            dir,
        };
        println!("starting RabbitMQ on 127.0.0.1:{port} (node {node}, data in {d})");
        let status = Command::new("sh")
            .arg(rabbit.dir.join("ctl.sh"))
            .arg("start")
            .status()?;
        if !status.success() {
            Rabbit::Local(rabbit).print_log();
            bail!("RabbitMQ did not start (see the log above)");
        }
        println!("RabbitMQ is ready");
        Ok(rabbit)
    }
}

/// A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate,
/// made with the `openssl` command (keys in PKCS#8 PEM).
fn make_certificates(dir: &Path) -> Result<()> {
    if Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        apt_install(
            &["openssl"],
            "openssl (to make the test servers' TLS certificates)",
            "DATABASE_URL and AMQP_URL",
        )?;
    }
    std::fs::create_dir_all(dir)?;
    // Extensions make both certificates X.509 v3, which rustls/webpki require.
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
    let openssl = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=headwaters-test-ca",
    ])?;
    for (name, subject, ext) in [
        ("server", "/CN=localhost", "server.ext"),
        ("client", "/CN=guest", "client.ext"),
    ] {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            ext,
        ])?;
    }
    Ok(())
}

impl Drop for LocalRabbit {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg(self.dir.join("ctl.sh"))
            .arg("kill")
            .status();
        remove(&self.dir);
    }
}

/// A Kinesis-compatible server: `KINESIS_ENDPOINT` when set, else kinesalite (npm, installed
/// under `target/kinesalite` on first use) on a free port of 127.0.0.1, in memory, with
/// stream changes (create, split, merge) taking 50 ms; killed on drop.
pub(crate) enum Kinesis {
    External(String),
    Local {
        child: std::process::Child,
        url: String,
    },
}

/// The kinesalite release we test against.
const KINESALITE: &str = "kinesalite@3.3.3";

impl Kinesis {
    pub(crate) fn from_env_or_start() -> Result<Self> {
        if let Ok(url) = std::env::var("KINESIS_ENDPOINT") {
            println!("using the Kinesis endpoint at KINESIS_ENDPOINT");
            return Ok(Self::External(url));
        }
        let dir = crate::emulators::target_dir().join("kinesalite");
        let bin = dir.join("node_modules").join("kinesalite").join("cli.js");
        if !bin.exists() {
            let node = Command::new("node").arg("--version").output();
            if !node.is_ok_and(|o| o.status.success()) {
                bail!(
                    "Node.js is needed to run kinesalite (a local Kinesis) for the Kinesis tests: install it (Debian: `apt-get install nodejs npm`) or set KINESIS_ENDPOINT"
                );
            }
            std::fs::create_dir_all(&dir)?;
            crate::run(
                Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund", "--prefix"])
                    .arg(&dir)
                    .arg(KINESALITE),
            )?;
        }
        let port = free_port()?;
        let child = Command::new("node")
            .arg(&bin)
            .args(["--port", &port.to_string()])
            .args([
                "--createStreamMs",
                "50",
                "--deleteStreamMs",
                "50",
                "--updateStreamMs",
                "50",
            ])
            .args(["--shardLimit", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start kinesalite")?;
        let url = format!("http://127.0.0.1:{port}");
        let mut kinesis = Self::Local { child, url };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                println!("kinesalite listening at {}", kinesis.url());
                return Ok(kinesis);
            }
            if let Self::Local { child, .. } = &mut kinesis
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("kinesalite exited at start: {status}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("kinesalite did not listen on 127.0.0.1:{port} within 10 s")
    }

    pub(crate) fn url(&self) -> &str {
        match self {
            Self::External(url) | Self::Local { url, .. } => url,
        }
    }
}

impl Drop for Kinesis {
    fn drop(&mut self) {
        if let Self::Local { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
